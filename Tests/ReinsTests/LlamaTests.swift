import Foundation
import Testing
import ReinsTensor
import ReinsTestSupport
@testable import Reins

/// Llama-family decoders against transformers (make_llama_fixtures.py): tiny Llama (grouped-query attention, untied
/// output, llama3 rope scaling), Qwen2 (q/k/v biases, tied output, one key/value head) and Mistral (sliding window,
/// linear rope scaling): logits of a left-padded batch, the causal-LM loss and every parameter's gradient on a
/// right-padded batch, and greedy generation of a left-padded batch with the KV cache.
struct LlamaTests {
    static func io(_ name: String) throws -> SafeTensorsFile {
        try SafeTensorsFile(path: Fixtures.model(name).appendingPathComponent("io.safetensors").path)
    }

    static func causalLM(_ name: String) throws -> LlamaForCausalLM {
        guard case let .llamaCausalLM(m) = try PretrainedModel.load(directory: Fixtures.model(name)) else {
            throw ModelError.badInput("\(name) did not load as a causal LM")
        }
        return m
    }

    @Test(arguments: ["llama-tiny", "qwen2-tiny", "mistral-tiny"])
    func logitsLossGradientsAndGenerationMatchTransformers(name: String) throws {
        let model = try Self.causalLM(name)
        let io = try Self.io(name)
        let logits = try Autograd.withoutGradients {
            try model.logits(io.intTensor("input_ids"), attentionMask: io.intTensor("attention_mask"))
        }
        expectClose(logits, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "\(name) logits")

        // The loss on a right-padded batch (labels -100 on padding) and the gradient of every parameter.
        let ids = try io.intTensor("train_ids"), mask = try io.intTensor("train_mask")
        let labels = try IntTensor(
            shape: ids.shape, values: zip(ids.values, mask.values).map { $1 == 0 ? -100 : $0 })
        let loss = try model.loss(ids, labels: labels, attentionMask: mask)
        #expect(abs(try loss.item - io.tensor("loss").scalars[0]) < 1e-5, "\(name) loss")
        try loss.backward()
        let grads = io.names.filter { $0.hasPrefix("grad.") }
        let keys = model.allParameterKeys()
        #expect(grads.count == Set(keys.map { ObjectIdentifier($0.parameter) }).count, "\(name): every parameter")
        for g in grads {
            let key = String(g.dropFirst("grad.".count))
            guard let p = keys.first(where: { $0.key == key })?.parameter, let gradient = p.gradient else {
                Issue.record("\(name): no gradient for \(key)"); continue
            }
            expectClose(gradient, try io.tensor(g), atol: 1e-5, rtol: 1e-3, "\(name) ∂/∂\(key)")
        }

        // Greedy continuation of a left-padded batch: transformers' ids.
        let generated = try io.intTensor("generated"), prompts = try io.intTensor("prompts")
        let P = prompts.shape[1], total = generated.shape[1]
        let rows = (0..<prompts.shape[0]).map { b in prompts.values[(b * P)..<((b + 1) * P)].filter { $0 >= 0 } }
        let out = try model.generate(
            prompts: rows.map(Array.init),
            options: GenerationOptions(maxNewTokens: total - P, padID: Int32(model.model.config.padTokenID ?? 0)))
        for (b, row) in out.enumerated() {
            let expected = generated.values[(b * total)..<((b + 1) * total)].suffix(total - P)
            #expect(Array(row.suffix(total - P)) == Array(expected), "\(name) row \(b) greedy ids")
        }
    }

    @Test func sequenceClassificationReadsTheLastNonPadToken() throws {
        guard case let .llamaSequenceClassification(m) = try PretrainedModel.load(directory: Fixtures.model("llama-cls"))
        else { Issue.record("llama-cls did not load as a classifier"); return }
        let io = try Self.io("llama-cls")
        let logits = try Autograd.withoutGradients {
            try m.logits(io.intTensor("input_ids"), attentionMask: io.intTensor("attention_mask"))
        }
        expectClose(logits, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "llama-cls logits")
    }

    /// The incremental path (prompt, then one token at a time through the cache) equals one full pass.
    @Test func cachedDecodingEqualsOneFullPass() throws {
        let model = try Self.causalLM("mistral-tiny")  // the sliding window must hold across the cache too
        let ids: [Int32] = [5, 17, 42, 3, 8, 60, 11, 9]
        try Autograd.withoutGradients {
            let full = try model.logits(IntTensor(shape: [1, 8], values: ids))
            let cache = KVCache(layers: model.layerCount)
            var steps = [try model.logits(IntTensor(shape: [1, 5], values: Array(ids[0..<5])), cache: cache)]
            for t in 5..<8 {
                steps.append(
                    try model.logits(
                        IntTensor(shape: [1, 1], values: [ids[t]]), positionIDs: IntTensor(shape: [1, 1], values: [Int32(t)]),
                        cache: cache))
            }
            expectClose(try Tensor.concatenate(steps, axis: 1), full, atol: 1e-5, rtol: 1e-4, "cached vs full")
        }
    }

