import ArgumentParser
import Dispatch
import Foundation
import Reins

/// `reins info --model DIR`: the architecture, its sizes and parameter count.
struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info", abstract: "Describe a Hugging Face model directory.")

    @Option(help: "A model directory (config.json + model.safetensors, or pytorch_model.bin), or a .gguf file.")
    var model: String

    func run() throws {
        let start = DispatchTime.now().uptimeNanoseconds
        let loaded = try PretrainedModel.load(directory: URL(fileURLWithPath: model))
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
        let m = loaded.module
        switch loaded {
        case let .gpt2(x): print(gpt2Summary("GPT2Model", x.config))
        case let .gpt2LMHead(x): print(gpt2Summary("GPT2LMHeadModel", x.transformer.config))
        case let .gpt2SequenceClassification(x):
            print(gpt2Summary("GPT2ForSequenceClassification", x.transformer.config) + ", labels \(x.score.outputs)")
        case let .bert(x): print(bertSummary("BertModel", x.config))
        case let .bertMaskedLM(x): print(bertSummary("BertForMaskedLM", x.bert.config))
        case let .bertSequenceClassification(x):
            print(bertSummary("BertForSequenceClassification", x.bert.config) + ", labels \(x.classifier.outputs)")
        case let .bertTokenClassification(x):
            print(bertSummary("BertForTokenClassification", x.bert.config) + ", labels \(x.classifier.outputs)")
        case let .bertQuestionAnswering(x): print(bertSummary("BertForQuestionAnswering", x.bert.config))
        case let .llama(x): print(llamaSummary("LlamaModel", x.config))
        case let .llamaCausalLM(x):
            print(
                llamaSummary("LlamaForCausalLM", x.model.config)
                    + (x.model.config.tieWordEmbeddings ? ", output tied to the embeddings" : ", untied output layer"))
        case let .llamaSequenceClassification(x):
            print(llamaSummary("LlamaForSequenceClassification", x.model.config) + ", labels \(x.score.outputs)")
        }
        print(String(format: "loaded in %.1f ms", elapsed))
        print(
            "parameters: \(m.parameterCount) (\(String(format: "%.1f", Double(m.parameterCount) * 4 / 1_048_576)) MiB as float32), tensors: \(m.namedParameters().count)"
        )
    }

    func gpt2Summary(_ name: String, _ c: GPT2Config) -> String {
        "architecture: \(name) (GPT-2, causal, pre-LN)\nlayers \(c.layers), hidden \(c.hidden), heads \(c.heads) (head size \(c.hidden / c.heads)), feed-forward \(c.inner), vocabulary \(c.vocabularySize), positions \(c.positions)"
    }

    func llamaSummary(_ name: String, _ c: LlamaConfig) -> String {
        let attention =
            c.keyValueHeads == c.heads
            ? "\(c.heads) heads" : "\(c.heads) query heads, \(c.keyValueHeads) key/value heads (grouped-query)"
        let rope =
            "rotary θ \(c.ropeTheta)"
            + (c.ropeScaling.map { if case .linear = $0 { ", linear scaling" } else { ", llama3 scaling" } } ?? "")
        return
            "architecture: \(name) (\(c.modelType), causal, pre-RMSNorm, SwiGLU)\nlayers \(c.layers), hidden \(c.hidden), \(attention), head size \(c.headSize), feed-forward \(c.intermediate), vocabulary \(c.vocabularySize), positions \(c.positions), \(rope)"
            + (c.slidingWindow.map { ", sliding window \($0)" } ?? "") + (c.qkvBias ? ", q/k/v bias" : "")
    }

    func bertSummary(_ name: String, _ c: BertConfig) -> String {
        "architecture: \(name) (BERT, bidirectional, post-LN)\nlayers \(c.layers), hidden \(c.hidden), heads \(c.heads) (head size \(c.hidden / c.heads)), feed-forward \(c.intermediate), vocabulary \(c.vocabularySize), positions \(c.positions), token types \(c.typeCount)"
    }
}

