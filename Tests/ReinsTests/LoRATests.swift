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
        case let .bertSequenceClassification(m): return try m.logits(ids, attentionMask: mask, tokenTypeIDs: try io.intTensor("token_type_ids"))
        default: throw ModelError.badInput("an adapter fixture for a GPT-2 LM or a BERT classifier")
        }
    }

    /// Three AdamW steps of the LM loss on `ids`: every step only the adapter's tensors (keys containing `marker`) get
    /// gradients, and afterwards every frozen tensor is bit-identical to before.
    static func trainAdapterAlone(_ model: GPT2LMHeadModel, _ ids: IntTensor, marker: String = ".lora_") throws {
        let frozen = model.namedParameters().filter { !$0.parameter.isTrainable }.map { ($0.key, $0.parameter.value.scalars) }
        let optimizer = AdamW(learningRate: 0.05, weightDecay: 0)
        for _ in 0..<3 {
            model.zeroGradients()
            try model.loss(ids).backward()
            for (key, p) in model.namedParameters() { #expect((p.gradient != nil) == key.contains(marker), "\(key)") }
            optimizer.update(model.trainableParameters)
        }
        for (key, values) in frozen { #expect(model.namedParameters().first { $0.key == key }!.parameter.value.scalars == values, "\(key) unchanged") }
    }

    func gpt2() throws -> GPT2LMHeadModel {
        guard case let .gpt2LMHead(m) = try PretrainedModel.load(directory: ModelParityTests.directory("gpt2-lm")) else { throw ModelError.badInput("fixture") }
        return m
    }

    @Test func peftGPT2AdapterReproducesPEFTLogits() throws {
        let model = try gpt2()
        try PEFTAdapter.load(directory: Self.adapter("gpt2-lora"), into: model)
        let io = try SafeTensorsFile(path: Self.adapter("gpt2-lora").appendingPathComponent("expected.safetensors").path)
        let logits = try model.logits(try io.intTensor("input_ids"), attentionMask: try io.intTensor("attention_mask"))
        expectClose(logits, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "GPT-2 + LoRA (c_attn, c_fc) logits")
        // Merged into the Conv1D weights, the same numbers at the base layer's cost; unmerged, the base comes back exactly.
        let layers = model.namedModules().compactMap { $0.module as? Linear }.filter { !$0.loras.isEmpty }
        #expect(layers.count == 4)
        let before = layers.map { $0.weight.value.scalars }
        for l in layers { try l.merge() }
        expectClose(try model.logits(try io.intTensor("input_ids"), attentionMask: try io.intTensor("attention_mask")), logits,
                    atol: 1e-5, rtol: 1e-5, "merged")
        for l in layers { try l.unmerge() }
        #expect(layers.map { $0.weight.value.scalars } == before)
    }

    /// Also from the pickled adapter_model.bin that older PEFT versions wrote (the same tensors, torch.save).
    @Test(arguments: ["bert-lora", "bert-lora/pickled"])
    func peftBERTAdapterWithSavedHeadReproducesPEFTLogits(directory: String) throws {
        guard case let .bertSequenceClassification(model) = try PretrainedModel.load(directory: ModelParityTests.directory("bert-cls")) else { return }
        #expect(FileManager.default.fileExists(atPath: Self.adapter(directory).appendingPathComponent("adapter_model.bin").path) == directory.hasSuffix("pickled"))
        try PEFTAdapter.load(directory: Self.adapter(directory), into: model)
        let io = try SafeTensorsFile(path: Self.adapter("bert-lora").appendingPathComponent("expected.safetensors").path)
        let logits = try model.logits(try io.intTensor("input_ids"), attentionMask: try io.intTensor("attention_mask"),
                                      tokenTypeIDs: try io.intTensor("token_type_ids"))
        expectClose(logits, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "BERT + LoRA (query, value, output.dense; rsLoRA) + head")
        // "output.dense" matches both the attention output and the feed-forward output, as in PEFT: 4 targets x 2 layers.
        #expect(model.namedModules().compactMap { $0.module as? Linear }.filter { !$0.loras.isEmpty }.count == 8)
    }

    /// PEFT's DoRA adapters (make_adapter_fixtures.py, magnitudes moved off their start) and LoRA on embedding tables
    /// (GPT-2's tied wte; BERT's word table with its padding row, and its token-type table), LoRA on GPT-2's tied
    /// output layer (PEFT saves its weight as `lm_head.base_layer.weight` too), and IA3 on BERT: PEFT's
    /// logits, and PEFT's gradients of sum(logits · W) for every A, B, magnitude, IA3 vector and head tensor.
    @Test(arguments: ["gpt2-dora", "bert-dora", "gpt2-lora-embedding", "bert-lora-embedding", "bert-ia3", "gpt2-lora-lm-head"])
    func peftAdaptersReproducePEFTLogitsAndGradients(adapter: String) throws {
        let dir = LoRATests.adapter(adapter)
        let loaded = try PretrainedModel.load(directory: ModelParityTests.directory(adapter.hasPrefix("gpt2") ? "gpt2-lm" : "bert-cls"))
        let model = loaded.module
        model.freeze()
        try PEFTAdapter.load(directory: dir, into: model)
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        let logits = try LoRATests.fixtureLogits(loaded, io)
        expectClose(logits, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "\(adapter) logits")
        try (logits * io.tensor("loss_weights")).sum().backward()
        let expected = Set(io.names.filter { $0.hasPrefix("grad:") })
        let trained = model.namedParameters().filter(\.parameter.isTrainable)
        #expect(Set(trained.map { "grad:base_model.model." + $0.key.replacingOccurrences(of: ".default", with: "") }) == expected)
        let marker = ["dora": "lora_magnitude_vector", "ia3": "ia3_l", "embedding": "lora_embedding_A", "head": "lm_head.lora_A"]
        #expect(trained.contains { $0.key.contains(marker.first { adapter.hasSuffix($0.key) }!.value) })
        for (key, p) in trained {
            let name = "grad:base_model.model." + key.replacingOccurrences(of: ".default", with: "")
            guard expected.contains(name), let g = p.gradient else { Issue.record("\(key): no gradient to compare"); continue }
            // PEFT keeps an IA3 vector as [out, 1] or [1, in]; Reins as a plain vector.
            let want = try io.tensor(name)
            expectClose(g, key.contains(".ia3_l.") ? try want.reshaped(g.shape) : want, atol: 1e-5, rtol: 1e-3, "∂/∂\(key)")
        }
    }

    /// `alpha_pattern` keys are regular expressions for the end of a module's path, as PEFT matches them.
    @Test func alphaPatternKeysMatchAsPEFTsRegularExpressions() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let source = Self.adapter("bert-lora") // r = 2, lora_alpha 7, rsLoRA
        try FileManager.default.copyItem(at: source.appendingPathComponent("adapter_model.safetensors"), to: dir.appendingPathComponent("adapter_model.safetensors"))
        var config = try Checkpoint.readJSON(source.appendingPathComponent("adapter_config.json"))
        config["alpha_pattern"] = [#"layer\.1\..*query"#: 9, "value": 1]
        try JSONSerialization.data(withJSONObject: config).write(to: dir.appendingPathComponent("adapter_config.json"))
        guard case let .bertSequenceClassification(model) = try PretrainedModel.load(directory: ModelParityTests.directory("bert-cls")) else {
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
        let targets = model.namedModules().filter { $0.key.hasSuffix("attn.c_attn") }.compactMap { $0.module as? Linear }
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
            try FileManager.default.copyItem(at: src.appendingPathComponent("adapter_config.json"), to: out.appendingPathComponent("adapter_config.json"))
            let f = try SafeTensorsFile(path: src.appendingPathComponent("adapter_model.safetensors").path)
            var t = try Dictionary(uniqueKeysWithValues: f.names.map { ($0, try f.tensor($0)) })
            try edit(&t)
            try SafeTensorsFile.write(t, to: out.appendingPathComponent("adapter_model.safetensors").path)
            return out
        }
        let key = "base_model.model.transformer.h.0.attn.c_attn"
        let unknown = try copy { $0["base_model.model.transformer.h.0.attn.c_nope.lora_A.weight"] = try Tensor.zeros([3, 30]) }
        #expect { try PEFTAdapter.load(directory: unknown, into: try gpt2()) } throws: { "\($0)".contains("no linear layer 'transformer.h.0.attn.c_nope'") }
        let unpaired = try copy { $0["\(key).lora_B.weight"] = nil }
        #expect(throws: ModelError.checkpointMismatch(missing: ["transformer.h.0.attn.c_attn.lora_B.weight"], unexpected: [], misshaped: [])) {
            try PEFTAdapter.load(directory: unpaired, into: try gpt2())
        }
        // DoRA: a magnitude needs use_dora, use_dora needs a magnitude per layer, of the layer's output size.
        let dora = try copy { $0["\(key).lora_magnitude_vector"] = try Tensor.ones([90]) }
        #expect { try PEFTAdapter.load(directory: dora, into: try gpt2()) } throws: { "\($0)".contains("lora_magnitude_vector (a DoRA magnitude, but use_dora is not set)") }
        var config = try Checkpoint.readJSON(unpaired.appendingPathComponent("adapter_config.json"))
        config["use_dora"] = true
        for (name, edit) in [("missing", { (t: inout [String: Tensor]) in }), ("misshaped", { (t: inout [String: Tensor]) in
            for k in t.keys where k.hasSuffix(".lora_B.weight") {
                t[k.replacingOccurrences(of: ".lora_B.weight", with: ".lora_magnitude_vector")] = try Tensor.ones([t[k]!.shape[0] - 1])
            }
        })] as [(String, (inout [String: Tensor]) throws -> Void)] {
            let doraConfig = try copy(edit)
            try JSONSerialization.data(withJSONObject: config).write(to: doraConfig.appendingPathComponent("adapter_config.json"))
            #expect { try PEFTAdapter.load(directory: doraConfig, into: try gpt2()) } throws: {
                "\($0)".contains(name == "missing" ? "transformer.h.0.attn.c_attn.lora_magnitude_vector (use_dora is set)"
                                                   : "transformer.h.0.attn.c_attn.lora_magnitude_vector [89] for a layer with 90 outputs")
            }
        }
        // Embedding tables: lora_embedding_A / _B on a table of the right size only.
        let notTable = try copy { $0["\(key).lora_embedding_A"] = try Tensor.zeros([3, 30]) }
        #expect { try PEFTAdapter.load(directory: notTable, into: try gpt2()) } throws: { "\($0)".contains("no embedding table 'transformer.h.0.attn.c_attn'") }
        let table = try copy {
            $0["base_model.model.transformer.wte.lora_embedding_A"] = try Tensor.zeros([3, 96])
            $0["base_model.model.transformer.wte.lora_embedding_B"] = try Tensor.zeros([30, 3])
        }
        #expect { try PEFTAdapter.load(directory: table, into: try gpt2()) } throws: {
            "\($0)".contains("transformer.wte: lora_embedding_A [3, 96] and lora_embedding_B [30, 3] for a 97 -> 30 table")
        }
        let halfTable = try copy { $0["base_model.model.transformer.wte.lora_embedding_B"] = try Tensor.zeros([30, 3]) }
        #expect(throws: ModelError.checkpointMismatch(missing: ["transformer.wte.lora_embedding_A"], unexpected: [], misshaped: [])) {
            try PEFTAdapter.load(directory: halfTable, into: try gpt2())
        }
        let wrongRank = try copy { $0["\(key).lora_B.weight"] = try Tensor.zeros([90, 5]) }
        #expect { try PEFTAdapter.load(directory: wrongRank, into: try gpt2()) } throws: { "\($0)".contains("lora_A [3, 30] and lora_B [90, 5]") }
        // Another base: the GPT-2 variant is 28 wide.
        guard case let .gpt2LMHead(other) = try PretrainedModel.load(directory: ModelParityTests.directory("gpt2-variant")) else { return }
        #expect { try PEFTAdapter.load(directory: Self.adapter("gpt2-lora"), into: other) } throws: { "\($0)".contains("for a 28 -> 84 layer") }
        #expect { try PEFTAdapter.load(directory: dir.appendingPathComponent("absent"), into: try gpt2()) } throws: { "\($0)".contains("adapter_config.json: no such file") }
    }
}

