import Foundation
import ReinsTensor

extension BPETokenizer {
    /// The pre-tokenizer regexes llama.cpp names in `tokenizer.ggml.pre`, as each model's own `tokenizer.json` spells
    /// its pipeline (the same splits llama.cpp applies).
    static let llama3Pattern =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let qwen2Pattern =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// The `tokenizer.json` normalizer and pre-tokenizer for a `tokenizer.ggml.pre` name, or nil for one Reins does not
    /// know.
    static func pipelineJSON(pre: String) -> [String: Any]? {
        let byteLevelRegex: [String: Any] = ["type": "ByteLevel", "add_prefix_space": false, "use_regex": true]
        let byteLevelOnly: [String: Any] = ["type": "ByteLevel", "add_prefix_space": false, "use_regex": false]
        func split(_ pattern: String) -> [String: Any] {
            ["type": "Split", "pattern": ["Regex": pattern], "behavior": "Isolated", "invert": false]
        }
        switch pre {
        case "gpt-2", "default":
            return ["pre_tokenizer": byteLevelRegex]
        case "smollm":
            return [
                "pre_tokenizer": [
                    "type": "Sequence",
                    "pretokenizers": [["type": "Digits", "individual_digits": true] as [String: Any], byteLevelRegex],
                ] as [String: Any]
            ]
        case "llama-bpe", "llama3":
            return ["pre_tokenizer": ["type": "Sequence", "pretokenizers": [split(llama3Pattern), byteLevelOnly]] as [String: Any]]
        case "qwen2":
            return [
                "normalizer": ["type": "NFC"],
                "pre_tokenizer": ["type": "Sequence", "pretokenizers": [split(qwen2Pattern), byteLevelOnly]] as [String: Any],
            ]
        default:
            return nil
        }
    }

    /// The byte-level BPE tokenizer a GGUF file carries (`tokenizer.ggml.model` `gpt2`): its tokens, merges, the
    /// pre-tokenizer named by `tokenizer.ggml.pre`, control and user-defined tokens matched whole, and the BOS (EOS)
    /// token added when `tokenizer.ggml.add_bos_token` (`add_eos_token`) says so.
    /// - Throws: ``GGUFError`` for missing or mistyped metadata, ``TokenizerError`` for a tokenizer model or
    ///   pre-tokenizer Reins does not read (named), or an inconsistent vocabulary.
    public convenience init(gguf file: GGUFFile) throws {
        let model = try file.string("tokenizer.ggml.model")
        guard model == "gpt2" else {
            throw TokenizerError.malformed(
                path: file.path, line: nil,
                detail:
                    "tokenizer.ggml.model '\(model)' is not supported (Reins reads byte-level BPE, 'gpt2'; SentencePiece 'llama' vocabularies are not)"
            )
        }
        let tokens = try file.strings("tokenizer.ggml.tokens")
        let mergeTexts = try file.strings("tokenizer.ggml.merges")
        let types = file.metadata["tokenizer.ggml.token_type"] == nil ? [] : try file.ints("tokenizer.ggml.token_type")
        guard types.isEmpty || types.count == tokens.count else {
            throw TokenizerError.malformed(
                path: file.path, line: nil,
                detail: "tokenizer.ggml.token_type has \(types.count) entries for \(tokens.count) tokens")
        }
        let pre = file.metadata["tokenizer.ggml.pre"]?.string ?? "default"
        guard var json = BPETokenizer.pipelineJSON(pre: pre) else {
            throw TokenizerError.malformed(
                path: file.path, line: nil,
                detail:
                    "tokenizer.ggml.pre '\(pre)' is not supported (Reins knows gpt-2, default, smollm, llama-bpe, qwen2)")
        }
        var vocab: [String: Any] = [:]
        for (i, t) in tokens.enumerated() { vocab[t] = NSNumber(value: i) }
        let merges = try mergeTexts.enumerated().map { (i, m) -> (String, String) in
            let parts = m.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2 else {
                throw TokenizerError.malformed(
                    path: file.path, line: nil, detail: "tokenizer.ggml.merges entry \(i) is not two symbols")
            }
            return (String(parts[0]), String(parts[1]))
        }
        // Control (3) and user-defined (4) tokens are matched whole in text, as added tokens are.
        let specials = types.isEmpty ? [] : tokens.indices.filter { types[$0] == 3 || types[$0] == 4 }.map { tokens[$0] }
        func token(_ key: String) throws -> String? {
            guard let v = file.metadata[key] else { return nil }
            guard let id = v.int, id >= 0, id < tokens.count else {
                throw TokenizerError.malformed(
                    path: file.path, line: nil, detail: "\(key) is \(v), not a token id below \(tokens.count)")
            }
            return tokens[id]
        }
        var single: [[String: Any]] = []
        if file.metadata["tokenizer.ggml.add_bos_token"]?.bool == true, let bos = try token("tokenizer.ggml.bos_token_id") {
            single.append(["SpecialToken": ["id": bos]])
        }
        single.append(["Sequence": ["id": "A"]])
        if file.metadata["tokenizer.ggml.add_eos_token"]?.bool == true, let eos = try token("tokenizer.ggml.eos_token_id") {
            single.append(["SpecialToken": ["id": eos]])
        }
        if single.count > 1 { json["post_processor"] = ["type": "TemplateProcessing", "single": single] }
        try self.init(
            vocab: vocab, merges: merges, specials: specials, source: file.path,
            pipeline: TextPipeline(tokenizerJSON: json, path: file.path), ignoreMerges: pre == "llama-bpe" || pre == "llama3",
            unknownToken: try token("tokenizer.ggml.unknown_token_id"))
    }
}

extension ChatFormat {
    /// The chat format a GGUF file carries: its tokenizer, `tokenizer.chat_template`, and its BOS/EOS tokens (the EOS
    /// and end-of-turn tokens stop generation).
    /// - Throws: as ``BPETokenizer/init(gguf:)``; ``TokenizerError`` when the file has no chat template;
    ///   ``ChatTemplateError`` for a template Reins cannot run.
    public init(gguf file: GGUFFile) throws {
        let tokenizer = try BPETokenizer(gguf: file)
        guard let source = file.metadata["tokenizer.chat_template"]?.string else {
            throw TokenizerError.malformed(path: file.path, line: nil, detail: "no tokenizer.chat_template in its metadata")
        }
        var variables: [String: ChatValue] = [:], stops: Set<Int32> = []
        for (key, name) in [
            ("tokenizer.ggml.bos_token_id", "bos_token"), ("tokenizer.ggml.eos_token_id", "eos_token"),
            ("tokenizer.ggml.padding_token_id", "pad_token"), ("tokenizer.ggml.unknown_token_id", "unk_token"),
        ] {
            if let id = file.metadata[key]?.int, id >= 0, id < tokenizer.tokens.count {
                variables[name] = .string(tokenizer.tokens[id])
                if name == "eos_token" { stops.insert(Int32(id)) }
            }
        }
        if let eot = file.metadata["tokenizer.ggml.eot_token_id"]?.int, eot >= 0, eot < tokenizer.tokens.count {
            stops.insert(Int32(eot))
        }
        self.init(tokenizer: tokenizer, template: try ChatTemplate(source), variables: variables, stopTokens: stops)
    }
}