    /// A cache filled by a batch of 2 is refused by name for a batch of 1 (it would have been copied into storage of
    /// the other shape), and the cache is left as it was.
    @Test func aCacheOfAnotherBatchIsRefused() throws {
        let model = try Self.causalLM("llama-tiny")
        try Autograd.withoutGradients {
            let cache = KVCache(layers: model.layerCount)
            _ = try model.logits(IntTensor(shape: [2, 3], values: [5, 17, 42, 3, 8, 60]), cache: cache)
            #expect(cache.length == 3)
            #expect { try model.logits(IntTensor(shape: [1, 1], values: [9]), cache: cache) } throws: {
                "\($0)".contains("cannot take keys")
            }
            #expect(cache.length == 3)
        }
    }
}

/// PEFT adapters on a Llama (make_llama_fixtures.py): LoRA on every linear layer (PEFT's q_proj ... down_proj names),
/// DoRA, IA3 with PEFT's Llama defaults, prefix tuning with grouped-query heads (the prefix has the key/value heads'
/// width, as PEFT builds it) and prompt tuning: PEFT's logits on a left-padded batch, its loss and its gradients.
struct LlamaAdapterTests {
    @Test(arguments: ["llama-lora", "llama-dora", "llama-ia3", "llama-prefix", "llama-prompt"])
    func peftAdaptersOnLlamaMatchPEFT(adapter: String) throws {
        let dir = Fixtures.directory.appendingPathComponent("adapters/\(adapter)")
        let model = try LlamaTests.causalLM("llama-tiny")
        model.freeze()
        try AdapterFiles.load(directory: dir, into: model)
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("io.safetensors").path)
        let logits = try Autograd.withoutGradients {
            try model.logits(io.intTensor("input_ids"), attentionMask: io.intTensor("attention_mask"))
        }
        expectClose(logits, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "\(adapter) logits")
        // Saved again by Reins, it loads back to the same logits (check_reins_adapters_in_peft.py loads these saves in
        // PEFT when REINS_SAVE_ADAPTERS names a directory).
        let name = try #require(model.activeAdapterName)
        let keep = ProcessInfo.processInfo.environment["REINS_SAVE_ADAPTERS"].map { URL(fileURLWithPath: $0) }
        let saved = try (keep ?? temporaryDirectory()).appendingPathComponent(adapter)
        try model.saveAdapter(name, to: saved)
        let again = try LlamaTests.causalLM("llama-tiny")
        try AdapterFiles.load(directory: saved, into: again)
        expectClose(
            try Autograd.withoutGradients {
                try again.logits(io.intTensor("input_ids"), attentionMask: io.intTensor("attention_mask"))
            }, logits, atol: 1e-6, rtol: 1e-6, "\(adapter) saved by Reins and loaded again")

        let ids = try io.intTensor("train_ids"), mask = try io.intTensor("train_mask")
        let labels = try IntTensor(shape: ids.shape, values: zip(ids.values, mask.values).map { $1 == 0 ? -100 : $0 })
        let loss = try model.loss(ids, labels: labels, attentionMask: mask)
        #expect(abs(try loss.item - io.tensor("loss").scalars[0]) < 1e-5, "\(adapter) loss")
        try loss.backward()
        let expected = io.names.filter { $0.hasPrefix("grad.") }.sorted()
        let trained = model.namedParameters().filter(\.parameter.isTrainable)
        #expect(trained.count == expected.count, "\(adapter): \(trained.map(\.key)) vs \(expected)")
        for (key, p) in trained {
            // PEFT's key for a tuner tensor is the model's path under base_model.model (a DoRA magnitude is a module
            // there, with a `.weight`); virtual tokens have one tensor.
            let name =
                expected.count == 1
                ? expected[0]
                : "grad.base_model.model." + key + (key.hasSuffix("lora_magnitude_vector.default") ? ".weight" : "")
            guard expected.contains(name), let g = p.gradient else {
                Issue.record("\(adapter): \(key) has no PEFT gradient to compare (\(name))"); continue
            }
            let want = try io.tensor(name)
            expectClose(g, try want.reshaped(g.shape), atol: 1e-5, rtol: 1e-3, "\(adapter) ∂/∂\(key)")
        }
    }
}