/// DoRA (PEFT's `use_dora`): the adapted weight's direction from LoRA, its magnitude per output learned.
struct DoRATests {
    /// A new DoRA adapter: a no-op at attach (the magnitudes are the base's row norms), r·(in + out) + out parameters
    /// per layer, only adapter tensors train, merging gives the same logits and unmerging the base weight bit for bit,
    /// and save -> load into a fresh base reproduces the trained adapter.
    @Test func freshDoRAStartsAsANoOpTrainsMergesAndRoundTrips() throws {
        let model = try LoRATests().gpt2()
        let ids = try IntTensor(shape: [2, 5], values: [5, 17, 42, 3, 8, 9, 1, 77, 30, 2])
        let base = try model.logits(ids).scalars
        model.freeze()
        let keys = try model.addLoRA("task", LoRAConfig(rank: 3, alpha: 6, targets: ["c_attn", "c_fc"], dora: true), seed: 5)
        let layers = model.namedModules().filter { keys.contains($0.key) }.compactMap { $0.module as? Linear }
        #expect(layers.count == 4)
        expectClose(try model.logits(ids).scalars, base, atol: 1e-5, rtol: 1e-5, "attaching DoRA changes nothing")
        #expect(model.trainableParameterCount == layers.map { 3 * ($0.inputs + $0.outputs) + $0.outputs }.reduce(0, +))
        let startMagnitudes = layers.map { $0.loras["task"]!.magnitude!.value.scalars }
        try LoRATests.trainAdapterAlone(model, ids)
        let trained = try model.logits(ids)
        #expect(trained.scalars != base, "the adapter learned something")
        #expect(layers.map { $0.loras["task"]!.magnitude!.value.scalars } != startMagnitudes, "the magnitudes moved")
        // Merged: W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖ per output, the same logits; unmerged: the base weight exactly.
        let weights = layers.map { $0.weight.value.scalars }
        for l in layers { try l.merge() }
        expectClose(try model.logits(ids), trained, atol: 1e-5, rtol: 1e-4, "merged")
        for l in layers { try l.unmerge() }
        #expect(layers.map { $0.weight.value.scalars } == weights)
        // Saved in PEFT's layout (use_dora, one lora_magnitude_vector per layer) and loaded into a fresh base.
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try PEFTAdapter.save(model, name: "task", to: dir, taskType: "CAUSAL_LM")
        #expect(try Checkpoint.readJSON(dir.appendingPathComponent("adapter_config.json"))["use_dora"] as? Bool == true)
        let file = try SafeTensorsFile(path: dir.appendingPathComponent("adapter_model.safetensors").path)
        #expect(file.names.filter { $0.hasSuffix(".lora_magnitude_vector") }.count == 4)
        let fresh = try LoRATests().gpt2()
        try PEFTAdapter.load(directory: dir, into: fresh)
        expectClose(try fresh.logits(ids), trained, atol: 1e-6, rtol: 1e-6, "after save and load")
        // One plain LoRA layer in a DoRA adapter cannot be written in PEFT's layout (one use_dora per adapter).
        let mlp = try #require(fresh.namedModules().first { $0.key == "transformer.h.0.mlp.c_proj" }?.module as? Linear)
        try mlp.attachLoRA("default", LoRA(inputs: mlp.inputs, outputs: mlp.outputs, rank: 2, alpha: 2, seed: 1))
        #expect { try PEFTAdapter.save(fresh, to: dir, taskType: "CAUSAL_LM") } throws: {
            "\($0)".contains("mixes DoRA ('transformer.h.0.attn.c_attn') and plain LoRA ('transformer.h.0.mlp.c_proj') layers")
        }
    }

    /// With lora_dropout in training, PEFT's DoRA reads the dropped input in both terms it adds to the base output:
    /// `W x + b + (f - 1) ⊙ W·drop(x) + f ⊙ s·B·A·drop(x)`, f = m / ‖W + s·B·A‖ (BERT's [out, in] layout here).
    @Test func doraDropoutFollowsPEFTsFormula() throws {
        let layer = try Linear(inputs: 7, outputs: 5, seed: 3)
        layer.bias!.value = try Tensor.uniform([5], low: -1, high: 1, seed: 4)
        let a = try Tensor.uniform([2, 7], low: -0.5, high: 0.5, seed: 5), b = try Tensor.uniform([5, 2], low: -0.5, high: 0.5, seed: 6)
        let m = try Tensor.uniform([5], low: 0.5, high: 1.5, seed: 7)
        let lora = LoRA(a: a, b: b, scale: 1.5, magnitude: m)
        lora.dropout = 0.4
        try layer.attachLoRA("d", lora)
        let x = try Tensor.uniform([3, 7], low: -1, high: 1, seed: 8)
        let y = try TrainingMode.run(seed: 11) { try layer(x) }
        // The same mask: the layer's only dropout site draws from offset 0.
        let xd = try x.dropout(0.4, seed: 11, offset: 0)
        #expect(xd.scalars != x.scalars)
        // f from the definition, row by row of W + s·B·A.
        let w = layer.weight.value.scalars, delta = try Tensor.matmul(b, a).scalars
        var f: [Float] = []
        for o in 0..<5 {
            var sum: Float = 0
            for i in 0..<7 { let v = w[o * 7 + i] + 1.5 * delta[o * 7 + i]; sum += v * v }
            f.append(m.scalars[o] / sum.squareRoot())
        }
        let factor = try Tensor(shape: [5], values: f)
        let full = try Tensor.linear(x, weight: layer.weight.value, bias: layer.bias!.value)
        let droppedBase = try Tensor.linear(xd, weight: layer.weight.value)
        let low = try Tensor.linear(Tensor.linear(xd, weight: a), weight: b).scaled(by: 1.5)
        let expected = try full + (droppedBase * factor - droppedBase) + low * factor
        expectClose(y, expected, atol: 1e-5, rtol: 1e-5, "DoRA with dropout")
        // Outside training the dropout is off: b + f ⊙ (W x + s·B·A·x).
        let plain = try Tensor.linear(x, weight: layer.weight.value) + Tensor.linear(Tensor.linear(x, weight: a), weight: b).scaled(by: 1.5)
        expectClose(try layer(x), try plain * factor + layer.bias!.value, atol: 1e-5, rtol: 1e-5, "DoRA in inference")
    }
}