/// `reins logits`: runs the head named by the config on a batch read from safetensors and writes the logits.
struct LogitsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logits",
        abstract:
            "Run a model's head on int32 input_ids [B, T] (optional attention_mask, token_type_ids) and write float32 logits.",
        discussion:
            "LM heads write logits [B, T, V]; classification heads [B, labels]; token classification [B, T, labels]; question answering start_logits and end_logits [B, T]; a bare model last_hidden_state [B, T, C]. With a prompt-tuning adapter, per-token outputs also cover its P virtual positions, first ([B, P + T, ...]), as PEFT returns them. This is how Reins is checked against the Python stack."
    )

    @Option(help: "A model directory (config.json + model.safetensors, or pytorch_model.bin), or a .gguf file.")
    var model: String
    @Option(help: "A safetensors file with int32 input_ids [B, T] and optional attention_mask and token_type_ids.")
    var inputs: String
    @Option(help: "Where to write the output safetensors file.")
    var output: String
    @Option(help: "A PEFT adapter directory (adapter_config.json + adapter_model.safetensors) to apply.")
    var adapter: String?

    func run() throws {
        // With an adapter, the head its task type needs (a SEQ_CLS adapter over a bare or masked-LM checkpoint, say).
        let loaded =
            try adapter.map {
                try PretrainedModel.load(directory: URL(fileURLWithPath: model), forAdapter: URL(fileURLWithPath: $0))
            }
            ?? PretrainedModel.load(directory: URL(fileURLWithPath: model))
        if let adapter { try AdapterFiles.load(directory: URL(fileURLWithPath: adapter), into: loaded.module) }
        let file = try SafeTensorsFile(path: inputs)
        let ids = try file.intTensor("input_ids")
        let mask = try file.entries["attention_mask"].map { _ in try file.intTensor("attention_mask") }
        let types = try file.entries["token_type_ids"].map { _ in try file.intTensor("token_type_ids") }
        var outputs: [String: Tensor] = [:]
        // A batch the model cannot take is a problem of the inputs file: name it.
        try naming(inputs) {
            try Autograd.withoutGradients {
                switch loaded {
                case let .gpt2(m):
                    outputs["last_hidden_state"] = try m.hiddenStates(ids, attentionMask: mask, tokenTypeIDs: types)
                case let .gpt2LMHead(m): outputs["logits"] = try m.logits(ids, attentionMask: mask, tokenTypeIDs: types)
                case let .gpt2SequenceClassification(m):
                    outputs["logits"] = try m.logits(ids, attentionMask: mask, tokenTypeIDs: types)
                case let .bert(m):
                    outputs["last_hidden_state"] = try m.hiddenStates(ids, attentionMask: mask, tokenTypeIDs: types)
                case let .bertMaskedLM(m):
                    outputs["logits"] = try m.logits(ids, attentionMask: mask, tokenTypeIDs: types)
                case let .bertSequenceClassification(m):
                    outputs["logits"] = try m.logits(ids, attentionMask: mask, tokenTypeIDs: types)
                case let .bertTokenClassification(m):
                    outputs["logits"] = try m.logits(
                        ids, attentionMask: mask, tokenTypeIDs: types, includingPrompt: true)
                case let .bertQuestionAnswering(m):
                    let (start, end) = try m.logits(
                        ids, attentionMask: mask, tokenTypeIDs: types, includingPrompt: true)
                    outputs["start_logits"] = start
                    outputs["end_logits"] = end
                case let .llama(m): outputs["last_hidden_state"] = try m.hiddenStates(ids, attentionMask: mask)
                case let .llamaCausalLM(m): outputs["logits"] = try m.logits(ids, attentionMask: mask)
                case let .llamaSequenceClassification(m): outputs["logits"] = try m.logits(ids, attentionMask: mask)
                }
            }
        }
        try SafeTensorsFile.write(outputs, to: output)
    }
}

/// `reins tokenize`: one text per line on standard input, one JSON array of ids per line on standard output.
struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "Encode lines of standard input as JSON arrays of token ids.",
        discussion:
            "The tokenizer file is a vocab.txt (WordPiece, adds [CLS]/[SEP]), a vocab.json with merges.txt beside it (GPT-2 byte-level BPE), a tokenizer.json of either kind, or a GGUF model file (its byte-level BPE tokenizer)."
    )

    @Option(help: "vocab.txt, vocab.json (with merges.txt beside it), tokenizer.json or a model .gguf file.")
    var tokenizer: String

    func run() throws {
        let tok = try naming(tokenizer) { try AnyTokenizer(file: tokenizer) }
        while let line = readLine(strippingNewline: true) {
            print("[" + (try tok.encode(line)).map(String.init).joined(separator: ", ") + "]")
        }
    }
}

