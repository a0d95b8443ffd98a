import Foundation
import ReinsDemoData
import ReinsTensor
import ReinsTestSupport
import Testing
@testable import Reins

/// Models written as GGUF files (`reins quantize`): GPT-2, BERT and Llama-family models written in float32 read back
/// with transformers' outputs (the fixtures' own references); Llama's rotary rows and GPT-2's transposed weights land
/// where llama.cpp's converter puts them; tokenizers survive as llama.cpp metadata id for id; and the real MiniLM
/// frozen in 8-bit blocks embeds as the float model does and trains LoRA with the float route's gradients.
struct GGUFWriterTests {
    static func model(_ name: String) -> URL { Fixtures.model(name) }

    static func written(_ source: URL, type: GGMLType) throws -> (url: URL, written: GGUFModel.WrittenModel) {
        let loaded = try PretrainedModel.load(directory: source)
        let url = try temporaryDirectory().appendingPathComponent("model.gguf")
        let written = try GGUFModel.write(
            loaded.module, config: try Checkpoint.modelConfig(source), source: source, type: type, name: "test",
            to: url.path)
        return (url, written)
    }

    @Test("GPT-2, BERT and Qwen2 written in float32 read back with transformers' outputs")
    func floatRoundTrip() throws {
        // GPT-2: logits of the LM head, tied to the embedding.
        let gpt2IO = try SafeTensorsFile(path: Self.model("gpt2-lm").appendingPathComponent("io.safetensors").path)
        let gpt2 = try Self.written(Self.model("gpt2-lm"), type: .f32)
        #expect(gpt2.written.omitted.isEmpty && !gpt2.written.hasTokenizer)
        let file = try GGUFFile(path: gpt2.url.path)
        #expect(try file.info("blk.0.attn_qkv.weight").shape == [90, 30], "Conv1D weights are written [out, in]")
        #expect(try file.string("general.architecture") == "gpt2")
        guard case let .gpt2LMHead(lm) = try PretrainedModel.load(directory: gpt2.url) else {
            Issue.record("GPT-2 GGUF is not an LM head model"); return
        }
        let logits = try Autograd.withoutGradients {
            try lm.logits(gpt2IO.intTensor("input_ids"), attentionMask: gpt2IO.intTensor("attention_mask"))
        }
        expectClose(logits, try gpt2IO.tensor("logits"), atol: 1e-4, rtol: 1e-4, "GPT-2 logits")

        // BERT: hidden states with token types; a classifier's head is left out, named.
        let bertIO = try SafeTensorsFile(path: Self.model("bert-base").appendingPathComponent("io.safetensors").path)
        let bert = try Self.written(Self.model("bert-base"), type: .f32)
        guard case let .bert(b) = try PretrainedModel.load(directory: bert.url) else {
            Issue.record("BERT GGUF is not a BertModel"); return
        }
        let hidden = try Autograd.withoutGradients {
            try b.hiddenStates(
                bertIO.intTensor("input_ids"), attentionMask: bertIO.intTensor("attention_mask"),
                tokenTypeIDs: bertIO.intTensor("token_type_ids"))
        }
        expectClose(hidden, try bertIO.tensor("last_hidden_state"), atol: 1e-4, rtol: 1e-4, "BERT hidden states")
        #expect(try Self.written(Self.model("bert-cls"), type: .f32).written.omitted == ["classifier.bias", "classifier.weight"])

        // Qwen2: q/k/v biases, no rotary reordering for its architecture.
        let qwenIO = try SafeTensorsFile(path: Self.model("qwen2-tiny").appendingPathComponent("io.safetensors").path)
        let qwen = try Self.written(Self.model("qwen2-tiny"), type: .f32)
        guard case let .llamaCausalLM(q) = try PretrainedModel.load(directory: qwen.url) else {
            Issue.record("Qwen2 GGUF is not a causal LM"); return
        }
        let qLogits = try Autograd.withoutGradients {
            try q.logits(qwenIO.intTensor("input_ids"), attentionMask: qwenIO.intTensor("attention_mask"))
        }
        expectClose(qLogits, try qwenIO.tensor("logits"), atol: 1e-4, rtol: 1e-4, "Qwen2 logits")
    }