/// Every adapter method at every Llama insertion point (q/k/v/o, gate/up/down, embeddings, tied and untied output
/// layers, after attention, after the FFN, parallel, key/value prefix with grouped-query heads, input prompt, biases):
/// each trains alone on a causal-LM task, leaves the base untouched, and saves and loads to the same logits.
struct LlamaAdapterMethodTests {
    static let everyLinear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    static func methods(tied: Bool) -> [(String, AdapterMethod)] {
        var m: [(String, AdapterMethod)] = [
            ("houlsby", .houlsby(bottleneck: 4)), ("pfeiffer", .pfeiffer(bottleneck: 5)),
            ("adapterbias", .adapterBias), ("parallel", .parallel(bottleneck: 3)), ("prefix", .prefix(length: 2)),
            ("prefix-mlp", .prefix(length: 3, projection: 7)), ("prompt", .promptTuning(length: 3)),
            ("lora", .lora(LoRAConfig(rank: 2, alpha: 4, targets: everyLinear))),
            ("lora-defaults", .lora(LoRAConfig(rank: 3, alpha: 6, targets: []))),
            ("dora", .lora(LoRAConfig(rank: 2, alpha: 4, targets: ["o_proj", "up_proj"], dora: true))),
            ("lora-embedding-head", .lora(LoRAConfig(rank: 2, alpha: 4, targets: ["embed_tokens", "lm_head"]))),
            ("ia3", .ia3()), ("loha", .loha(LoHaConfig(rank: 2, alpha: 4, targets: ["q_proj", "down_proj"]))),
        ]
        if tied { m.append(("bitfit", .bitFit)) }  // Qwen2's q/k/v biases
        return m
    }

    @Test(arguments: ["llama-tiny", "qwen2-tiny"])
    func everyMethodTrainsAloneSavesAndLoads(base: String) throws {
        let model = try LlamaTests.causalLM(base)
        let ids = try IntTensor(shape: [2, 5], values: [2, 14, 15, 16, 3, 0, 0, 50, 51, 3])
        let mask = try IntTensor(shape: [2, 5], values: [1, 1, 1, 1, 1, 0, 0, 1, 1, 1])
        let baseLogits = try model.logits(ids, attentionMask: mask).scalars
        let baseWeights = model.namedParameters().map { ($0.key, $0.parameter.value.scalars) }
        let sequences = (0..<8).map { i in TokenSequence(ids: (0..<(4 + i % 3)).map { Int32(3 + (i * 7 + $0 * 5) % 90) }) }
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        var trained: [String: [Float]] = [:]
        let methods = Self.methods(tied: base.hasPrefix("qwen2"))
        for (i, (name, method)) in methods.enumerated() {
            let config: AdapterMethod
            if case let .lora(c) = method, c.targets.isEmpty {
                config = .lora(LoRAConfig(rank: c.rank, alpha: c.alpha, targets: try model.defaultLoRATargets()))
            } else {
                config = method
            }
            try model.addAdapter(name, config, seed: UInt64(i + 1))
            let trainable = Set(model.trainableParameters.map { ObjectIdentifier($0) })
            #expect(!trainable.isEmpty, "\(name) trains something")
            let task = try CausalLMTask(model: model, train: sequences, evaluation: [], padID: 0)
            try Trainer(task: task, options: TrainingOptions(steps: 2, batchSize: 4, learningRate: 0.05)).run()
            for (key, p) in model.namedParameters() where !trainable.contains(ObjectIdentifier(p)) {
                #expect(p.gradient == nil, "\(name): \(key) got a gradient")
            }
            let logits = try model.logits(ids, attentionMask: mask)
            trained[name] = logits.scalars
            #expect(trained[name] != baseLogits, "\(name) changed the model")
            try model.saveAdapter(name, to: dir.appendingPathComponent(name))
        }
        model.activateAdapter(nil)
        for (key, before) in baseWeights {
            #expect(model.namedParameters().first { $0.key == key }?.parameter.value.scalars == before, "base \(key)")
        }
        expectClose(try model.logits(ids, attentionMask: mask).scalars, baseLogits, atol: 1e-6, rtol: 0, "base")
        let fresh = try LlamaTests.causalLM(base)
        for (name, _) in methods {
            try fresh.loadAdapter(name, from: dir.appendingPathComponent(name))
            fresh.activateAdapter(name)
            expectClose(
                try fresh.logits(ids, attentionMask: mask).scalars, trained[name]!, atol: 1e-5, rtol: 1e-4,
                "\(base) \(name) loaded on a fresh base")
        }
    }
}