/// `reins generate`: continue a prompt with a causal language model.
struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Continue a prompt with a causal language model: GPT-2 or a Llama-family decoder (KV cache).")

    @Option(help: "A GPT2LMHeadModel or Llama/Qwen2/Mistral ForCausalLM directory, or a Llama/Qwen2 .gguf file.")
    var model: String
    @Option(help: "The prompt text (needs tokenizer files in the model directory).") var prompt: String?
    @Option(help: "The prompt as comma-separated token ids, e.g. 5,17,42.") var promptIds: String?
    @Option(help: "How many tokens to add.") var maxNewTokens: Int = 20
    @Flag(help: "Pick the most likely token each step (the default unless --temperature, --top-k or --top-p is given).")
    var greedy = false
    @Option(help: "Sampling temperature.") var temperature: Float?
    @Option(help: "Sample among the k most likely tokens.") var topK: Int?
    @Option(help: "Sample from the smallest set of tokens whose probability reaches p.") var topP: Float?
    @Option(help: "Penalise tokens already present (1 = off).") var repetitionPenalty: Float = 1
    @Option(help: "Sampling seed.") var seed: UInt64 = 0
    @Option(help: "Stop after this token id (default: <|endoftext|> when the tokenizer has one).") var stopId: [Int32] =
        []
    @Flag(help: "Print the JSON array of all ids (prompt included) as the last line.") var printIds = false
    @Option(help: "A PEFT adapter directory to apply.") var adapter: String?
    @Flag(
        help:
            "Treat --prompt as a user message: format it with the model's chat template (tokenizer_config.json) and print only the answer."
    ) var chat = false
    @Option(help: "With --chat: a system message first.") var system: String?

    @Flag(
        help:
            "For a GGUF model: compute with the dequantized weights in float32 (the reference; default: integer dot products against 8-bit activations when decoding)."
    ) var exact = false

    func validate() throws {
        guard maxNewTokens >= 0 else {
            throw ValidationError("--max-new-tokens must not be negative, got \(maxNewTokens)")
        }
        try validateSampling(
            topK: topK, topP: topP, temperature: temperature, repetitionPenalty: repetitionPenalty)
    }

    func run() throws {
        let dir = URL(fileURLWithPath: model)
        let lm = try loadCausalLanguageModel(dir, exact: exact)
        if let adapter { try AdapterFiles.load(directory: URL(fileURLWithPath: adapter), into: lm) }
        if chat { return try runChat(lm, dir) }
        let tokenizer = try tokenizerFile(in: dir).map { try AnyTokenizer(file: $0) }
        let ids: [Int32]
        if let promptIds {
            ids = try promptIds.split(separator: ",").map { s in
                guard let v = Int32(s.trimmingCharacters(in: .whitespaces)) else {
                    throw ValidationError("'\(s)' in --prompt-ids is not an integer")
                }
                return v
            }
        } else if let prompt {
            guard let tokenizer else {
                throw ValidationError(
                    "--prompt needs tokenizer files (tokenizer.json or vocab.json + merges.txt) in \(model); use --prompt-ids"
                )
            }
            ids = try tokenizer.encode(prompt)
        } else {
            throw ValidationError("give --prompt or --prompt-ids")
        }
        var stops = Set(stopId)
        if stops.isEmpty, let llama = lm as? LlamaForCausalLM { stops.formUnion(llama.model.config.eosTokenIDs.map(Int32.init)) }
        if stops.isEmpty, case let .bpe(t)? = tokenizer, let eot = t.endOfText { stops.insert(eot) }
        let sampling = !greedy && (temperature != nil || topK != nil || topP != nil)
        let options = GenerationOptions(
            maxNewTokens: maxNewTokens, greedy: !sampling, temperature: temperature ?? 1, topK: topK, topP: topP,
            repetitionPenalty: repetitionPenalty, seed: seed, stopTokens: stops,
            padID: lm.padTokenID.map(Int32.init) ?? 0)
        let out = try lm.generate(prompts: [ids], options: options)[0]
        if let tokenizer { print(tokenizer.decode(out)) }
        if printIds || tokenizer == nil { print("[" + out.map(String.init).joined(separator: ", ") + "]") }
    }

    var sampling: GenerationOptions {
        let sample = !greedy && (temperature != nil || topK != nil || topP != nil)
        return GenerationOptions(
            maxNewTokens: maxNewTokens, greedy: !sample, temperature: temperature ?? 1, topK: topK, topP: topP,
            repetitionPenalty: repetitionPenalty, seed: seed)
    }

    /// `--chat`: one user turn through the chat template; the answer alone is printed.
    func runChat(_ lm: any CausalLanguageModel, _ dir: URL) throws {
        guard let prompt, promptIds == nil else { throw ValidationError("--chat takes --prompt (text), not --prompt-ids") }
        let format = try naming(dir.appendingPathComponent("tokenizer_config.json").path) { try ChatFormat(directory: dir) }
        let messages = (system.map { [ChatTemplate.Message(role: "system", content: $0)] } ?? []) + [
            .init(role: "user", content: prompt)
        ]
        let ids = try format.prompt(messages)
        var options = sampling
        options.stopTokens = format.stopTokens.union(stopId)
        options.padID = lm.padTokenID.map(Int32.init) ?? 0
        let out = try lm.generate(prompts: [ids], options: options)[0]
        let answer = out.dropFirst(ids.count).filter { !options.stopTokens.contains($0) }
        print(format.tokenizer.decode(Array(answer)))
        if printIds { print("[" + out.map(String.init).joined(separator: ", ") + "]") }
    }
}