struct PrefixTuningTests {
    @Test func peftPrefixOnBERTWithPaddingAndSavedHeadReproducesPEFTLogits() throws {
        guard case let .bertSequenceClassification(model) = try PretrainedModel.load(directory: ModelParityTests.directory("bert-cls")) else { return }
        let dir = LoRATests.adapter("bert-prefix")
        try PEFTAdapter.load(directory: dir, into: model)
        #expect(model.bert.prefix?.length == 3)
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        let logits = try model.logits(try io.intTensor("input_ids"), attentionMask: try io.intTensor("attention_mask"),
                                      tokenTypeIDs: try io.intTensor("token_type_ids"))
        expectClose(logits, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "BERT + prefix + head logits")
        model.freeze()
        model.bert.prefix!.embeddings.isTrainable = true
        let loss = try Tensor.crossEntropy(logits: model.logits(try io.intTensor("input_ids"), attentionMask: try io.intTensor("attention_mask")), targets: IntTensor([0, 1]))
        try loss.backward()
        for (key, p) in model.namedParameters() { #expect((p.gradient != nil) == (key == "bert.prompt_embeddings"), "\(key)") }
    }

    @Test func peftPromptTuningOnBERTReproducesPEFTLogits() throws {
        guard case let .bertSequenceClassification(model) = try PretrainedModel.load(directory: ModelParityTests.directory("bert-cls")) else { return }
        let dir = LoRATests.adapter("bert-prompt")
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        let ids = try io.intTensor("input_ids"), mask = try io.intTensor("attention_mask"), types = try io.intTensor("token_type_ids")
        try model.loadAdapter("prompt", from: dir)
        #expect(model.bert.promptLength == 4)
        expectClose(try model.logits(ids, attentionMask: mask, tokenTypeIDs: types), try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "BERT + prompt + head logits")
        // Only the prompt and the head train.
        try Tensor.crossEntropy(logits: model.logits(ids, attentionMask: mask, tokenTypeIDs: types), targets: IntTensor([0, 2])).backward()
        for (key, p) in model.namedParameters() {
            #expect((p.gradient != nil) == (key == "bert.prompt_tuning_embeddings" || key.hasPrefix("classifier.")), "\(key)")
        }
        // Switched off, the base model's own logits come back (the prompt's positions are gone).
        model.activateAdapter(nil)
        #expect(try model.bert.hiddenStates(ids, attentionMask: mask).shape == [2, 9, 30])
    }

    /// Token classification with a prompt: PEFT's logits cover the virtual positions first, `[B, P + T, labels]`
    /// (`includingPrompt`, what `reins logits` writes); without it, the tokens' rows alone, the same numbers.
    @Test func peftPromptTuningOnTokenClassificationReproducesPEFTLogits() throws {
        guard case let .bertTokenClassification(model) = try PretrainedModel.load(directory: ModelParityTests.directory("bert-tok")) else {
            Issue.record("bert-tok is a token classifier"); return
        }
        let dir = LoRATests.adapter("bert-tok-prompt")
        try PEFTAdapter.load(directory: dir, into: model)
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        let ids = try io.intTensor("input_ids"), mask = try io.intTensor("attention_mask"), types = try io.intTensor("token_type_ids")
        let all = try model.logits(ids, attentionMask: mask, tokenTypeIDs: types, includingPrompt: true)
        #expect(all.shape == [2, 11, 5])
        expectClose(all, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "BERT token classification + prompt, P + T positions")
        expectClose(try model.logits(ids, attentionMask: mask, tokenTypeIDs: types), try all.slice(axis: 1, 2..<11),
                    atol: 0, rtol: 0, "the tokens' rows")
    }

    @Test func peftPrefixReproducesPEFTLogitsAndGenerationAgreesWithRecomputing() throws {
        guard case let .gpt2LMHead(model) = try PretrainedModel.load(directory: ModelParityTests.directory("gpt2-lm")) else { return }
        let dir = LoRATests.adapter("gpt2-prefix")
        try PEFTAdapter.load(directory: dir, into: model)
        #expect(model.transformer.prefixLength == 4)
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        let ids = try io.intTensor("input_ids"), mask = try io.intTensor("attention_mask")
        expectClose(try model.logits(ids, attentionMask: mask), try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "GPT-2 + prefix logits")
        // Generation with the KV cache (prefix in the cache) continues exactly as recomputing from scratch would.
        let out = try model.generate(prompts: [[5, 17, 42]], options: GenerationOptions(maxNewTokens: 6))[0]
        let full = try model.logits(try IntTensor(shape: [1, out.count - 1], values: Array(out.dropLast())))
        let V = full.shape[2]
        for t in 2..<(out.count - 1) {
            let row = Array(full.scalars[(t * V)..<((t + 1) * V)])
            #expect(Int32(row.indices.max { row[$0] < row[$1] }!) == out[t + 1], "step \(t)")
        }
        // The prefix gets gradients; nothing else does once the base is frozen.
        model.freeze()
        model.transformer.prefix!.embeddings.isTrainable = true
        try model.loss(ids, attentionMask: mask).backward()
        for (key, p) in model.namedParameters() { #expect((p.gradient != nil) == (key == "transformer.prompt_embeddings"), "\(key)") }
        #expect(model.trainableParameterCount == 4 * 2 * 2 * 30)
        // A prefix for another model size is refused with the shapes named.
        #expect { try model.transformer.attachPrefix(Parameter("p", try Tensor.zeros([4, 100]))) } throws: { "\($0)".contains("expected [P, 120]") }
    }
}

/// LoRA on embedding tables (PEFT's `lora_embedding_A` / `lora_embedding_B`), and P-tuning adapters.
struct EmbeddingLoRATests {
    /// A new LoRA on GPT-2's tied wte and on c_attn: a no-op at attach, r·(V + C) parameters for the table, only adapter
    /// tensors train, merged equals unmerged (the tied output layer keeps reading the base table, as in PEFT) and
    /// unmerging restores the table bit for bit, greedy generation agrees with recomputing, and save -> load into a
    /// fresh base reproduces the trained logits.
    @Test func freshEmbeddingLoRATrainsMergesAndRoundTrips() throws {
        let model = try LoRATests().gpt2()
        let ids = try IntTensor(shape: [2, 5], values: [5, 17, 42, 3, 8, 9, 1, 77, 30, 2])
        let base = try model.logits(ids).scalars
        model.freeze()
        #expect { try model.addLoRA("bad", LoRAConfig(rank: 2, targets: ["wte"], dora: true)) } throws: {
            "\($0)".contains("'transformer.wte' is an embedding table: DoRA is not supported")
        }
        let keys = try model.addLoRA("task", LoRAConfig(rank: 3, alpha: 6, targets: ["wte", "c_attn"]), seed: 5)
        #expect(keys.sorted() == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn", "transformer.wte"])
        expectClose(try model.logits(ids).scalars, base, atol: 1e-6, rtol: 1e-6, "A = 0: attaching changes nothing")
        #expect(model.trainableParameterCount == 3 * (97 + 30) + 2 * 3 * (30 + 90))
        try LoRATests.trainAdapterAlone(model, ids)
        let table = model.transformer.tokenEmbedding
        #expect(table.loras["task"]!.a.value.scalars.contains { $0 != 0 }, "the table's A moved off zero")
        let trained = try model.logits(ids)
        #expect(trained.scalars != base, "the adapter learned something")
        let generated = try model.generate(prompts: [[5, 17, 42]], options: GenerationOptions(maxNewTokens: 4))[0]
        let recomputed = try model.logits(try IntTensor(shape: [1, generated.count - 1], values: Array(generated.dropLast())))
        let V = recomputed.shape[2]
        for t in 2..<(generated.count - 1) {
            let row = Array(recomputed.scalars[(t * V)..<((t + 1) * V)])
            #expect(Int32(row.indices.max { row[$0] < row[$1] }!) == generated[t + 1], "step \(t)")
        }
        #expect(model.tiedOutputEmbedding === table)
        let before = table.weight.value.scalars
        try model.mergeLoRA()
        #expect(table.isMerged && table.weight.value.scalars != before)
        expectClose(try model.logits(ids), trained, atol: 1e-5, rtol: 1e-5, "merged")
        try model.unmergeLoRA()
        #expect(table.weight.value.scalars == before)
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try PEFTAdapter.save(model, name: "task", to: dir, taskType: "CAUSAL_LM")
        let file = try SafeTensorsFile(path: dir.appendingPathComponent("adapter_model.safetensors").path)
        #expect(file.entries["base_model.model.transformer.wte.lora_embedding_A"]?.shape == [3, 97])
        #expect(file.entries["base_model.model.transformer.wte.lora_embedding_B"]?.shape == [30, 3])
        let fresh = try LoRATests().gpt2()
        try PEFTAdapter.load(directory: dir, into: fresh)
        expectClose(try fresh.logits(ids), trained, atol: 1e-6, rtol: 1e-6, "after save and load")
    }

    /// The lookup against plain loops: row + s·Σ_k B[:, k]·A[k, id]; the padding id's column of A gets no gradient (as
    /// torch's `padding_idx` in PEFT's lookup), the others the sum over their positions.
    @Test func embeddingLoRAEqualsPlainLoopsAndSkipsThePaddingColumn() throws {
        let (V, C, r) = (7, 5, 2), s: Float = 1.5
        let table = try Embedding(count: V, size: C, paddingIndex: 0, seed: 3)
        table.weight.isTrainable = false
        let lora = LoRA(a: try Tensor.normal([r, V], std: 1, seed: 4), b: try Tensor.normal([C, r], std: 1, seed: 5), scale: s)
        try table.attachLoRA("task", lora)
        let ids: [Int32] = [0, 3, 0, 5, 3]
        let out = try table(try IntTensor(shape: [5], values: ids))
        let (w, a, b) = (table.weight.value.scalars, lora.a.value.scalars, lora.b.value.scalars)
        var expected: [Float] = []
        for id in ids.map(Int.init) {
            for c in 0..<C { expected.append(w[id * C + c] + s * (0..<r).map { b[c * r + $0] * a[$0 * V + id] }.reduce(0, +)) }
        }
        expectClose(out.scalars, expected, atol: 1e-6, rtol: 1e-6, "lookup")
        try out.sum().backward()
        let g = try #require(lora.a.gradient).scalars
        for k in 0..<r {
            #expect(g[k * V + 0] == 0, "padding column")
            let bSum = (0..<C).map { b[$0 * r + k] }.reduce(0, +)
            expectClose([g[k * V + 3], g[k * V + 5], g[k * V + 1]], [2 * s * bSum, s * bSum, 0], atol: 1e-5, rtol: 1e-5, "∂/∂A row \(k)")
        }
        #expect { try table.attachLoRA("wide", LoRA(a: try Tensor.zeros([r, V + 1]), b: try Tensor.zeros([C, r]), scale: 1)) } throws: {
            "\($0)".contains("do not fit a 7 x 5 embedding table")
        }
    }

