import Foundation
import Reins
import ReinsTestSupport
import Testing

/// LoRA at the projection insertion points, and PEFT adapters (Tests/Fixtures/make_adapter_fixtures.py).
struct LoRATests {
    static func adapter(_ name: String) -> URL { Fixtures.directory.appendingPathComponent("adapters/\(name)") }

    /// An adapter fixture's batch (expected.safetensors) through a GPT-2 LM or a BERT classifier.
    static func fixtureLogits(_ model: PretrainedModel, _ io: SafeTensorsFile) throws -> Tensor {
        let ids = try io.intTensor("input_ids"), mask = try io.intTensor("attention_mask")
        switch model {
        case let .gpt2LMHead(m): return try m.logits(ids, attentionMask: mask)
        case let .bertSequenceClassification(m):
            return try m.logits(ids, attentionMask: mask, tokenTypeIDs: try io.intTensor("token_type_ids"))
        default: throw ModelError.badInput("an adapter fixture for a GPT-2 LM or a BERT classifier")
        }
    }

    /// Three AdamW steps of the LM loss on `ids`: every step only the adapter's tensors (keys containing `marker`) get
    /// gradients, and afterwards every frozen tensor is bit-identical to before.
    static func trainAdapterAlone(_ model: GPT2LMHeadModel, _ ids: IntTensor, marker: String = ".lora_") throws {
        let frozen = model.namedParameters().filter { !$0.parameter.isTrainable }.map {
            ($0.key, $0.parameter.value.scalars)
        }
        let optimizer = AdamW(learningRate: 0.05, weightDecay: 0)
        for _ in 0..<3 {
            model.zeroGradients()
            try model.loss(ids).backward()
            for (key, p) in model.namedParameters() { #expect((p.gradient != nil) == key.contains(marker), "\(key)") }
            optimizer.update(model.trainableParameters)
        }
        for (key, values) in frozen {
            #expect(
                model.namedParameters().first { $0.key == key }!.parameter.value.scalars == values, "\(key) unchanged")
        }
    }

    func gpt2() throws -> GPT2LMHeadModel {
        guard case let .gpt2LMHead(m) = try PretrainedModel.load(directory: Fixtures.model("gpt2-lm")) else {
            throw ModelError.badInput("fixture")
        }
        return m
    }

    @Test func peftGPT2AdapterReproducesPEFTLogits() throws {
        let model = try gpt2()
        try PEFTAdapter.load(directory: Self.adapter("gpt2-lora"), into: model)
        let io = try SafeTensorsFile(
            path: Self.adapter("gpt2-lora").appendingPathComponent("expected.safetensors").path)
        let logits = try model.logits(try io.intTensor("input_ids"), attentionMask: try io.intTensor("attention_mask"))
        expectClose(logits, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "GPT-2 + LoRA (c_attn, c_fc) logits")
        // Merged into the Conv1D weights, the same numbers at the base layer's cost; unmerged, the base comes back exactly.
        let layers = model.namedModules().compactMap { $0.module as? Linear }.filter { !$0.loras.isEmpty }
        #expect(layers.count == 4)
        let before = layers.map { $0.weight.value.scalars }
        for l in layers { try l.merge() }
        expectClose(
            try model.logits(try io.intTensor("input_ids"), attentionMask: try io.intTensor("attention_mask")), logits,
            atol: 1e-5, rtol: 1e-5, "merged")
        for l in layers { try l.unmerge() }
        #expect(layers.map { $0.weight.value.scalars } == before)
    }

