import Foundation
import Reins
import ReinsTestSupport
import Testing

/// GPT-2 and BERT against Hugging Face transformers (Tests/Fixtures/make_model_fixtures.py): the outputs within 1e-4
/// and the gradient of every parameter within about 1e-3 relative.
struct ModelParityTests {
    struct Case {
        let model: PretrainedModel
        let io: SafeTensorsFile
        init(_ name: String) throws {
            model = try PretrainedModel.load(directory: Fixtures.model(name))
            io = try SafeTensorsFile(path: Fixtures.model(name).appendingPathComponent("io.safetensors").path)
        }
        func ints(_ name: String) throws -> IntTensor { try io.intTensor(name) }
        func optionalInts(_ name: String) throws -> IntTensor? {
            io.entries[name] == nil ? nil : try io.intTensor(name)
        }
    }

    /// Every parameter's gradient against `grad.<key>`, and no reference gradient left unmatched.
    func expectGradients(_ c: Case, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let named = c.model.module.namedParameters()
        for (key, p) in named {
            guard c.io.entries["grad.\(key)"] != nil else {
                Issue.record("no reference gradient for \(key)", sourceLocation: sourceLocation)
                continue
            }
            guard let g = p.gradient else {
                Issue.record("\(key) got no gradient", sourceLocation: sourceLocation)
                continue
            }
            let expected = try c.io.tensor("grad.\(key)")
            let scale = expected.scalars.map(abs).max() ?? 1
            expectClose(
                g, expected, atol: 1e-4 * max(scale, 1e-3), rtol: 1e-3, "gradient of \(key)",
                sourceLocation: sourceLocation)
        }
        let keys = Set(named.map { "grad.\($0.key)" })
        for name in c.io.entries.keys where name.hasPrefix("grad.") && !keys.contains(name) {
            Issue.record("reference gradient \(name) matches no parameter", sourceLocation: sourceLocation)
        }
    }

    func expectLoss(_ loss: Tensor, _ c: Case, sourceLocation: SourceLocation = #_sourceLocation) throws {
        expectClose(
            [try loss.item], try c.io.tensor("loss").scalars, atol: 1e-5, rtol: 1e-5, "loss",
            sourceLocation: sourceLocation)
        try loss.backward()
    }

    @Test func gpt2LanguageModel() throws {
        let c = try Case("gpt2-lm")
        guard case let .gpt2LMHead(model) = c.model else { Issue.record("built \(c.model)"); return }
        let ids = try c.ints("input_ids"), mask = try c.ints("attention_mask")
        // Every position, padding included: a padding query sees only earlier tokens, as in transformers.
        expectClose(
            try model.logits(ids, attentionMask: mask), try c.io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "logits")
        try expectLoss(try model.loss(ids, labels: try c.ints("labels"), attentionMask: mask), c)
        try expectGradients(c)
    }

    @Test func gpt2SequenceClassification() throws {
        let c = try Case("gpt2-cls")
        guard case let .gpt2SequenceClassification(model) = c.model else { Issue.record("built \(c.model)"); return }
        let logits = try model.logits(try c.ints("input_ids"), attentionMask: try c.ints("attention_mask"))
        expectClose(logits, try c.io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "class logits")
        try expectLoss(try Tensor.crossEntropy(logits: logits, targets: try c.ints("labels")), c)
        try expectGradients(c)
    }

    @Test func bertBaseWithPooler() throws {
        let c = try Case("bert-base")
        guard case let .bert(model) = c.model else { Issue.record("built \(c.model)"); return }
        let h = try model.hiddenStates(
            try c.ints("input_ids"), attentionMask: try c.ints("attention_mask"),
            tokenTypeIDs: try c.ints("token_type_ids"))
        expectClose(h, try c.io.tensor("last_hidden_state"), atol: 1e-4, rtol: 1e-4, "last hidden state")
        let pooled = try model.pooled(h)
        expectClose(pooled, try c.io.tensor("pooler_output"), atol: 1e-4, rtol: 1e-4, "pooler output")
        // The fixture's loss: Σ h ⊙ linspace(-1, 1, C) + Σ pooled².
        let C = h.shape[2]
        let ramp = Tensor((0..<C).map { -1 + 2 * Float($0) / Float(C - 1) })
        try expectLoss(try (h * ramp).sum() + (pooled * pooled).sum(), c)
        try expectGradients(c)
    }