    /// PEFT's AdaLoRA after rank allocation: the kept ranks per module (1 to 2 of 4), E folded into A, the scale
    /// α / (r₀ + 1e-5) of every module: PEFT's logits; a missing E is named.
    @Test func peftAdaLoRALoadsAsTheLoRAItComputes() throws {
        let dir = LoRATests.adapter("bert-adalora")
        guard case let .bertSequenceClassification(model) = try PretrainedModel.load(directory: ModelParityTests.directory("bert-cls")) else {
            Issue.record("bert-cls is a sequence classifier"); return
        }
        try PEFTAdapter.load(directory: dir, into: model)
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        expectClose(try model.logits(io.intTensor("input_ids"), attentionMask: io.intTensor("attention_mask"), tokenTypeIDs: io.intTensor("token_type_ids")),
                    try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "BERT + AdaLoRA + head")
        let adapted = model.namedModules().compactMap { $0.module as? Linear }.compactMap { $0.loras["default"] }
        #expect(adapted.map(\.rank).sorted() == [1, 1, 1, 2])
        #expect(adapted.allSatisfy { abs($0.scale - 6 / (4 + 1e-5)) < 1e-6 })
        // Saved, it is a PEFT LoRA adapter (per-module ranks and alphas in rank_pattern / alpha_pattern) with the same logits.
        let saved = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: saved) }
        try PEFTAdapter.save(model, to: saved, taskType: "SEQ_CLS", modulesToSave: ["classifier"])
        if let keep = ProcessInfo.processInfo.environment["REINS_SAVE_ADAPTERS"] { // for check_reins_adapters_in_peft.py
            try PEFTAdapter.save(model, to: URL(fileURLWithPath: keep).appendingPathComponent("bert-adalora"), taskType: "SEQ_CLS", modulesToSave: ["classifier"])
        }
        #expect(try Checkpoint.readJSON(saved.appendingPathComponent("adapter_config.json"))["peft_type"] as? String == "LORA")
        guard case let .bertSequenceClassification(fresh) = try PretrainedModel.load(directory: ModelParityTests.directory("bert-cls")) else { return }
        try PEFTAdapter.load(directory: saved, into: fresh)
        expectClose(try fresh.logits(io.intTensor("input_ids"), attentionMask: io.intTensor("attention_mask"), tokenTypeIDs: io.intTensor("token_type_ids")),
                    try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "saved as LoRA and loaded back")
        let broken = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: broken) }
        try FileManager.default.copyItem(at: dir.appendingPathComponent("adapter_config.json"), to: broken.appendingPathComponent("adapter_config.json"))
        let file = try SafeTensorsFile(path: dir.appendingPathComponent("adapter_model.safetensors").path)
        var tensors = try Dictionary(uniqueKeysWithValues: file.names.map { ($0, try file.tensor($0)) })
        tensors["base_model.model.bert.encoder.layer.1.attention.self.query.lora_E"] = nil
        try SafeTensorsFile.write(tensors, to: broken.appendingPathComponent("adapter_model.safetensors").path)
        #expect(throws: ModelError.checkpointMismatch(missing: ["bert.encoder.layer.1.attention.self.query.lora_E"], unexpected: [], misshaped: [])) {
            try PEFTAdapter.load(directory: broken, into: try PretrainedModel.load(directory: ModelParityTests.directory("bert-cls")).module)
        }
    }

    /// A new LoRA on the tied output layer (GPT-2's lm_head): a no-op at attach, r·(C + V) parameters, only A and B get
    /// gradients (the shared table none), the input lookups are untouched, and merging is refused by name.
    @Test func freshOutputLayerLoRATrainsAloneAndRefusesToMerge() throws {
        let model = try LoRATests().gpt2()
        let ids = try IntTensor(shape: [1, 6], values: [5, 17, 42, 3, 8, 9])
        let base = try model.logits(ids).scalars
        let states = try model.transformer.hiddenStates(ids).scalars
        model.freeze()
        #expect(try model.addLoRA("task", LoRAConfig(rank: 2, alpha: 4, targets: ["lm_head"]), seed: 3) == ["lm_head"])
        expectClose(try model.logits(ids).scalars, base, atol: 1e-6, rtol: 1e-6, "B = 0: attaching changes nothing")
        #expect(model.trainableParameterCount == 2 * (30 + 97))
        model.lmHead.loras["task"]!.b.value = try Tensor.normal([97, 2], std: 0.5, seed: 8).requiringGradient()
        try model.loss(ids).backward()
        for (key, p) in model.namedParameters() { #expect((p.gradient != nil) == key.hasPrefix("lm_head.lora_"), "\(key)") }
        #expect(try model.logits(ids).scalars != base)
        #expect(try model.transformer.hiddenStates(ids).scalars == states, "the lookups read the table as before")
        #expect { try model.mergeLoRA() } throws: { "\($0)".contains("LoRA 'task' on the output layer cannot be merged") }
    }

    /// PEFT's P-tuning trains virtual tokens through an MLP and saves them folded (`prompt_embeddings`): loaded, it is
    /// prompt tuning with PEFT's logits.
    @Test(arguments: [("gpt2-ptuning", 4), ("bert-ptuning", 3)])
    func peftPTuningLoadsAsPromptTuning(adapter: String, tokens: Int) throws {
        let dir = LoRATests.adapter(adapter)
        #expect(try Checkpoint.readJSON(dir.appendingPathComponent("adapter_config.json"))["peft_type"] as? String == "P_TUNING")
        let loaded = try PretrainedModel.load(directory: ModelParityTests.directory(adapter.hasPrefix("gpt2") ? "gpt2-lm" : "bert-cls"))
        try PEFTAdapter.load(directory: dir, into: loaded.module)
        switch loaded {
        case let .gpt2LMHead(m): #expect(m.transformer.promptLength == tokens)
        case let .bertSequenceClassification(m): #expect(m.bert.promptLength == tokens)
        default: Issue.record("unexpected model type")
        }
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        expectClose(try LoRATests.fixtureLogits(loaded, io), try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "\(adapter) logits")
    }
}