    /// Also from the pickled adapter_model.bin that older PEFT versions wrote (the same tensors, torch.save).
    @Test(arguments: ["bert-lora", "bert-lora/pickled"])
    func peftBERTAdapterWithSavedHeadReproducesPEFTLogits(directory: String) throws {
        guard
            case let .bertSequenceClassification(model) = try PretrainedModel.load(
                directory: Fixtures.model("bert-cls"))
        else { return }
        #expect(
            FileManager.default.fileExists(
                atPath: Self.adapter(directory).appendingPathComponent("adapter_model.bin").path)
                == directory.hasSuffix("pickled"))
        try PEFTAdapter.load(directory: Self.adapter(directory), into: model)
        let io = try SafeTensorsFile(
            path: Self.adapter("bert-lora").appendingPathComponent("expected.safetensors").path)
        let logits = try model.logits(
            try io.intTensor("input_ids"), attentionMask: try io.intTensor("attention_mask"),
            tokenTypeIDs: try io.intTensor("token_type_ids"))
        expectClose(
            logits, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4,
            "BERT + LoRA (query, value, output.dense; rsLoRA) + head")
        // "output.dense" matches both the attention output and the feed-forward output, as in PEFT: 4 targets x 2 layers.
        #expect(model.namedModules().compactMap { $0.module as? Linear }.filter { !$0.loras.isEmpty }.count == 8)
    }

    /// PEFT's DoRA adapters (make_adapter_fixtures.py, magnitudes moved off their start) and LoRA on embedding tables
    /// (GPT-2's tied wte; BERT's word table with its padding row, and its token-type table), LoRA on GPT-2's tied
    /// output layer (PEFT saves its weight as `lm_head.base_layer.weight` too), and IA3 on BERT: PEFT's
    /// logits, and PEFT's gradients of sum(logits · W) for every A, B, magnitude, IA3 vector and head tensor.
    @Test(arguments: [
        "gpt2-dora", "bert-dora", "gpt2-lora-embedding", "bert-lora-embedding", "bert-ia3", "gpt2-lora-lm-head",
        "bert-loha",
    ])
    func peftAdaptersReproducePEFTLogitsAndGradients(adapter: String) throws {
        let dir = LoRATests.adapter(adapter)
        let loaded = try PretrainedModel.load(
            directory: Fixtures.model(adapter.hasPrefix("gpt2") ? "gpt2-lm" : "bert-cls"))
        let model = loaded.module
        model.freeze()
        try PEFTAdapter.load(directory: dir, into: model)
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        let logits = try LoRATests.fixtureLogits(loaded, io)
        expectClose(logits, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "\(adapter) logits")
        try (logits * io.tensor("loss_weights")).sum().backward()
        let expected = Set(io.names.filter { $0.hasPrefix("grad:") })
        let trained = model.namedParameters().filter(\.parameter.isTrainable)
        #expect(
            Set(trained.map { "grad:base_model.model." + $0.key.replacingOccurrences(of: ".default", with: "") })
                == expected)
        let marker = [
            "dora": "lora_magnitude_vector", "ia3": "ia3_l", "embedding": "lora_embedding_A", "head": "lm_head.lora_A",
            "loha": "hada_w2_b",
        ]
        #expect(trained.contains { $0.key.contains(marker.first { adapter.hasSuffix($0.key) }!.value) })
        for (key, p) in trained {
            let name = "grad:base_model.model." + key.replacingOccurrences(of: ".default", with: "")
            guard expected.contains(name), let g = p.gradient else {
                Issue.record("\(key): no gradient to compare"); continue
            }
            // PEFT keeps an IA3 vector as [out, 1] or [1, in]; Reins as a plain vector.
            let want = try io.tensor(name)
            expectClose(
                g, key.contains(".ia3_l.") ? try want.reshaped(g.shape) : want, atol: 1e-5, rtol: 1e-3, "∂/∂\(key)")
        }
    }

    /// `alpha_pattern` keys are regular expressions for the end of a module's path, as PEFT matches them.
    @Test func alphaPatternKeysMatchAsPEFTsRegularExpressions() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let source = Self.adapter("bert-lora")  // r = 2, lora_alpha 7, rsLoRA
        try FileManager.default.copyItem(
            at: source.appendingPathComponent("adapter_model.safetensors"),
            to: dir.appendingPathComponent("adapter_model.safetensors"))
        var config = try Checkpoint.readJSON(source.appendingPathComponent("adapter_config.json"))
        config["alpha_pattern"] = [#"layer\.1\..*query"#: 9, "value": 1]
        try JSONSerialization.data(withJSONObject: config).write(to: dir.appendingPathComponent("adapter_config.json"))
        guard
            case let .bertSequenceClassification(model) = try PretrainedModel.load(
                directory: Fixtures.model("bert-cls"))
        else {
            Issue.record("bert-cls is a sequence classifier"); return
        }
        try PEFTAdapter.load(directory: dir, into: model)
        for (key, module) in model.namedModules() {
            guard let lora = (module as? Linear)?.loras["default"] else { continue }
            let alpha: Float = key == "bert.encoder.layer.1.attention.self.query" ? 9 : key.hasSuffix(".value") ? 1 : 7
            #expect(abs(lora.scale - alpha / Float(2).squareRoot()) < 1e-6, "\(key)")
        }
    }

    @Test func freshLoRAStartsAsANoOpAndTrainsAlone() throws {
        let model = try gpt2()
        let ids = try IntTensor(shape: [1, 5], values: [5, 17, 42, 3, 8])
        let base = try model.logits(ids).scalars
        model.freeze()
        let targets = model.namedModules().filter { $0.key.hasSuffix("attn.c_attn") }.compactMap {
            $0.module as? Linear
        }
        for (i, l) in targets.enumerated() {
            try l.attachLoRA("task", LoRA(inputs: l.inputs, outputs: l.outputs, rank: 4, alpha: 8, seed: UInt64(i)))
        }
        expectClose(try model.logits(ids).scalars, base, atol: 1e-6, rtol: 1e-6, "B = 0: attaching changes nothing")
        // Trainable parameters: r·(in + out) per target.
        #expect(model.trainableParameterCount == targets.count * 4 * (30 + 90))
        try LoRATests.trainAdapterAlone(model, ids)
        #expect(try model.logits(ids).scalars != base, "the adapter learned something")
        // Switching the adapter off gives the base model back.
        for l in targets { l.activeLoRA = nil }
        expectClose(try model.logits(ids).scalars, base, atol: 1e-6, rtol: 1e-6, "adapter off")
    }

    @Test func mismatchedAdaptersThrowNamedErrors() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        func copy(_ edit: (inout [String: Tensor]) throws -> Void) throws -> URL {
            let out = dir.appendingPathComponent(UUID().uuidString)
            try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
            let src = Self.adapter("gpt2-lora")
            try FileManager.default.copyItem(
                at: src.appendingPathComponent("adapter_config.json"),
                to: out.appendingPathComponent("adapter_config.json"))
            let f = try SafeTensorsFile(path: src.appendingPathComponent("adapter_model.safetensors").path)
            var t = try Dictionary(uniqueKeysWithValues: f.names.map { ($0, try f.tensor($0)) })
            try edit(&t)
            try SafeTensorsFile.write(t, to: out.appendingPathComponent("adapter_model.safetensors").path)
            return out
        }
        let key = "base_model.model.transformer.h.0.attn.c_attn"
        let unknown = try copy {
            $0["base_model.model.transformer.h.0.attn.c_nope.lora_A.weight"] = try Tensor.zeros([3, 30])
        }
        #expect { try PEFTAdapter.load(directory: unknown, into: try gpt2()) } throws: {
            "\($0)".contains("no linear layer 'transformer.h.0.attn.c_nope'")
        }
        let unpaired = try copy { $0["\(key).lora_B.weight"] = nil }
        #expect(
            throws: ModelError.checkpointMismatch(
                missing: ["transformer.h.0.attn.c_attn.lora_B.weight"], unexpected: [], misshaped: [])
        ) {
            try PEFTAdapter.load(directory: unpaired, into: try gpt2())
        }
        // DoRA: a magnitude needs use_dora, use_dora needs a magnitude per layer, of the layer's output size.
        let dora = try copy { $0["\(key).lora_magnitude_vector"] = try Tensor.ones([90]) }
        #expect { try PEFTAdapter.load(directory: dora, into: try gpt2()) } throws: {
            "\($0)".contains("lora_magnitude_vector (a DoRA magnitude, but use_dora is not set)")
        }
        var config = try Checkpoint.readJSON(unpaired.appendingPathComponent("adapter_config.json"))
        config["use_dora"] = true
        for (name, edit) in [
            ("missing", { (t: inout [String: Tensor]) in }),
            (
                "misshaped",
                { (t: inout [String: Tensor]) in
                    for k in t.keys where k.hasSuffix(".lora_B.weight") {
                        t[k.replacingOccurrences(of: ".lora_B.weight", with: ".lora_magnitude_vector")] =
                            try Tensor.ones([t[k]!.shape[0] - 1])
                    }
                }
            ),
        ] as [(String, (inout [String: Tensor]) throws -> Void)] {
            let doraConfig = try copy(edit)
            try JSONSerialization.data(withJSONObject: config).write(
                to: doraConfig.appendingPathComponent("adapter_config.json"))
            #expect { try PEFTAdapter.load(directory: doraConfig, into: try gpt2()) } throws: {
                "\($0)".contains(
                    name == "missing"
                        ? "transformer.h.0.attn.c_attn.lora_magnitude_vector (use_dora is set)"
                        : "transformer.h.0.attn.c_attn.lora_magnitude_vector [89] for a layer with 90 outputs")
            }
        }
        // Embedding tables: lora_embedding_A / _B on a table of the right size only.
        let notTable = try copy { $0["\(key).lora_embedding_A"] = try Tensor.zeros([3, 30]) }
        #expect { try PEFTAdapter.load(directory: notTable, into: try gpt2()) } throws: {
            "\($0)".contains("no embedding table 'transformer.h.0.attn.c_attn'")
        }
        let table = try copy {
            $0["base_model.model.transformer.wte.lora_embedding_A"] = try Tensor.zeros([3, 96])
            $0["base_model.model.transformer.wte.lora_embedding_B"] = try Tensor.zeros([30, 3])
        }
        #expect { try PEFTAdapter.load(directory: table, into: try gpt2()) } throws: {
            "\($0)".contains(
                "transformer.wte: lora_embedding_A [3, 96] and lora_embedding_B [30, 3] for a 97 -> 30 table")
        }
        let halfTable = try copy {
            $0["base_model.model.transformer.wte.lora_embedding_B"] = try Tensor.zeros([30, 3])
        }
        #expect(
            throws: ModelError.checkpointMismatch(
                missing: ["transformer.wte.lora_embedding_A"], unexpected: [], misshaped: [])
        ) {
            try PEFTAdapter.load(directory: halfTable, into: try gpt2())
        }
        let wrongRank = try copy { $0["\(key).lora_B.weight"] = try Tensor.zeros([90, 5]) }
        #expect { try PEFTAdapter.load(directory: wrongRank, into: try gpt2()) } throws: {
            "\($0)".contains("lora_A [3, 30] and lora_B [90, 5]")
        }
        // Another base: the GPT-2 variant is 28 wide.
        guard case let .gpt2LMHead(other) = try PretrainedModel.load(directory: Fixtures.model("gpt2-variant")) else {
            return
        }
        #expect { try PEFTAdapter.load(directory: Self.adapter("gpt2-lora"), into: other) } throws: {
            "\($0)".contains("for a 28 -> 84 layer")
        }
        #expect { try PEFTAdapter.load(directory: dir.appendingPathComponent("absent"), into: try gpt2()) } throws: {
            "\($0)".contains("adapter_config.json: no such file")
        }
    }
}