    @Test func bertMaskedLM() throws {
        let c = try Case("bert-mlm")
        guard case let .bertMaskedLM(model) = c.model else { Issue.record("built \(c.model)"); return }
        let logits = try model.logits(
            try c.ints("input_ids"), attentionMask: try c.ints("attention_mask"),
            tokenTypeIDs: try c.ints("token_type_ids"))
        expectClose(logits, try c.io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "vocabulary logits")
        try expectLoss(try Tensor.crossEntropy(logits: logits, targets: try c.ints("labels")), c)
        try expectGradients(c)
    }

    @Test func bertSequenceClassificationOnPairs() throws {
        let c = try Case("bert-cls")
        guard case let .bertSequenceClassification(model) = c.model else { Issue.record("built \(c.model)"); return }
        let logits = try model.logits(
            try c.ints("input_ids"), attentionMask: try c.ints("attention_mask"),
            tokenTypeIDs: try c.ints("token_type_ids"))
        expectClose(logits, try c.io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "class logits")
        try expectLoss(try Tensor.crossEntropy(logits: logits, targets: try c.ints("labels")), c)
        try expectGradients(c)
    }

    /// bert-cls saved by transformers with safe_serialization=False: config.json + pytorch_model.bin, or three shards
    /// listed in pytorch_model.bin.index.json.
    @Test(arguments: ["bert-cls-bin", "bert-cls-bin-sharded"])
    func aPickledCheckpointLoadsAsItsSafetensorsTwin(directory: String) throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: Fixtures.model(directory).path)
        #expect(
            !files.contains { $0.hasSuffix(".safetensors") }
                && files.filter { $0.hasSuffix(".bin") }.count == (directory.hasSuffix("sharded") ? 3 : 1))
        guard
            case let .bertSequenceClassification(pickled) = try PretrainedModel.load(
                directory: Fixtures.model(directory)),
            case let .bertSequenceClassification(reference) = try PretrainedModel.load(
                directory: Fixtures.model("bert-cls"))
        else {
            Issue.record("not BERT classifiers"); return
        }
        let a = pickled.namedParameters(),
            b = Dictionary(uniqueKeysWithValues: reference.namedParameters().map { ($0.key, $0.parameter) })
        #expect(a.count == b.count && a.count > 10)
        for (key, p) in a { #expect(p.value.scalars == b[key]?.value.scalars, "parameter \(key)") }
        let c = try Case("bert-cls")
        let logits = try pickled.logits(
            try c.ints("input_ids"), attentionMask: try c.ints("attention_mask"),
            tokenTypeIDs: try c.ints("token_type_ids"))
        expectClose(logits, try c.io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "class logits from pytorch_model.bin")
    }

    @Test func taskHeadsStartFromAMaskedLMCheckpoint() throws {
        // bert-base-uncased is saved as BertForMaskedLM: its cls.* pretraining head is skipped, as transformers does.
        let dir = Fixtures.model("bert-mlm")
        let mlm = try PretrainedModel.load(directory: dir).module
        let encoderKeys = Set(
            mlm.namedParameters().map(\.key).filter { $0.hasPrefix("bert.") && !$0.hasPrefix("bert.pooler.") })
        let classifier = try BertForSequenceClassification.pretrained(dir, labels: 3)
        for (architecture, head) in [
            ("BertForTokenClassification", "classifier."), ("BertForQuestionAnswering", "qa_outputs."),
            ("BertForSequenceClassification", "classifier."),
        ] {
            let m = try PretrainedModel.load(
                directory: dir, architecture: architecture, newlyInitialized: [head, "bert.pooler."]
            ).module
            // Every encoder weight is the checkpoint's.
            let mine = Dictionary(
                uniqueKeysWithValues: m.namedParameters().map { ($0.key, $0.parameter.value.scalars) })
            for (key, p) in mlm.namedParameters() where encoderKeys.contains(key) {
                #expect(mine[key] == p.value.scalars, "\(architecture) \(key)")
            }
        }
        #expect(classifier.classifier.outputs == 3)
    }

    @Test func anAdapterBringsItsHeadOntoABareCheckpoint() throws {
        // The bert-cls weights saved as a bare BertModel (no classifier): the PEFT SEQ_CLS adapter says which head to
        // build and holds it (modules_to_save), so the logits are PEFT's, as on the classifier checkpoint itself.
        let source = try Checkpoint(directory: Fixtures.model("bert-cls"))
        let bare = try temporaryDirectory()
        var config = source.config
        config["architectures"] = ["BertModel"]
        try JSONSerialization.data(withJSONObject: config).write(to: bare.appendingPathComponent("config.json"))
        var tensors: [String: Tensor] = [:]
        for name in source.tensorNames where !name.hasPrefix("classifier.") {
            tensors[String(name.dropFirst(name.hasPrefix("bert.") ? 5 : 0))] = try source.tensor(name)
        }
        try SafeTensorsFile.write(tensors, to: bare.appendingPathComponent("model.safetensors").path)
        let adapter = Fixtures.directory.appendingPathComponent("adapters/bert-lora")
        guard case .bert = try PretrainedModel.load(directory: bare) else {
            Issue.record("the bare copy should load as BertModel"); return
        }
        let loaded = try PretrainedModel.load(directory: bare, forAdapter: adapter)
        guard case let .bertSequenceClassification(model) = loaded else { Issue.record("built \(loaded)"); return }
        try AdapterFiles.load(directory: adapter, into: model)
        let io = try SafeTensorsFile(path: adapter.appendingPathComponent("expected.safetensors").path)
        let logits = try model.logits(
            try io.intTensor("input_ids"), attentionMask: try io.intTensor("attention_mask"),
            tokenTypeIDs: try io.intTensor("token_type_ids"))
        expectClose(
            logits, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4,
            "PEFT SEQ_CLS adapter on a bare BertModel checkpoint")
    }

    @Test func aGPT2ClassifierAdapterBringsItsScoreHeadOntoAnLMCheckpoint() throws {
        // An LM checkpoint without pad_token_id (as GPT-2's own): a SEQ_CLS adapter builds GPT2ForSequenceClassification
        // with its saved score head, padding by eos_token_id.
        let lm = try temporaryDirectory()
        var config = try Checkpoint.readJSON(Fixtures.model("gpt2-lm").appendingPathComponent("config.json"))
        (config["pad_token_id"], config["eos_token_id"]) = (nil, 96)
        try JSONSerialization.data(withJSONObject: config).write(to: lm.appendingPathComponent("config.json"))
        try FileManager.default.copyItem(
            at: Fixtures.model("gpt2-lm").appendingPathComponent("model.safetensors"),
            to: lm.appendingPathComponent("model.safetensors"))
        guard
            case let .gpt2SequenceClassification(trained) = try PretrainedModel.load(
                directory: lm, architecture: "GPT2ForSequenceClassification",
                newlyInitialized: ["score."], configOverrides: ["num_labels": 3, "pad_token_id": 96])
        else { Issue.record("not a classifier"); return }
        try trained.addAdapter("task", .lora(LoRAConfig(rank: 2, alpha: 4, targets: ["c_attn"])), labels: 2, seed: 1)
        for (key, p) in trained.namedParameters() where key.contains("lora_B") {
            p.value = try Tensor.normal(p.value.shape, std: 0.3, seed: 2)
        }
        let adapter = try temporaryDirectory()
        try trained.saveAdapter("task", to: adapter)
        let loaded = try PretrainedModel.load(directory: lm, forAdapter: adapter)
        guard case let .gpt2SequenceClassification(model) = loaded else { Issue.record("built \(loaded)"); return }
        try AdapterFiles.load(directory: adapter, into: model)
        let ids = try IntTensor(shape: [2, 4], values: [5, 6, 7, 96, 50, 51, 52, 53]),
            mask = try IntTensor(shape: [2, 4], values: [1, 1, 1, 0, 1, 1, 1, 1])
        #expect(model.transformer.config.padTokenID == 96 && model.score.outputs == 2)
        expectClose(
            try model.logits(ids, attentionMask: mask), try trained.logits(ids, attentionMask: mask), atol: 1e-6,
            rtol: 1e-6, "GPT-2 SEQ_CLS adapter on an LM checkpoint")
    }

    @Test func bertTokenClassification() throws {
        let c = try Case("bert-tok")
        guard case let .bertTokenClassification(model) = c.model else { Issue.record("built \(c.model)"); return }
        let logits = try model.logits(
            try c.ints("input_ids"), attentionMask: try c.ints("attention_mask"),
            tokenTypeIDs: try c.ints("token_type_ids"))
        expectClose(logits, try c.io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "tag logits")
        try expectLoss(try Tensor.crossEntropy(logits: logits, targets: try c.ints("labels")), c)
        try expectGradients(c)
    }

    @Test func bertQuestionAnswering() throws {
        let c = try Case("bert-qa")
        guard case let .bertQuestionAnswering(model) = c.model else { Issue.record("built \(c.model)"); return }
        let (start, end) = try model.logits(
            try c.ints("input_ids"), attentionMask: try c.ints("attention_mask"),
            tokenTypeIDs: try c.ints("token_type_ids"))
        expectClose(start, try c.io.tensor("start_logits"), atol: 1e-4, rtol: 1e-4, "start logits")
        expectClose(end, try c.io.tensor("end_logits"), atol: 1e-4, rtol: 1e-4, "end logits")
        // transformers: the mean of the start and end cross-entropies.
        let loss = try
            (Tensor.crossEntropy(logits: start, targets: try c.ints("start_positions"))
            + Tensor.crossEntropy(logits: end, targets: try c.ints("end_positions"))).scaled(by: 0.5)
        try expectLoss(loss, c)
        try expectGradients(c)
    }

    @Test func gpt2VariantReLUScaledByLayerWithTokenTypes() throws {
        let c = try Case("gpt2-variant")
        guard case let .gpt2LMHead(model) = c.model else { Issue.record("built \(c.model)"); return }
        let ids = try c.ints("input_ids"), types = try c.ints("token_type_ids")
        expectClose(
            try model.logits(ids, tokenTypeIDs: types), try c.io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "logits")
        // transformers' causal-LM loss with labels = ids, through the public pieces.
        let logits = try model.logits(ids, tokenTypeIDs: types)
        let (B, T) = (ids.shape[0], ids.shape[1])
        var targets: [Int32] = []
        for b in 0..<B { targets += ids.values[(b * T + 1)..<((b + 1) * T)] + [-100] }
        try expectLoss(try Tensor.crossEntropy(logits: logits, targets: IntTensor(targets)), c)
        try expectGradients(c)
    }

    @Test func bertVariantTanhGELUPadOneThreeTypes() throws {
        let c = try Case("bert-variant")
        guard case let .bertMaskedLM(model) = c.model else { Issue.record("built \(c.model)"); return }
        let logits = try model.logits(
            try c.ints("input_ids"), attentionMask: try c.ints("attention_mask"),
            tokenTypeIDs: try c.ints("token_type_ids"))
        expectClose(logits, try c.io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "vocabulary logits")
        try expectLoss(try Tensor.crossEntropy(logits: logits, targets: try c.ints("labels")), c)
        try expectGradients(c)
    }

    @Test func bestSpanRespectsOrderLengthAndAllowedPositions() throws {
        let start: [Float] = [0, 5, 1, 9, 0], end: [Float] = [0, 1, 8, 0.5, 7]
        // The best pair overall is (3, 4) = 16; (1, 2) = 13 and (3, 2) is not a span.
        #expect(try BertForQuestionAnswering.bestSpan(start: start, end: end)! == (3, 4, 16))
        #expect(
            try BertForQuestionAnswering.bestSpan(start: start, end: end, allowed: [true, true, true, true, false])!
                == (1, 2, 13))
        #expect(try BertForQuestionAnswering.bestSpan(start: start, end: end, maxAnswerLength: 1)! == (3, 3, 9.5))
    }
}