    @Test("A Llama GGUF rewritten in float32 keeps llama.cpp's rotary row order, its tokenizer and transformers' logits")
    func llamaRewrite() throws {
        let source = Fixtures.directory.appendingPathComponent("gguf/llama-tiny.gguf")
        let out = try Self.written(source, type: .f32)
        let original = try GGUFFile(path: source.path), rewritten = try GGUFFile(path: out.url.path)
        for name in ["blk.0.attn_q.weight", "blk.1.attn_k.weight"] {
            // Same layout as llama.cpp's converter wrote: the stored (dequantized) values equal the source's.
            #expect(try rewritten.tensor(name).scalars == original.tensor(name).scalars, "\(name)")
        }
        #expect(out.written.hasTokenizer)
        for key in original.metadataKeys where key.hasPrefix("tokenizer.") {
            #expect(rewritten.metadata[key] == original.metadata[key], "\(key)")
        }
        let io = try SafeTensorsFile(path: Fixtures.directory.appendingPathComponent("gguf/llama-tiny.safetensors").path)
        guard case let .llamaCausalLM(m) = try PretrainedModel.load(directory: out.url) else {
            Issue.record("not a causal LM"); return
        }
        let logits = try Autograd.withoutGradients {
            try m.logits(io.intTensor("input_ids"), attentionMask: io.intTensor("attention_mask"))
        }
        expectClose(logits, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "llama-tiny logits")
        // Quantized to Q8_0: its matrices in blocks (96 columns: whole blocks of 32), the logits near the float ones.
        let q8 = try Self.written(source, type: .q8_0)
        #expect(q8.written.quantizedCount == 15 && q8.written.fallbacks.isEmpty)
        guard case let .llamaCausalLM(mq) = try PretrainedModel.load(directory: q8.url, quantized: true) else {
            Issue.record("not a causal LM"); return
        }
        #expect(mq.holdsQuantizedWeights)
        mq.setQuantizedRoute(.exact)
        let qLogits = try Autograd.withoutGradients {
            try mq.logits(io.intTensor("input_ids"), attentionMask: io.intTensor("attention_mask"))
        }
        expectClose(qLogits, logits, atol: 0.05, rtol: 0.05, "Q8_0 logits against float32")
    }

    @Test(
        "Tokenizers written as llama.cpp metadata give the original ids",
        arguments: [("bpe", "gpt-2"), ("llama3", "llama-bpe"), ("smollm", "smollm"), ("qwen2", "qwen2"), ("wordpiece", "")])
    func tokenizerMetadata(name: String, pre: String) throws {
        let dir = Fixtures.directory.appendingPathComponent("tokenizers/\(name)")
        let entries = try GGUFModel.tokenizerMetadata(source: dir, config: [:])
        let header = GGUFFile(metadata: entries, path: "(metadata)")
        let original = try AnyTokenizer(file: tokenizerFile(in: dir)!)
        let rebuilt: AnyTokenizer
        if pre.isEmpty {
            #expect(header.metadata["tokenizer.ggml.model"]?.string == "bert")
            rebuilt = .wordPiece(try WordPieceTokenizer(gguf: header))
        } else {
            #expect(header.metadata["tokenizer.ggml.pre"]?.string == pre)
            rebuilt = .bpe(try BPETokenizer(gguf: header))
        }
        let texts = GGUFModel.probeTexts + [
            "The quick brown fox jumps over the lazy dog.", "unaffable ##ing [CLS] [MASK]", "   ", "",
            "Straße, ÉCOLE, 東京, 123abc!?", "<|im_start|>assistant\nok<|im_end|>",
        ]
        for text in texts {
            #expect(try rebuilt.encode(text) == original.encode(text), "\(name): \(text.debugDescription)")
        }
    }

