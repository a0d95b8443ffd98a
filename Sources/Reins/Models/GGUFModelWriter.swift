import Foundation
import ReinsTensor

extension GGUFModel {
    /// What ``write(_:config:source:type:name:to:)`` wrote.
    public struct WrittenModel: Sendable {
        /// Tensors written, and how many of them in a block type.
        public let tensorCount: Int, quantizedCount: Int
        /// Matrices written in another type than asked because their rows are not whole blocks of it (GGUF name:
        /// type), as llama.cpp's quantizer falls back.
        public let fallbacks: [String: GGMLType]
        /// Model parameters a GGUF file of the architecture has no place for (task heads): left out.
        public let omitted: [String]
        /// The file's size.
        public let bytes: Int
        /// Whether the file carries a tokenizer (the source had one): llama.cpp needs it, Reins can take `--tokenizer`.
        public let hasTokenizer: Bool
    }

    /// A config size as GGUF's uint32, refused by name when it does not fit.
    static func u32(_ value: Int) throws -> GGUFValue {
        guard let v = UInt32(exactly: value) else {
            throw ModelError.badInput("a size of \(value) does not fit GGUF's 32-bit metadata")
        }
        return .uint32(v)
    }

    /// The `general.file_type` llama.cpp records for a file mostly of `type`.
    static func fileType(_ type: GGMLType) -> UInt32 {
        switch type {
        case .f32: return 0
        case .f16: return 1
        case .q4_0: return 2
        case .q4_1: return 3
        case .q8_0: return 7
        case .q5_0: return 8
        case .q5_1: return 9
        case .q4_K: return 15
        case .q6_K: return 18
        case .bf16: return 32
        default: return 0
        }
    }