/// Gradient checkpointing recomputes each layer in backward: the loss and every gradient equal those without it —
/// with LoRA dropout in training mode too (the recomputation replays the same masks) — on a float and a quantized base.
struct GradientCheckpointingTests {
    func lossAndGradients(_ model: LlamaForCausalLM, checkpointing: Bool) throws -> (Float, [String: [Float]]) {
        model.model.gradientCheckpointing = checkpointing
        model.zeroGradients()
        let ids = try IntTensor(shape: [2, 6], values: [5, 17, 42, 3, 8, 60, 11, 9, 4, 77, 12, 30])
        let loss = try TrainingMode.run(seed: 9) { try model.loss(ids) }
        try loss.backward()
        var grads: [String: [Float]] = [:]
        for (key, p) in model.namedParameters() where p.value.requiresGradient {
            if let g = p.gradient { grads[key] = g.scalars }
        }
        return (try loss.item, grads)
    }

    @Test(arguments: [false, true])
    func checkpointedGradientsEqualTheUsualOnes(quantized: Bool) throws {
        let model: LlamaForCausalLM
        if quantized {
            model = try QuantizedBaseTests.quantized("llama-tiny")
        } else {
            model = try LlamaTests.causalLM("llama-tiny")
        }
        model.freeze()
        try model.addLoRA("task", LoRAConfig(rank: 2, alpha: 4, targets: ["q_proj", "v_proj", "down_proj"], dropout: 0.2))
        let (plainLoss, plain) = try lossAndGradients(model, checkpointing: false)
        let (checkLoss, checked) = try lossAndGradients(model, checkpointing: true)
        // Equal up to float rounding: the recomputed forward may take BLAS paths of other alignments (under
        // ThreadSanitizer the losses once differed in their last bit, 6.3081 against 6.3080997).
        #expect(abs(plainLoss - checkLoss) <= 1e-6 * abs(plainLoss), "\(plainLoss) vs \(checkLoss)")
        #expect(!plain.isEmpty && plain.keys.sorted() == checked.keys.sorted())
        for (key, g) in plain { expectClose(checked[key] ?? [], g, atol: 1e-6, rtol: 1e-5, "\(key)") }
    }
}

/// Classification and question-answering adapters served on the causal model of their decoder
/// (``AdapterFiles/loadSettingHeadAside(directory:into:name:)``): PEFT's `SEQ_CLS` LoRA and prefix tuning, `TOKEN_CLS`
/// IA3 and `QUESTION_ANS` LoRA (trained on `LlamaForQuestionAnswering`, whose decoder sits under `transformer.`) give
/// PEFT's logits on the sequences of a right-padded batch, alone and side by side with each other in one model.
struct AdapterTaskHeadTests {
    static let adapters: [(name: String, task: AdapterTaskHead.Task, labels: Int)] = [
        ("llama-seqcls-lora", .sequenceClassification, 3), ("llama-seqcls-prefix", .sequenceClassification, 4),
        ("llama-tokcls-ia3", .tokenClassification, 5), ("llama-qa-lora", .questionAnswering, 2),
    ]

    /// The batch's sequences (its real tokens) and PEFT's logits for each: `[labels]` or `[tokens, labels]`.
    static func expected(_ adapter: String, task: AdapterTaskHead.Task) throws -> ([[Int32]], [Tensor]) {
        let io = try SafeTensorsFile(
            path: Fixtures.directory.appendingPathComponent("adapters/\(adapter)/io.safetensors").path)
        let ids = try io.intTensor("input_ids"), mask = try io.intTensor("attention_mask")
        let (B, T) = (ids.shape[0], ids.shape[1])
        let sequences = (0..<B).map { b in (0..<T).filter { mask.values[b * T + $0] == 1 }.map { ids.values[b * T + $0] } }
        let logits: [Tensor] = try (0..<B).map { b in
            let n = sequences[b].count
            switch task {
            case .sequenceClassification:
                let l = try io.tensor("logits")
                return try l.slice(axis: 0, b..<(b + 1)).reshaped([l.shape[1]])
            case .tokenClassification:
                let l = try io.tensor("logits")
                return try l.slice(axis: 0, b..<(b + 1)).slice(axis: 1, 0..<n).reshaped([n, l.shape[2]])
            case .questionAnswering:
                let s = try io.tensor("start_logits").slice(axis: 0, b..<(b + 1)).slice(axis: 1, 0..<n)
                let e = try io.tensor("end_logits").slice(axis: 0, b..<(b + 1)).slice(axis: 1, 0..<n)
                return try Tensor.concatenate([s.reshaped([n, 1]), e.reshaped([n, 1])], axis: 1)
            }
        }
        return (sequences, logits)
    }