    @Test("MiniLM in Q8_0: embeddings as the float model's, its tokenizer id for id, LoRA gradients as the float route's")
    func miniLMInEightBits() throws {
        let dir = try #require(PipModels.miniLM(), "MiniLM not found: run `bash .ci/install-deps`")
        let out = try Self.written(dir, type: .q8_0)
        #expect(out.written.quantizedCount == 38 && out.written.fallbacks.isEmpty)  // 6 × 6 linear, pooler, embeddings
        #expect(try GGUFFile(path: out.url.path).int("bert.pooling_type") == 1)  // sentence-transformers' mean pooling
        let texts = ["A man is playing a guitar.", "Quantized bases keep their blocks; adapters train beside them."]
        let original = try WordPieceTokenizer(tokenizerJSON: dir.appendingPathComponent("tokenizer.json").path)
        guard case let .wordPiece(tokenizer) = try AnyTokenizer(file: out.url.path) else {
            Issue.record("the GGUF's tokenizer is not WordPiece"); return
        }
        for t in texts { #expect(try tokenizer.encode(t).ids == original.encode(t).ids) }
        guard case let .bert(float) = try PretrainedModel.load(directory: dir),
            case let .bert(quantized) = try PretrainedModel.load(directory: out.url, quantized: true)
        else { Issue.record("not BertModels"); return }
        #expect(quantized.holdsQuantizedWeights)
        let a = try float.embed(texts, tokenizer: original, maxLength: 64)
        let b = try quantized.embed(texts, tokenizer: tokenizer, maxLength: 64)
        for (x, y) in zip(a, b) {
            let dot: Float = zip(x, y).map { $0 * $1 }.reduce(0, +)
            let nx: Float = x.map { $0 * $0 }.reduce(0, +).squareRoot(), ny: Float = y.map { $0 * $0 }.reduce(0, +).squareRoot()
            #expect(dot / (nx * ny) > 0.999, "cosine \(dot / (nx * ny))")
        }

        // Quantizing the loaded float model in memory gives the file's blocks: the same hidden states.
        let inMemory = try #require({ if case let .bert(m) = try PretrainedModel.load(directory: dir) { return m } else { return nil } }())
        #expect(try inMemory.quantizeWeights(.q8_0).count == 38)
        #expect(try inMemory.embed(texts, tokenizer: original, maxLength: 64) == b)

        // LoRA on the quantized base: gradients equal those on the same weights dequantized to float32.
        func gradients(quantized: Bool) throws -> [String: Tensor] {
            guard case let .bertSequenceClassification(m) = try PretrainedModel.load(
                directory: out.url, architecture: "BertForSequenceClassification", newlyInitialized: ["classifier"],
                configOverrides: ["num_labels": 3], quantized: quantized)
            else { throw ModelError.badInput("not a classifier") }
            #expect(m.holdsQuantizedWeights == quantized)
            _ = try m.addAdapter("task", .lora(LoRAConfig(rank: 4, alpha: 8, targets: ["query", "value"])), seed: 3)
            for (key, p) in m.namedParameters() where key.contains("lora_B") {
                p.replaceValue(try Tensor.normal(p.value.shape, std: 0.05, seed: 9))
            }
            let encoded = try tokenizer.encodeBatch(texts, options: .init(maxLength: 32))
            let ids = try IntTensor(shape: [2, encoded[0].ids.count], values: encoded.flatMap(\.ids))
            let mask = try IntTensor(shape: [2, encoded[0].ids.count], values: encoded.flatMap(\.attentionMask))
            try Tensor.crossEntropy(logits: m.logits(ids, attentionMask: mask), targets: IntTensor([0, 2])).backward()
            var grads: [String: Tensor] = [:]
            for (key, p) in m.namedParameters() where key.contains("lora_") { grads[key] = p.gradient }
            #expect(grads.count == 24)
            return grads
        }
        let q = try gradients(quantized: true), f = try gradients(quantized: false)
        #expect(Set(q.keys) == Set(f.keys))
        for (key, g) in q { expectClose(g, f[key]!, atol: 1e-5, rtol: 1e-3, key) }
    }

    @Test("Writing refuses what GGUF cannot hold, by name")
    func refusals() throws {
        let dir = Self.model("qwen2-tiny")
        let loaded = try PretrainedModel.load(directory: dir)
        let config = try Checkpoint.modelConfig(dir)
        let path = try temporaryDirectory().appendingPathComponent("x.gguf").path
        #expect(throws: ModelError.self) {
            try GGUFModel.write(loaded.module, config: config, source: dir, type: .q5_K, name: "x", to: path)
        }
        #expect(throws: ModelError.self) {  // llama3 rotary scaling needs a rope_freqs tensor
            let l = Self.model("llama-tiny")
            try GGUFModel.write(try PretrainedModel.load(directory: l).module, config: try Checkpoint.modelConfig(l),
                                source: l, type: .f32, name: "x", to: path)
        }
        #expect(throws: ModelError.self) {  // Mistral's sliding window
            let m = Self.model("mistral-tiny")
            try GGUFModel.write(try PretrainedModel.load(directory: m).module, config: try Checkpoint.modelConfig(m),
                                source: m, type: .f32, name: "x", to: path)
        }
        let quantized = try PretrainedModel.load(
            directory: Fixtures.directory.appendingPathComponent("gguf/llama-tiny.gguf"), quantized: true)
        #expect(throws: ModelError.self) {
            try GGUFModel.write(quantized.module, config: config, source: dir, type: .f32, name: "x", to: path)
        }
        #expect(!FileManager.default.fileExists(atPath: path))
    }
}