struct AdapterFileTests {
    /// Loads a PEFT fixture, saves it with Reins, loads that into a fresh base: same logits, PEFT's key names, and a
    /// file of about 4 bytes per adapter parameter.
    @Test(arguments: [("gpt2-lora", "gpt2-lm", "CAUSAL_LM", [String]()), ("bert-lora", "bert-cls", "SEQ_CLS", ["classifier"]),
                      ("gpt2-dora", "gpt2-lm", "CAUSAL_LM", [String]()), ("bert-dora", "bert-cls", "SEQ_CLS", ["classifier"]),
                      ("gpt2-prefix", "gpt2-lm", "CAUSAL_LM", [String]()), ("bert-prefix", "bert-cls", "SEQ_CLS", ["classifier"]),
                      ("gpt2-ia3", "gpt2-lm", "CAUSAL_LM", [String]()), ("gpt2-prompt", "gpt2-lm", "CAUSAL_LM", [String]()),
                      ("bert-prompt", "bert-cls", "SEQ_CLS", ["classifier"]), ("gpt2-ptuning", "gpt2-lm", "CAUSAL_LM", [String]()),
                      ("bert-ptuning", "bert-cls", "SEQ_CLS", ["classifier"]), ("gpt2-lora-embedding", "gpt2-lm", "CAUSAL_LM", [String]()),
                      ("bert-lora-embedding", "bert-cls", "SEQ_CLS", ["classifier"]), ("bert-ia3", "bert-cls", "SEQ_CLS", ["classifier"]),
                      ("gpt2-prefix-projection", "gpt2-lm", "CAUSAL_LM", [String]()), ("bert-prefix-projection", "bert-cls", "SEQ_CLS", ["classifier"]),
                      ("gpt2-lora-lm-head", "gpt2-lm", "CAUSAL_LM", [String]())])
    func savedAdaptersRoundTripInPEFTLayout(adapter: String, base: String, task: String, heads: [String]) throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let first = try PretrainedModel.load(directory: ModelParityTests.directory(base)).module
        try PEFTAdapter.load(directory: LoRATests.adapter(adapter), into: first)
        try PEFTAdapter.save(first, to: dir, taskType: task, modulesToSave: heads)
        if let keep = ProcessInfo.processInfo.environment["REINS_SAVE_ADAPTERS"] { // for check_reins_adapters_in_peft.py
            try PEFTAdapter.save(first, to: URL(fileURLWithPath: keep).appendingPathComponent(adapter), taskType: task, modulesToSave: heads)
        }
        let second = try PretrainedModel.load(directory: ModelParityTests.directory(base))
        try PEFTAdapter.load(directory: dir, into: second.module)
        let io = try SafeTensorsFile(path: LoRATests.adapter(adapter).appendingPathComponent("expected.safetensors").path)
        let logits = try LoRATests.fixtureLogits(second, io)
        expectClose(logits, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "\(adapter) after save and load")
        let ours = try SafeTensorsFile(path: dir.appendingPathComponent("adapter_model.safetensors").path)
        let peft = try SafeTensorsFile(path: LoRATests.adapter(adapter).appendingPathComponent("adapter_model.safetensors").path)
        // PEFT also saves a targeted output layer's (unchanged) base weight, `lm_head.base_layer.weight`; Reins does not.
        #expect(Set(ours.names) == Set(peft.names.filter { !$0.hasSuffix("lm_head.base_layer.weight") }), "PEFT's key names")
        let parameters = ours.entries.values.map { $0.shape.reduce(1, *) }.reduce(0, +)
        let bytes = try FileManager.default.attributesOfItem(atPath: dir.appendingPathComponent("adapter_model.safetensors").path)[.size] as! Int
        #expect(bytes < 4 * parameters + 4096, "\(bytes) bytes for \(parameters) parameters")
    }
}

