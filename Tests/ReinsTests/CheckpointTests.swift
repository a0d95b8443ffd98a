import Foundation
import Reins
import ReinsTestSupport
import Testing

struct CheckpointTests {
    let gpt2 = Fixtures.model("gpt2-lm")

    /// A copy of a fixture checkpoint whose tensors and config are changed by `edit`.
    func editedCopy(
        of source: URL, in dir: URL, config: (inout [String: Any]) -> Void = { _ in },
        tensors edit: (inout [String: Tensor]) throws -> Void = { _ in }
    ) throws -> URL {
        let out = dir.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        let file = try SafeTensorsFile(path: source.appendingPathComponent("model.safetensors").path)
        var tensors = try Dictionary(uniqueKeysWithValues: file.names.map { ($0, try file.tensor($0)) })
        try edit(&tensors)
        try SafeTensorsFile.write(tensors, to: out.appendingPathComponent("model.safetensors").path)
        var json =
            try JSONSerialization.jsonObject(with: Data(contentsOf: source.appendingPathComponent("config.json")))
            as! [String: Any]
        config(&json)
        try JSONSerialization.data(withJSONObject: json).write(to: out.appendingPathComponent("config.json"))
        return out
    }

    func gpt2Logits(_ model: PretrainedModel) throws -> [Float] {
        guard case let .gpt2LMHead(m) = model else { throw ModelError.badInput("not a GPT-2 LM") }
        return try m.logits(try IntTensor(shape: [1, 4], values: [1, 2, 3, 4])).scalars
    }