/// `reins chat`: talk to an instruction model (with an adapter, if given), the answer streamed as it is generated.
struct ChatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat",
        abstract: "Chat with a causal language model through its chat template, streaming each answer.",
        discussion:
            "Reads one user message per line of standard input (an empty line or end of input ends the chat); the conversation so far is the context of each answer."
    )

    @Option(help: "A Llama-family (or GPT-2) model directory with tokenizer.json and a chat template, or a .gguf file.")
    var model: String
    @Option(help: "A PEFT adapter directory to apply.") var adapter: String?
    @Option(help: "A system message first.") var system: String?
    @Option(help: "The most tokens per answer.") var maxNewTokens: Int = 256
    @Option(help: "Sampling temperature (default: greedy).") var temperature: Float?
    @Option(help: "Sample among the k most likely tokens.") var topK: Int?
    @Option(help: "Sample from the smallest set of tokens whose probability reaches p.") var topP: Float?
    @Option(help: "Penalise tokens already present (1 = off).") var repetitionPenalty: Float = 1
    @Option(help: "Sampling seed.") var seed: UInt64 = 0

    @Flag(
        help:
            "For a GGUF model: compute with the dequantized weights in float32 (the reference; default: integer dot products against 8-bit activations when decoding)."
    ) var exact = false

    func validate() throws {
        guard maxNewTokens > 0 else { throw ValidationError("--max-new-tokens must be positive, got \(maxNewTokens)") }
        try validateSampling(
            topK: topK, topP: topP, temperature: temperature, repetitionPenalty: repetitionPenalty)
    }

    func run() throws {
        let dir = URL(fileURLWithPath: model)
        let lm = try loadCausalLanguageModel(dir, exact: exact)
        if let adapter { try AdapterFiles.load(directory: URL(fileURLWithPath: adapter), into: lm) }
        let format = try naming(dir.appendingPathComponent("tokenizer_config.json").path) { try ChatFormat(directory: dir) }
        let sample = temperature != nil || topK != nil || topP != nil
        let options = GenerationOptions(
            maxNewTokens: maxNewTokens, greedy: !sample, temperature: temperature ?? 1, topK: topK, topP: topP,
            repetitionPenalty: repetitionPenalty, seed: seed, stopTokens: format.stopTokens,
            padID: lm.padTokenID.map(Int32.init) ?? 0)
        var messages = system.map { [ChatTemplate.Message(role: "system", content: $0)] } ?? []
        while let line = readLine(strippingNewline: true), !line.trimmingCharacters(in: .whitespaces).isEmpty {
            messages.append(.init(role: "user", content: line))
            let ids = try format.prompt(messages)
            var answer: [Int32] = [], shown = ""
            _ = try lm.generate(prompts: [ids], options: options) { _, token in
                guard !format.stopTokens.contains(token) else { return }
                answer.append(token)
                // Print what is new once it decodes whole (a character may span tokens).
                let text = format.tokenizer.decode(answer)
                if !text.hasSuffix("\u{FFFD}"), text.count > shown.count, text.hasPrefix(shown) {
                    print(text.dropFirst(shown.count), terminator: "")
                    fflush(nil)
                    shown = text
                }
            }
            let text = format.tokenizer.decode(answer)
            print(text.dropFirst(shown.hasPrefix(text) ? text.count : shown.count))
            messages.append(.init(role: "assistant", content: text))
        }
    }
}