struct LoRAExtractionTests {
    func load() throws -> GPT2LMHeadModel {
        guard case let .gpt2LMHead(m) = try PretrainedModel.load(directory: ModelParityTests.directory("gpt2-lm")) else { throw ModelError.badInput("fixture") }
        return m
    }

    @Test func aRankTwoFineTuneIsRecoveredExactly() throws {
        let base = try load(), tuned = try load()
        // A fine-tune that moved two layers by exact rank-2 updates (in each layer's own storage layout).
        for (key, seed) in [("transformer.h.0.attn.c_attn", UInt64(1)), ("transformer.h.1.mlp.c_fc", UInt64(2))] {
            let layer = tuned.namedModules().first { $0.key == key }!.module as! Linear
            let u = try Tensor.normal([layer.outputs, 2], std: 0.3, seed: seed), v = try Tensor.normal([2, layer.inputs], std: 0.3, seed: seed + 10)
            let delta = try Tensor.matmul(u, v) // [out, in]
            let stored = layer.weightTransposed ? try delta.transposed() : delta
            layer.weight.value = try (layer.weight.value + stored).detached()
        }
        let ids = try IntTensor(shape: [1, 6], values: [5, 17, 42, 3, 8, 60])
        let report = try LoRAExtraction.extract(base: base, fineTuned: tuned, rank: 2)
        #expect(report.layers.map(\.key) == ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc"])
        #expect(report.layers.allSatisfy { abs($0.energyKept - 1) < 1e-6 })
        #expect(report.otherChangedParameters.isEmpty)
        expectClose(try base.logits(ids), try tuned.logits(ids), atol: 1e-4, rtol: 1e-4, "base + extracted LoRA = fine-tune")

        // Rank 1 keeps only part of the energy; a changed bias is reported as not carried by LoRA.
        let base1 = try load()
        (tuned.namedModules().first { $0.key == "transformer.h.0.ln_1" }!.module as! LayerNorm).bias.value = try Tensor.ones([30])
        let report1 = try LoRAExtraction.extract(base: base1, fineTuned: tuned, rank: 1)
        #expect(report1.layers.allSatisfy { $0.rank == 1 && $0.energyKept > 0.2 && $0.energyKept < 0.999 })
        #expect(report1.otherChangedParameters == ["transformer.h.0.ln_1.bias"])
        // Another architecture is refused, naming what does not fit.
        guard case let .gpt2LMHead(other) = try PretrainedModel.load(directory: ModelParityTests.directory("gpt2-variant")) else { return }
        #expect(throws: ModelError.self) { try LoRAExtraction.extract(base: try load(), fineTuned: other, rank: 2) }
    }
}