    @Test func saveThenLoadReproducesLogitsAndStoresTiedWeightsOnce() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let model = try PretrainedModel.load(directory: gpt2)
        let config =
            try JSONSerialization.jsonObject(with: Data(contentsOf: gpt2.appendingPathComponent("config.json")))
            as! [String: Any]
        // An attached (inactive) adapter is not part of the base checkpoint.
        try model.module.addBottleneckAdapter("task", placement: .pfeiffer, size: 30, bottleneck: 2)
        model.module.activateAdapter(nil)
        try model.module.save(to: dir, config: config)
        let saved = try SafeTensorsFile(path: dir.appendingPathComponent("model.safetensors").path)
        #expect(saved.entries["lm_head.weight"] == nil && saved.entries["transformer.wte.weight"] != nil)
        // Equal up to rounding: OpenBLAS may block a GEMM differently when tests run in parallel change its threads.
        expectClose(
            try gpt2Logits(PretrainedModel.load(directory: dir)), try gpt2Logits(model), atol: 1e-6, rtol: 1e-6,
            "logits after save and load")
    }

    @Test func shardedCheckpointsLoad() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = try SafeTensorsFile(path: gpt2.appendingPathComponent("model.safetensors").path)
        let names = file.names
        var map: [String: String] = [:]
        for (i, part) in [Array(names.prefix(10)), Array(names.dropFirst(10))].enumerated() {
            let shard = "model-0000\(i + 1)-of-00002.safetensors"
            try SafeTensorsFile.write(
                try Dictionary(uniqueKeysWithValues: part.map { ($0, try file.tensor($0)) }),
                to: dir.appendingPathComponent(shard).path)
            for n in part { map[n] = shard }
        }
        try JSONSerialization.data(withJSONObject: ["metadata": [:], "weight_map": map]).write(
            to: dir.appendingPathComponent("model.safetensors.index.json"))
        try FileManager.default.copyItem(
            at: gpt2.appendingPathComponent("config.json"), to: dir.appendingPathComponent("config.json"))
        expectClose(
            try gpt2Logits(PretrainedModel.load(directory: dir)), try gpt2Logits(PretrainedModel.load(directory: gpt2)),
            atol: 1e-6, rtol: 1e-6, "logits from shards")
    }

    @Test func baseAndHeadCheckpointsLoadEitherWay() throws {
        let base = Fixtures.model("bert-base")
        // A base checkpoint (no `bert.` prefix) under a new classification head.
        let head = try PretrainedModel.load(
            directory: base, architecture: "BertForSequenceClassification", newlyInitialized: ["classifier."])
        guard case let .bertSequenceClassification(cls) = head,
            case let .bert(bare) = try PretrainedModel.load(directory: base)
        else {
            Issue.record("wrong architectures built"); return
        }
        let ids = try IntTensor(shape: [1, 3], values: [2, 9, 3])
        expectClose(
            try cls.bert.hiddenStates(ids).scalars, try bare.hiddenStates(ids).scalars, atol: 1e-6, rtol: 1e-6,
            "same encoder")
        // The new head is initialised as transformers does (N(0, 0.02) weights, zero bias), identically every time.
        let w = cls.classifier.weight.value.scalars
        let std = (w.map { $0 * $0 }.reduce(0, +) / Float(w.count)).squareRoot()
        #expect(std > 0.01 && std < 0.04, "classifier weight std \(std)")
        #expect(cls.classifier.bias!.value.scalars.allSatisfy { $0 == 0 })
        guard
            case let .bertSequenceClassification(again) = try PretrainedModel.load(
                directory: base, architecture: "BertForSequenceClassification", newlyInitialized: ["classifier."])
        else { return }
        #expect(again.classifier.weight.value.scalars == w)
        // Without naming the new head, strict loading names what is missing.
        #expect(
            throws: ModelError.checkpointMismatch(
                missing: ["classifier.weight", "classifier.bias"], unexpected: [], misshaped: [])
        ) {
            try PretrainedModel.load(directory: base, architecture: "BertForSequenceClassification")
        }
        // A head checkpoint (`transformer.` prefix) into the bare GPT-2 model.
        guard case .gpt2 = try PretrainedModel.load(directory: gpt2, architecture: "GPT2Model") else {
            Issue.record("not GPT2Model"); return
        }
        // A classification checkpoint into the bare BERT model: the classifier is unexpected, and named.
        #expect(
            throws: ModelError.checkpointMismatch(
                missing: [], unexpected: ["classifier.bias", "classifier.weight"], misshaped: [])
        ) {
            try PretrainedModel.load(directory: Fixtures.model("bert-cls"), architecture: "BertModel")
        }
    }

    @Test func badCheckpointsThrowNamedErrors() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let missing = try editedCopy(of: gpt2, in: dir, tensors: { $0["transformer.h.1.mlp.c_fc.bias"] = nil })
        #expect(
            throws: ModelError.checkpointMismatch(
                missing: ["transformer.h.1.mlp.c_fc.bias"], unexpected: [], misshaped: [])
        ) {
            try PretrainedModel.load(directory: missing)
        }
        let misshaped = try editedCopy(
            of: gpt2, in: dir, tensors: { $0["transformer.ln_f.weight"] = try Tensor.ones([31]) })
        #expect(
            throws: ModelError.checkpointMismatch(
                missing: [], unexpected: [], misshaped: ["transformer.ln_f.weight is [31], expected [30]"])
        ) {
            try PretrainedModel.load(directory: misshaped)
        }
        let extra = try editedCopy(
            of: gpt2, in: dir, tensors: { $0["transformer.h.2.ln_1.weight"] = try Tensor.ones([30]) })
        #expect(
            throws: ModelError.checkpointMismatch(
                missing: [], unexpected: ["transformer.h.2.ln_1.weight"], misshaped: [])
        ) {
            try PretrainedModel.load(directory: extra)
        }
        let unknown = try editedCopy(of: gpt2, in: dir, config: { $0["architectures"] = ["FalconForCausalLM"] })
        #expect(throws: ModelError.unknownArchitecture("FalconForCausalLM", known: PretrainedModel.knownArchitectures)) {
            try PretrainedModel.load(directory: unknown)
        }
        // A known architecture over another family's config is named as such.
        let mismatched = try editedCopy(of: gpt2, in: dir, config: { $0["architectures"] = ["LlamaForCausalLM"] })
        #expect(
            throws: ModelError.badConfig(
                path: mismatched.appendingPathComponent("config.json").path,
                detail: "model_type 'gpt2' is not a Llama-family decoder (llama, qwen2, mistral)")
        ) {
            try PretrainedModel.load(directory: mismatched)
        }
        let byType = try editedCopy(of: gpt2, in: dir, config: { $0["architectures"] = nil })
        guard case .gpt2LMHead = try PretrainedModel.load(directory: byType) else {
            Issue.record("model_type fallback"); return
        }
        let neither = try editedCopy(
            of: gpt2, in: dir,
            config: {
                $0["architectures"] = nil; $0["model_type"] = nil
            })
        #expect(
            throws: ModelError.unknownArchitecture("(none in config.json)", known: PretrainedModel.knownArchitectures)
        ) {
            try PretrainedModel.load(directory: neither)
        }
        let badConfig = try editedCopy(of: gpt2, in: dir, config: { $0["n_head"] = 7 })
        #expect { try PretrainedModel.load(directory: badConfig) } throws: {
            "\($0)".contains("not divisible by n_head 7")
        }
        #expect(throws: ModelError.missingFile(path: dir.appendingPathComponent("nothing/config.json").path)) {
            try PretrainedModel.load(directory: dir.appendingPathComponent("nothing"))
        }
        let noWeights = try editedCopy(of: gpt2, in: dir)
        try FileManager.default.removeItem(at: noWeights.appendingPathComponent("model.safetensors"))
        #expect(throws: ModelError.missingFile(path: noWeights.appendingPathComponent("model.safetensors").path)) {
            try PretrainedModel.load(directory: noWeights)
        }
        let truncated = try editedCopy(of: gpt2, in: dir)
        let weights = truncated.appendingPathComponent("model.safetensors")
        try Data(try Data(contentsOf: weights).prefix(1000)).write(to: weights)
        #expect(throws: SafeTensorsError.self) { try PretrainedModel.load(directory: truncated) }
    }

    @Test func badInputsThrowNamedErrors() throws {
        guard case let .gpt2LMHead(lm) = try PretrainedModel.load(directory: gpt2),
            case let .bertSequenceClassification(bert) = try PretrainedModel.load(directory: Fixtures.model("bert-cls"))
        else {
            Issue.record("wrong architectures built"); return
        }
        #expect(throws: ModelError.tokenOutOfRange(position: 2, id: 97, vocabularySize: 97)) {
            try lm.logits(try IntTensor(shape: [1, 3], values: [1, 2, 97]))
        }
        #expect(throws: ModelError.tokenOutOfRange(position: 0, id: -1, vocabularySize: 101)) {
            try bert.logits(try IntTensor(shape: [1, 1], values: [-1]))
        }
        #expect(throws: ModelError.sequenceTooLong(length: 25, maximum: 24)) {
            try lm.logits(try IntTensor(shape: [1, 25], values: [Int32](repeating: 1, count: 25)))
        }
        #expect(throws: ModelError.sequenceTooLong(length: 41, maximum: 40)) {
            try bert.logits(try IntTensor(shape: [1, 41], values: [Int32](repeating: 1, count: 41)))
        }
        #expect(throws: ModelError.tokenTypeOutOfRange(position: 1, type: 2, typeCount: 2)) {
            try bert.logits(
                try IntTensor(shape: [1, 2], values: [1, 2]),
                tokenTypeIDs: try IntTensor(shape: [1, 2], values: [0, 2]))
        }
        #expect(throws: ModelError.self) {
            try bert.logits(
                try IntTensor(shape: [1, 2], values: [1, 2]),
                attentionMask: try IntTensor(shape: [1, 3], values: [1, 1, 1]))
        }
        #expect(throws: ModelError.self) { try lm.logits(IntTensor([1, 2, 3])) }
    }

    @Test func freezingAndCounting() throws {
        guard case let .bertSequenceClassification(m) = try PretrainedModel.load(directory: Fixtures.model("bert-cls"))
        else {
            Issue.record("wrong architecture"); return
        }
        let total = m.parameterCount
        // The bare encoder plus pooler plus a 3-way classifier (C = 30, 2 layers, intermediate 37, V = 101, 40 positions).
        let (C, I, V, P) = (30, 37, 101, 40)
        let layer = 4 * (C * C + C) + 2 * C + (C * I + I) + (I * C + C) + 2 * C
        #expect(total == (V + P + 2) * C + 2 * C + 2 * layer + (C * C + C) + (C * 3 + 3))
        m.freeze()
        m.unfreeze { $0.hasPrefix("classifier.") || $0.hasSuffix(".bias") }
        #expect(m.trainableParameters.count == 1 + m.namedParameters().filter { $0.key.hasSuffix(".bias") }.count)
        let ids = try IntTensor(shape: [1, 3], values: [2, 9, 3])
        try Tensor.crossEntropy(logits: m.logits(ids), targets: IntTensor([1])).backward()
        for (key, p) in m.namedParameters() {
            #expect((p.gradient != nil) == (key.hasPrefix("classifier.") || key.hasSuffix(".bias")), "\(key)")
        }
    }
}