/// `reins fill-mask`: the most likely tokens for each [MASK].
struct FillMaskCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fill-mask", abstract: "Predict the tokens behind each [MASK] with a BERT masked-LM model.")

    @Option(help: "A BertForMaskedLM directory with vocab.txt or tokenizer.json.") var model: String
    @Option(help: "Candidates per mask.") var topK: Int = 5
    @Argument(help: "Text containing [MASK].") var text: String
    @Option(help: "A PEFT adapter directory to apply.") var adapter: String?

    func validate() throws {
        guard topK >= 1 else { throw ValidationError("--top-k must be at least 1, got \(topK)") }
    }

    func run() throws {
        let dir = URL(fileURLWithPath: model)
        guard case let .bertMaskedLM(m) = try PretrainedModel.load(directory: dir, architecture: "BertForMaskedLM")
        else { return }
        if let adapter { try AdapterFiles.load(directory: URL(fileURLWithPath: adapter), into: m) }
        guard let file = tokenizerFile(in: dir), case let .wordPiece(tok) = try AnyTokenizer(file: file) else {
            throw ValidationError("no WordPiece tokenizer (vocab.txt or tokenizer.json) in \(model)")
        }
        for (i, predictions) in try m.fillMask(text, tokenizer: tok, topK: topK).enumerated() {
            print("mask \(i + 1):")
            for p in predictions { print(String(format: "  %-20@ %.4f", p.token as NSString, p.probability)) }
        }
    }
}

/// `reins embed`: sentence embeddings, one JSON array per input line.
struct EmbedCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "embed", abstract: "Mean-pooled, L2-normalised sentence embeddings of lines of standard input.")

    @Option(help: "A BERT model directory with vocab.txt or tokenizer.json.") var model: String
    @Option(help: "Truncate texts to this many tokens.") var maxLength: Int = 256
    @Option(help: "Texts per forward pass.") var batchSize: Int = 32
    @Option(help: "A PEFT adapter directory to apply.") var adapter: String?

    func validate() throws {
        guard maxLength > 0, batchSize > 0 else {
            throw ValidationError("--max-length and --batch-size must be positive, got \(maxLength) and \(batchSize)")
        }
    }

    func run() throws {
        let dir = URL(fileURLWithPath: model)
        guard case let .bert(m) = try PretrainedModel.load(directory: dir, architecture: "BertModel") else { return }
        if let adapter { try AdapterFiles.load(directory: URL(fileURLWithPath: adapter), into: m) }
        guard let file = tokenizerFile(in: dir), case let .wordPiece(tok) = try AnyTokenizer(file: file) else {
            throw ValidationError("no WordPiece tokenizer (vocab.txt or tokenizer.json) in \(model)")
        }
        var lines: [String] = []
        func flush() throws {
            for e in try m.embed(lines, tokenizer: tok, maxLength: maxLength) {
                print("[" + e.map { String(format: "%.7g", $0) }.joined(separator: ", ") + "]")
            }
            lines.removeAll()
        }
        while let line = readLine(strippingNewline: true) {
            lines.append(line)
            if lines.count == batchSize { try flush() }
        }
        try flush()
    }
}