    /// Writes the float32 base of `model` (a GPT-2, BERT or Llama-family model, as loaded from `source`) as a GGUF
    /// model file llama.cpp reads: its architecture's metadata (`gpt2.*`, `bert.*`, `llama.*`, `qwen2.*`), the
    /// tokenizer (`tokenizer.ggml.*`, from `source`'s tokenizer files or, for a GGUF source, its own), the chat
    /// template, and every weight matrix in `type` (token embeddings and linear layers; norms, biases, position and
    /// token-type embeddings stay float32). Llama's query and key rows are written in llama.cpp's rotary order,
    /// GPT-2's `Conv1D` weights as `[out, in]`. Task heads (a classifier, BERT's masked-LM head) have no place in
    /// these architectures and are left out (``WrittenModel/omitted``). The file is written atomically.
    /// - Throws: ``ModelError/badInput(_:)`` for a type Reins does not write, a model holding quantized weights (load
    ///   it dequantized) or an option these architectures cannot express; ``ModelError/badConfig(path:detail:)`` for
    ///   another model type; ``TokenizerError`` for a tokenizer llama.cpp's metadata cannot describe.
    @discardableResult
    public static func write(
        _ model: any Module, config: [String: Any], source: URL, type: GGMLType, name: String, to path: String
    ) throws -> WrittenModel {
        guard GGMLType.writable.contains(type) else {
            throw ModelError.badInput(
                "Reins writes \(GGMLType.writable.map { "\($0)".lowercased() }.joined(separator: ", ")), not \(type)")
        }
        guard !model.holdsQuantizedWeights else {
            throw ModelError.badInput("the model holds quantized weights; load it dequantized (float32) to write it")
        }
        let modelType = config["model_type"] as? String ?? ""
        var metadata: [(String, GGUFValue)] = [
            ("general.type", .string("model")), ("general.name", .string(name)),
            ("general.file_type", .uint32(fileType(type))), ("general.quantization_version", .uint32(2)),
        ]
        let arch: String, layers: Int
        switch modelType {
        case "gpt2":
            let c = try GPT2Config(json: config, path: source.path)
            guard c.activation.name == "gelu_new", c.scaleAttentionWeights, !c.scaleAttentionByLayer else {
                throw ModelError.badInput(
                    "llama.cpp's gpt2 architecture has GELU (tanh), attention scaled by 1/√head size and nothing else; this model's config differs")
            }
            (arch, layers) = ("gpt2", c.layers)
            metadata += [
                ("gpt2.context_length", try u32(c.positions)), ("gpt2.embedding_length", try u32(c.hidden)),
                ("gpt2.feed_forward_length", try u32(c.inner)), ("gpt2.block_count", try u32(c.layers)),
                ("gpt2.attention.head_count", try u32(c.heads)),
                ("gpt2.attention.layer_norm_epsilon", .float32(c.layerNormEpsilon)),
            ]
        case "bert":
            let c = try BertConfig(json: config, path: source.path)
            guard c.activation.name == "gelu" else {
                throw ModelError.badInput("llama.cpp's bert architecture has exact GELU; this model's is \(c.activation.name)")
            }
            (arch, layers) = ("bert", c.layers)
            metadata += [
                ("bert.context_length", try u32(c.positions)), ("bert.embedding_length", try u32(c.hidden)),
                ("bert.feed_forward_length", try u32(c.intermediate)), ("bert.block_count", try u32(c.layers)),
                ("bert.attention.head_count", try u32(c.heads)),
                ("bert.attention.layer_norm_epsilon", .float32(c.layerNormEpsilon)), ("bert.attention.causal", .bool(false)),
                // llama.cpp's pooling types: 1 mean (sentence-transformers models), 2 the first token (BERT's [CLS]).
                ("bert.pooling_type", .uint32(meanPooled(source) ? 1 : 2)),
                ("tokenizer.ggml.token_type_count", try u32(c.typeCount)),
            ]
        case "llama", "mistral", "qwen2":
            let c = try LlamaConfig(json: config, path: source.path)
            if let window = c.slidingWindow, window < c.positions {
                throw ModelError.badInput("a sliding attention window (\(window)) has no llama.cpp llama metadata; not written")
            }
            arch = modelType == "qwen2" ? "qwen2" : "llama"
            layers = c.layers
            func key(_ k: String) -> String { "\(arch).\(k)" }
            metadata += [
                (key("context_length"), try u32(c.positions)), (key("embedding_length"), try u32(c.hidden)),
                (key("feed_forward_length"), try u32(c.intermediate)), (key("block_count"), try u32(c.layers)),
                (key("attention.head_count"), try u32(c.heads)),
                (key("attention.head_count_kv"), try u32(c.keyValueHeads)),
                (key("attention.layer_norm_rms_epsilon"), .float32(c.rmsNormEpsilon)),
                (key("rope.freq_base"), .float32(c.ropeTheta)), (key("rope.dimension_count"), try u32(c.headSize)),
                (key("vocab_size"), try u32(c.vocabularySize)),
            ]
            if c.headSize * c.heads != c.hidden {
                metadata += [(key("attention.key_length"), try u32(c.headSize)),
                             (key("attention.value_length"), try u32(c.headSize))]
            }
            switch c.ropeScaling {
            case nil: break
            case let .linear(factor)?:
                metadata += [(key("rope.scaling.type"), .string("linear")), (key("rope.scaling.factor"), .float32(factor))]
            case .llama3?:
                throw ModelError.badInput("llama3 rotary scaling needs per-frequency factors (rope_freqs.weight), which Reins does not write")
            }
        default:
            throw ModelError.badConfig(
                path: source.path, detail: "GGUF models are written for gpt2, bert, llama, mistral and qwen2, not '\(modelType)'")
        }
        metadata.insert(("general.architecture", .string(arch)), at: 0)
        let tokenizer = try tokenizerMetadata(source: source, config: config)
        metadata += tokenizer

        let table = tensorNames(arch: arch, layers: layers)
        let gguf = Dictionary(table.map { ($0.key, $0.gguf) }, uniquingKeysWith: { a, _ in a })
        let basePrefix = ["gpt2": "transformer.", "bert": "bert."][arch] ?? ""
        let heads = config["num_attention_heads"] as? Int ?? 0
        let kvHeads = config["num_key_value_heads"] as? Int ?? heads
        var tensors: [GGUFWriter.EncodedTensor] = [], omitted: [String] = [], fallbacks: [String: GGMLType] = [:]
        var quantized = 0
        let owned = Set(model.adapterNames.flatMap { model.parameters(ofAdapter: $0) }.map(ObjectIdentifier.init))
        try model.withBareBase {
            var seen = Set<ObjectIdentifier>()
            for (key, p) in model.namedParameters() where !owned.contains(ObjectIdentifier(p)) {
                guard seen.insert(ObjectIdentifier(p)).inserted else { continue }  // a tied weight once
                let bare = !basePrefix.isEmpty && key.hasPrefix(basePrefix) ? String(key.dropFirst(basePrefix.count)) : key
                guard let name = gguf[bare] else { omitted.append(key); continue }
                var t = p.value.detached()
                if isTransposedInGGUF(arch: arch, key: bare) { t = try t.transposed() }
                if families[arch]?.permutesQK == true, bare.contains(".self_attn.q_proj.") || bare.contains(".self_attn.k_proj.") {
                    t = try rotaryRowsToGGUF(t, heads: bare.contains(".q_proj.") ? heads : kvHeads, name: key)
                }
                var tensorType = GGMLType.f32
                let isEmbedding = name.hasPrefix("position_embd.") || name.hasPrefix("token_types.")
                if t.rank == 2 && !isEmbedding && type != .f32 {
                    tensorType = type
                    if t.shape[1] % (type.blockElements ?? 1) != 0 {
                        tensorType = t.shape[1] % 32 == 0 ? .q8_0 : .f16
                        fallbacks[name] = tensorType
                    }
                }
                if tensorType.isQuantized { quantized += 1 }
                let bytes = try t.withUnsafeBufferPointer { try tensorType.encode($0) }
                tensors.append(.init(name: name, shape: t.shape, type: tensorType, bytes: bytes))
            }
        }
        // The architecture table's order (weights, then biases; blocks by index), whatever order the model's
        // parameters come in: the same file from the same weights.
        let order = Dictionary(table.enumerated().map { ($0.element.gguf, $0.offset) }, uniquingKeysWith: { a, _ in a })
        tensors.sort { (order[$0.name] ?? 0) < (order[$1.name] ?? 0) }
        try GGUFWriter.write(metadata: metadata, encoded: tensors, to: path)
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        return WrittenModel(
            tensorCount: tensors.count, quantizedCount: quantized, fallbacks: fallbacks, omitted: omitted.sorted(),
            bytes: size, hasTokenizer: !tokenizer.isEmpty)
    }