    @Test func headsSetAsideOnACausalBaseGivePEFTsLogits() throws {
        let model = try LlamaTests.causalLM("llama-tiny")
        model.freeze()
        var heads: [String: AdapterTaskHead] = [:]
        for a in Self.adapters {
            let dir = Fixtures.directory.appendingPathComponent("adapters/\(a.name)")
            let head = try #require(try AdapterFiles.loadSettingHeadAside(directory: dir, into: model, name: a.name))
            #expect(head.task == a.task && head.layer.outputs == a.labels, "\(a.name)")
            heads[a.name] = head
        }
        model.activateAdapter(nil)
        try model.foldPrefixes()
        for a in Self.adapters {
            let (sequences, want) = try Self.expected(a.name, task: a.task)
            let got = try heads[a.name]!.logits(model, sequences, adapter: a.name)
            #expect(got.count == want.count)
            for (b, (g, w)) in zip(got, want).enumerated() {
                expectClose(g, w, atol: 2e-4, rtol: 1e-4, "\(a.name) row \(b)")
            }
        }
        // Every adapter's sequences in one pass, interleaved (each row its adapter and head): the same logits.
        var rows: [(ids: [Int32], adapter: String?, head: AdapterTaskHead)] = [], wanted: [Tensor] = []
        let expectations = try Self.adapters.map { try Self.expected($0.name, task: $0.task) }
        for b in 0..<3 {
            for (a, (sequences, logits)) in zip(Self.adapters, expectations) {
                rows.append((sequences[b], a.name, heads[a.name]!))
                wanted.append(logits[b])
            }
        }
        let mixed = try AdapterTaskHead.logits(model, rows: rows)
        #expect(mixed.count == wanted.count)
        for (i, (g, w)) in zip(mixed, wanted).enumerated() {
            expectClose(g, w, atol: 2e-4, rtol: 1e-4, "mixed row \(i) (\(rows[i].adapter ?? "base"))")
        }
        // The base with no adapter routed gives other logits (the adapters' layers are not merged into it).
        let (sequences, want) = try Self.expected("llama-seqcls-lora", task: .sequenceClassification)
        let bare = try heads["llama-seqcls-lora"]!.logits(model, sequences, adapter: nil)
        #expect(zip(bare[0].scalars, want[0].scalars).map { abs($0 - $1) }.max() ?? 0 > 1e-3)
    }

    @Test func headsThatDoNotFitAreNamedErrors() throws {
        let model = try LlamaTests.causalLM("llama-tiny")
        let dir = try temporaryDirectory().appendingPathComponent("bad")
        let source = Fixtures.directory.appendingPathComponent("adapters/llama-seqcls-lora")
        try FileManager.default.copyItem(at: source, to: dir)
        // A task type that takes no head.
        var config = try Checkpoint.readJSON(dir.appendingPathComponent("adapter_config.json"))
        config["task_type"] = "CAUSAL_LM"
        try JSONSerialization.data(withJSONObject: config).write(to: dir.appendingPathComponent("adapter_config.json"))
        #expect(throws: ModelError.self) { try AdapterFiles.loadSettingHeadAside(directory: dir, into: model, name: "x") }
        #expect(!model.adapterNames.contains("x"), "a refused adapter leaves nothing behind")
        // Label names that do not match the head.
        config["task_type"] = "SEQ_CLS"
        try JSONSerialization.data(withJSONObject: config).write(to: dir.appendingPathComponent("adapter_config.json"))
        try JSONSerialization.data(withJSONObject: ["a", "b"]).write(to: dir.appendingPathComponent("labels.json"))
        #expect(throws: ModelError.self) { try AdapterFiles.loadSettingHeadAside(directory: dir, into: model, name: "y") }
        #expect(!model.adapterNames.contains("y"))
        try JSONSerialization.data(withJSONObject: ["a", "b", "c"]).write(to: dir.appendingPathComponent("labels.json"))
        let head = try #require(try AdapterFiles.loadSettingHeadAside(directory: dir, into: model, name: "z"))
        #expect(head.labels == ["a", "b", "c"])
        #expect(throws: ModelError.self) { try head.logits(model, [[3, 4], []], adapter: "z") }
        #expect(throws: ModelError.self) { try head.logits(model, [], adapter: "z") }
        #expect(throws: (any Error).self) { try head.logits(model, [[3, 1000]], adapter: "z") }
        // Without the set-aside load, the plain one refuses a head the model has no place for.
        #expect(throws: ModelError.self) { try AdapterFiles.load(directory: source, into: model, name: "w") }
    }
}