/// The causal language model in a directory: GPT-2's LM head model, or a Llama-family `ForCausalLM`.
/// A GPT-2 or Llama-family causal LM. A GGUF file's quantized weights stay in their blocks; `exact` computes their
/// products in float32 from the dequantized weights (else integer dot products when decoding); `dequantized` holds
/// them as float32 instead (trainable).
func loadCausalLanguageModel(_ dir: URL, exact: Bool = false, dequantized: Bool = false) throws
    -> any CausalLanguageModel
{
    let config = try Checkpoint.modelConfig(dir)
    let families = ["llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"]
    if let family = families[config["model_type"] as? String ?? ""] {
        guard
            case let .llamaCausalLM(m) = try PretrainedModel.load(
                directory: dir, architecture: "\(family)ForCausalLM", quantized: !dequantized)
        else { throw ValidationError("\(dir.path) is not a causal language model") }
        if exact { m.setQuantizedRoute(.exact) }
        return m
    } else {
        guard case let .gpt2LMHead(m) = try PretrainedModel.load(directory: dir, architecture: "GPT2LMHeadModel") else {
            throw ValidationError("\(dir.path) is not a causal language model")
        }
        return m
    }
}

/// The sampling options `generate` and `chat` share, checked the same way.
func validateSampling(topK: Int?, topP: Float?, temperature: Float?, repetitionPenalty: Float) throws {
    if let topK, topK < 1 { throw ValidationError("--top-k must be at least 1, got \(topK)") }
    if let topP, !(topP > 0 && topP <= 1) { throw ValidationError("--top-p must be in (0, 1], got \(topP)") }
    if let temperature, !(temperature.isFinite && temperature > 0) {
        throw ValidationError("--temperature must be positive, got \(temperature)")
    }
    guard repetitionPenalty.isFinite, repetitionPenalty > 0 else {
        throw ValidationError("--repetition-penalty must be positive, got \(repetitionPenalty)")
    }
}

/// `reins quantize`: a model written as a GGUF file in a block type, for llama.cpp or as a frozen quantized base.
struct QuantizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quantize",
        abstract: "Write a GPT-2, BERT or Llama-family model as a GGUF file with its weight matrices in a block type.",
        discussion: """
            Token embeddings and linear layers are written in --type; norms, biases, position and token-type \
            embeddings stay float32. A matrix whose rows are not whole blocks of the type falls back to q8_0 (f16 if not \
            whole blocks of 32 either). Task \
            heads (a classifier) have no place in GGUF's architectures and are left out: the file is the base, for \
            `reins train --model FILE.gguf` (adapters over the frozen quantized base) or llama.cpp. With --adapter, \
            a LoRA adapter is merged into the base first.
            """)

    @Option(help: "A model directory or .gguf file (read in float32).") var model: String
    @Option(help: "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k or q6_k.") var type: String
    @Option(help: "The .gguf file to write.") var output: String
    @Option(help: "A LoRA adapter directory to merge into the base before writing.") var adapter: String?
    @Option(help: "general.name in the file (default: the model's directory name).") var name: String?

    func run() throws {
        guard let ggml = GGMLType(writableName: type) else {
            throw ValidationError(
                "--type \(type) is not one Reins writes: \(GGMLType.writable.map { "\($0)".lowercased() }.joined(separator: ", "))")
        }
        guard output.hasSuffix(".gguf") else { throw ValidationError("--output must name a .gguf file") }
        let dir = URL(fileURLWithPath: model)
        let start = DispatchTime.now().uptimeNanoseconds
        let loaded = try PretrainedModel.load(directory: dir)
        if let adapter { _ = try mergeLoRA(from: adapter, into: loaded.module) }
        let written = try GGUFModel.write(
            loaded.module, config: try Checkpoint.modelConfig(dir), source: dir, type: ggml,
            name: name ?? dir.deletingPathExtension().lastPathComponent, to: output)
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        print(
            "wrote \(output): \(written.tensorCount) tensors, "
                + (ggml.isQuantized ? "\(written.quantizedCount) in \(ggml) blocks, " : "")
                + String(format: "%.1f MB in %.1f s", Double(written.bytes) / 1e6, seconds))
        for (tensor, type) in written.fallbacks.sorted(by: { $0.key < $1.key }) {
            print("  \(tensor): \(type) (its rows are not whole \(ggml) blocks)")
        }
        if !written.hasTokenizer {
            print("no tokenizer files beside the model: the file has no tokenizer (llama.cpp needs one; Reins takes --tokenizer)")
        }
        if !written.omitted.isEmpty {
            print("left out (no place in a GGUF base): \(written.omitted.joined(separator: ", "))")
        }
    }
}