    /// Rows of a query or key projection (weight `[out, in]` or bias `[out]`) from Hugging Face's rotary layout to
    /// llama.cpp's (``rotaryStoredRows(rows:heads:)``).
    static func rotaryRowsToGGUF(_ t: Tensor, heads: Int, name: String) throws -> Tensor {
        let rows = t.shape[0], columns = t.rank > 1 ? t.shape[1] : 1
        guard let order = rotaryStoredRows(rows: rows, heads: heads) else {
            throw ModelError.badInput("'\(name)' has \(rows) rows, not whole pairs for \(heads) heads")
        }
        return try Tensor(shape: t.shape, values: movingRotaryRows(t.scalars, columns: columns, stored: order, toStored: true))
    }

    /// Whether a model directory is a sentence-transformers model pooled by the mean of its tokens.
    static func meanPooled(_ source: URL) -> Bool {
        let url = source.appendingPathComponent("1_Pooling/config.json")
        return (try? Checkpoint.readJSON(url))?["pooling_mode_mean_tokens"] as? Bool ?? false
    }
}

// MARK: - Tokenizers as GGUF metadata

extension GGUFModel {
    /// Texts on which a tokenizer rebuilt from GGUF metadata must give the original's ids: how the pre-tokenizer
    /// llama.cpp should apply is identified (digits, contractions, accents, CJK, emoji, whitespace runs, specials).
    static let probeTexts = [
        "Hello world", "  leading and trailing spaces  ", "digits 2024 and 3.14159 and 1,000,000",
        "accents: café naïve Ångström", "CJK: 日本語のテキスト 中文", "emoji: 🦙🔥 ok", "tabs\tand\nnewlines\n\n\nend",
        "it's we're they'll I'd DON'T", "x123456789 12345", "a\r\nb\u{00A0}c", "mixed<|endoftext|>specials",
    ]