struct IA3Tests {
    @Test func peftIA3ReproducesPEFTLogitsStartsAsANoOpAndTrainsAlone() throws {
        guard case let .gpt2LMHead(model) = try PretrainedModel.load(directory: ModelParityTests.directory("gpt2-lm")) else { return }
        let ids = try IntTensor(shape: [1, 5], values: [5, 17, 42, 3, 8])
        let base = try model.logits(ids).scalars
        try PEFTAdapter.load(directory: LoRATests.adapter("gpt2-ia3"), into: model)
        let io = try SafeTensorsFile(path: LoRATests.adapter("gpt2-ia3").appendingPathComponent("expected.safetensors").path)
        expectClose(try model.logits(try io.intTensor("input_ids"), attentionMask: try io.intTensor("attention_mask")), try io.tensor("logits"),
                    atol: 1e-4, rtol: 1e-4, "GPT-2 + IA3 (c_attn output, mlp.c_proj input) logits")
        // A fresh IA3 adapter (vectors of ones) changes nothing; only its vectors train: 3C per c_attn + 4C per c_proj input.
        model.activateAdapter(nil)
        model.freeze()
        for (key, m) in model.namedModules() {
            guard let l = m as? Linear else { continue }
            if key.hasSuffix("attn.c_attn") { try l.attachIA3("fresh", IA3(size: l.outputs, scalesInput: false)) }
            if key.hasSuffix("mlp.c_proj") { try l.attachIA3("fresh", IA3(size: l.inputs, scalesInput: true)) }
        }
        expectClose(try model.logits(ids).scalars, base, atol: 1e-6, rtol: 1e-6, "ones: nothing changes")
        #expect(model.trainableParameterCount == 2 * (90 + 37))
        try model.loss(ids).backward()
        for (key, p) in model.namedParameters() { #expect((p.gradient != nil) == key.contains(".ia3_l.fresh"), "\(key)") }
        #expect(throws: ModelError.self) { try model.transformer.blocks[0].attentionIn.attachIA3("bad", IA3(size: 7, scalesInput: false)) }
    }
}

struct PromptTuningTests {
    @Test func peftPromptTuningReproducesPEFTLogitsAndTrainsAlone() throws {
        guard case let .gpt2LMHead(model) = try PretrainedModel.load(directory: ModelParityTests.directory("gpt2-lm")) else { return }
        let dir = LoRATests.adapter("gpt2-prompt")
        try PEFTAdapter.load(directory: dir, into: model)
        #expect(model.transformer.promptLength == 5)
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        let ids = try io.intTensor("input_ids"), mask = try io.intTensor("attention_mask")
        expectClose(try model.logits(ids, attentionMask: mask), try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "GPT-2 + prompt tuning logits [B, P + T, V]")
        // Generation with the prompt in the KV cache agrees with recomputing every step.
        let out = try model.generate(prompts: [[5, 17, 42]], options: GenerationOptions(maxNewTokens: 5))[0]
        let full = try model.logits(try IntTensor(shape: [1, out.count - 1], values: Array(out.dropLast())))
        let V = full.shape[2]
        for t in 2..<(out.count - 1) {
            let row = Array(full.scalars[((5 + t) * V)..<((6 + t) * V)])
            #expect(Int32(row.indices.max { row[$0] < row[$1] }!) == out[t + 1], "step \(t)")
        }
        model.freeze()
        model.transformer.prompt!.isTrainable = true
        #expect(model.trainableParameterCount == 5 * 30)
        try model.loss(ids, attentionMask: mask).backward()
        for (key, p) in model.namedParameters() { #expect((p.gradient != nil) == key.hasSuffix("prompt_tuning_embeddings"), "\(key)") }
    }
}

struct PrefixReparameterizationTests {
    @Test func theMLPTrainsAndIsFoldedIntoPlainPrefixesWhenSaved() throws {
        func load() throws -> GPT2LMHeadModel {
            guard case let .gpt2LMHead(m) = try PretrainedModel.load(directory: ModelParityTests.directory("gpt2-lm")) else { throw ModelError.badInput("fixture") }
            return m
        }
        let model = try load()
        model.freeze()
        let prefix = try Prefix(reparameterizedLength: 4, encoderHidden: 7, layers: 2, hidden: 30, heads: 3, seed: 5)
        try model.transformer.attach(prefix)
        let ids = try IntTensor(shape: [1, 5], values: [5, 17, 42, 3, 8])
        try model.loss(ids).backward()
        for (key, p) in model.namedParameters() { #expect((p.gradient != nil) == key.contains("prefix_encoder."), "\(key)") }
        let encoderCount: Int = 4 * 30 + (30 * 7 + 7) + (7 * 120 + 120)
        #expect(model.trainableParameterCount == encoderCount)
        let logits = try model.logits(ids)
        // Saved folded: plain PEFT prefix tuning, same logits in a fresh model.
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try PEFTAdapter.save(model, to: dir, taskType: "CAUSAL_LM")
        let fresh = try load()
        try AdapterFiles.load(directory: dir, into: fresh)
        expectClose(try fresh.logits(ids), logits, atol: 1e-5, rtol: 1e-5, "folded prefix after save and load")
        // Folding in place gives the same numbers and leaves P · layers · 2 · C parameters.
        try prefix.fold()
        #expect(prefix.encoder == nil)
        expectClose(try model.logits(ids), logits, atol: 1e-6, rtol: 1e-6, "folded in place")
        let adapterCount: Int = model.adapterNames.flatMap { model.parameters(ofAdapter: $0) }.map { $0.value.count }.reduce(0, +)
        #expect(adapterCount == 4 * 2 * 2 * 30)
    }
}