    /// The `tokenizer.*` metadata for the model at `source` (none when it has no tokenizer files): copied from a GGUF
    /// source; else built from its tokenizer files (WordPiece as llama.cpp's `bert` vocabulary, byte-level BPE as `gpt2` with the pre-tokenizer
    /// whose ids match the original's on ``probeTexts``), special token ids, and the chat template of
    /// `tokenizer_config.json`.
    static func tokenizerMetadata(source: URL, config: [String: Any]) throws -> [(String, GGUFValue)] {
        if isGGUF(source.path) {
            let file = try GGUFFile(path: source.path)
            return file.metadataKeys.filter { $0.hasPrefix("tokenizer.") }.map { ($0, file.metadata[$0]!) }
        }
        guard let path = tokenizerFile(in: source) else { return [] }
        let tokenizerConfig = (try? Checkpoint.readJSON(source.appendingPathComponent("tokenizer_config.json"))) ?? [:]
        var entries: [(String, GGUFValue)]
        switch try AnyTokenizer(file: path) {
        case let .wordPiece(t):
            entries = wordPieceMetadata(t)
        case let .bpe(t):
            entries = try bpeMetadata(t, tokenizerConfig: tokenizerConfig, config: config, path: path)
        }
        if let template = tokenizerConfig["chat_template"] as? String {
            entries.append(("tokenizer.chat_template", .string(template)))
        }
        return entries
    }

    /// llama.cpp's spelling of a WordPiece vocabulary: a word's first piece gets "▁" in front, a continuation loses
    /// its "##", bracketed specials stay as they are.
    static func wordPieceMetadata(_ t: WordPieceTokenizer) -> [(String, GGUFValue)] {
        func bracketed(_ s: String) -> Bool { s.count > 2 && s.hasPrefix("[") && s.hasSuffix("]") }
        let tokens = t.tokens.map { s in bracketed(s) ? s : s.hasPrefix("##") ? String(s.dropFirst(2)) : "\u{2581}" + s }
        var entries: [(String, GGUFValue)] = [
            ("tokenizer.ggml.model", .string("bert")),
            ("tokenizer.ggml.tokens", .array(tokens.map { .string($0) })),
            ("tokenizer.ggml.token_type", .array(t.tokens.map { .int32(bracketed($0) ? 3 : 1) })),
            ("tokenizer.ggml.bos_token_id", .uint32(UInt32(t.cls))), ("tokenizer.ggml.eos_token_id", .uint32(UInt32(t.sep))),
            ("tokenizer.ggml.unknown_token_id", .uint32(UInt32(t.unknown))),
            ("tokenizer.ggml.seperator_token_id", .uint32(UInt32(t.sep))),  // llama.cpp's spelling
            ("tokenizer.ggml.padding_token_id", .uint32(UInt32(t.pad))), ("tokenizer.ggml.cls_token_id", .uint32(UInt32(t.cls))),
            ("tokenizer.ggml.add_bos_token", .bool(true)), ("tokenizer.ggml.add_eos_token", .bool(true)),
            ("reins.tokenizer.lowercase", .bool(t.lowercase)), ("reins.tokenizer.strip_accents", .bool(t.stripAccents)),
        ]
        if let mask = t.maskID { entries.append(("tokenizer.ggml.mask_token_id", .uint32(UInt32(mask)))) }
        return entries
    }

    static func bpeMetadata(
        _ t: BPETokenizer, tokenizerConfig: [String: Any], config: [String: Any], path: String
    ) throws -> [(String, GGUFValue)] {
        let specials = Set(t.specials.map(\.id))
        // Ids the vocabulary leaves out get placeholder tokens of type "unused" (5), as llama.cpp's converter does.
        let tokens = t.tokens.enumerated().map { $0.element.isEmpty ? "[PAD\($0.offset)]" : $0.element }
        let types = t.tokens.indices.map { i -> GGUFValue in
            .int32(t.tokens[i].isEmpty ? 5 : specials.contains(Int32(i)) ? 3 : 1)
        }
        let merges = t.ranks.sorted { $0.value < $1.value }.map { GGUFValue.string("\($0.key.a) \($0.key.b)") }
        func id(_ field: String) -> Int? {
            let value = tokenizerConfig[field]
            let text = value as? String ?? (value as? [String: Any])?["content"] as? String
            return text.flatMap { t.vocabulary[$0] }.map(Int.init) ?? (config[field + "_id"] as? Int)
        }
        var base: [(String, GGUFValue)] = [
            ("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.pre", .string("")),
            ("tokenizer.ggml.tokens", .array(tokens.map { .string($0) })), ("tokenizer.ggml.token_type", .array(types)),
            ("tokenizer.ggml.merges", .array(merges)),
        ]
        for (field, key) in [("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("pad_token", "padding_token_id"),
                             ("unk_token", "unknown_token_id")] {
            if let v = id(field), v >= 0, v < tokens.count { base.append(("tokenizer.ggml.\(key)", .uint32(UInt32(v)))) }
        }
        if let unknown = t.unknownID, !base.contains(where: { $0.0 == "tokenizer.ggml.unknown_token_id" }) {
            base.append(("tokenizer.ggml.unknown_token_id", .uint32(UInt32(unknown))))
        }
        // The BOS the post-processor adds (Llama 3's), as llama.cpp's flag; the EOS likewise.
        let prefix = t.pipeline.prefix, suffix = t.pipeline.suffix
        if let first = prefix.first, let bos = t.vocabulary[first] {
            base.removeAll { $0.0 == "tokenizer.ggml.bos_token_id" }
            base.append(("tokenizer.ggml.bos_token_id", .uint32(UInt32(bos))))
        }
        base.append(("tokenizer.ggml.add_bos_token", .bool(!prefix.isEmpty)))
        base.append(("tokenizer.ggml.add_eos_token", .bool(!suffix.isEmpty)))
        // The pre-tokenizer: the first of llama.cpp's names whose rebuilt tokenizer gives the original's ids.
        let expected = probeTexts.map { t.encode($0) }
        for pre in ["gpt-2", "smollm", "llama-bpe", "qwen2"] {
            var entries = base
            entries[1] = ("tokenizer.ggml.pre", .string(pre))
            guard let rebuilt = try? BPETokenizer(gguf: GGUFFile(metadata: entries, path: path)) else { continue }
            // The same pieces (a small vocabulary may not tell two pre-tokenizers apart by ids alone) and the same ids.
            let samePieces = probeTexts.allSatisfy { rebuilt.pipeline.split($0) == t.pipeline.split($0) }
            if samePieces && probeTexts.map({ rebuilt.encode($0) }) == expected { return entries }
        }
        throw TokenizerError.malformed(
            path: path, line: nil,
            detail: "its pre-tokenizer matches none llama.cpp names that Reins knows (gpt-2, smollm, llama-bpe, qwen2)")
    }
}

extension WordPieceTokenizer {
    /// The WordPiece vocabulary of a GGUF file (`tokenizer.ggml.model` `bert`), spelled as llama.cpp spells it
    /// ("▁" before a word's first piece, none before a continuation); lower-casing and accent stripping as Reins
    /// recorded them (`reins.tokenizer.*`), else on, as for uncased BERT.
    /// - Throws: ``GGUFError`` for missing metadata, ``TokenizerError`` for another model or missing specials.
    public convenience init(gguf file: GGUFFile) throws {
        let model = try file.string("tokenizer.ggml.model")
        guard model == "bert" else {
            throw TokenizerError.malformed(path: file.path, line: nil, detail: "tokenizer.ggml.model '\(model)' is not a WordPiece ('bert') vocabulary")
        }
        let tokens = try file.strings("tokenizer.ggml.tokens").map { s -> String in
            if s.count > 2 && s.hasPrefix("[") && s.hasSuffix("]") { return s }
            return s.hasPrefix("\u{2581}") ? String(s.dropFirst()) : "##" + s
        }
        let lowercase = file.metadata["reins.tokenizer.lowercase"]?.bool ?? true
        let strip = file.metadata["reins.tokenizer.strip_accents"]?.bool ?? lowercase
        try self.init(tokens: tokens, lowercase: lowercase, stripAccents: strip, source: file.path)
    }
}
