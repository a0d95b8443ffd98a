import Foundation
import ReinsTensor

/// The ids of one encoded text (or text pair), ready for a model.
public struct Encoding: Equatable, Sendable {
    public var ids: [Int32]
    /// 0 for the first text (and its special tokens), 1 for the second of a pair.
    public var typeIDs: [Int32]
    /// 1 for real tokens, 0 for padding.
    public var attentionMask: [Int32]
    public var tokens: [String]
}

/// Why a tokenizer file could not be used or a text not encoded.
public enum TokenizerError: Error, Equatable, CustomStringConvertible {
    case unreadable(path: String, detail: String)
    case malformed(path: String, line: Int?, detail: String)
    case missingSpecialToken(String)
    case tooLongForPair(maximum: Int)
    /// An argument the tokenizer cannot use (mismatched pairs, an impossible padding length).
    case badInput(String)

    public var description: String {
        switch self {
        case let .unreadable(path, detail): return "\(path): cannot read: \(detail)"
        case let .malformed(path, line, detail): return "\(path)\(line.map { ":\($0)" } ?? ""): \(detail)"
        case let .missingSpecialToken(t): return "the vocabulary has no \(t) token"
        case let .tooLongForPair(maximum):
            return "a maximum length of \(maximum) leaves no room for a text pair and its special tokens"
        case let .badInput(detail): return detail
        }
    }
}

/// How to cut encodings to a maximum length and pad batches.
public struct EncodingOptions: Sendable {
    /// Truncate to at most this many ids, special tokens included (`nil`: no limit).
    public var maxLength: Int?
    /// Pad a batch to its longest encoding (`.longest`), to `maxLength` (`.maxLength`), or not at all.
    public var padding: Padding = .longest
    /// Add [CLS]/[SEP] (BERT) or nothing (GPT-2 adds no special tokens).
    public var addSpecialTokens = true

    public enum Padding: Sendable { case none, longest, maxLength }

    public init(maxLength: Int? = nil, padding: Padding = .longest, addSpecialTokens: Bool = true) {
        self.maxLength = maxLength
        self.padding = padding
        self.addSpecialTokens = addSpecialTokens
    }
}

/// BERT's WordPiece tokenizer: normalise (control characters removed, whitespace unified, CJK ideographs spaced out,
/// accents stripped and text lower-cased for uncased models), split on whitespace and punctuation, then cut each
/// word greedily into the longest vocabulary pieces, continuations prefixed with `##`.
public final class WordPieceTokenizer: Sendable {
    public let vocabulary: [String: Int32]
    public let tokens: [String]
    public let lowercase: Bool
    public let stripAccents: Bool
    let unknown: Int32, cls: Int32, sep: Int32, pad: Int32
    let maxWordCharacters = 100

    /// From a `vocab.txt` (one token per line; the line number is the id).
    public convenience init(vocabularyFile path: String, lowercase: Bool = true, stripAccents: Bool? = nil) throws {
        let text: String
        do { text = try FileBytes.text(path) } catch {
            throw TokenizerError.unreadable(path: path, detail: error.localizedDescription)
        }
        var lines = text.components(separatedBy: "\n")
        if lines.last == "" { lines.removeLast() }
        try self.init(
            tokens: lines.map { $0.hasSuffix("\r") ? String($0.dropLast()) : $0 }, lowercase: lowercase,
            stripAccents: stripAccents ?? lowercase, source: path)
    }

    /// From a Hugging Face `tokenizer.json` whose model is WordPiece.
    public convenience init(tokenizerJSON path: String) throws {
        let json = try readTokenizerJSON(path)
        guard let model = json["model"] as? [String: Any], (model["type"] as? String) == "WordPiece",
            let vocab = model["vocab"] as? [String: Any]
        else {
            throw TokenizerError.malformed(path: path, line: nil, detail: "not a WordPiece tokenizer.json")
        }
        var tokens = [String](repeating: "", count: vocab.count)
        for (token, id) in vocab {
            guard let i = JSONNumber.exactInt(id), i >= 0, i < vocab.count else {
                throw TokenizerError.malformed(path: path, line: nil, detail: "token '\(token)' has a bad id")
            }
            tokens[i] = token
        }
        let normalizer = json["normalizer"] as? [String: Any]
        let lower = normalizer?["lowercase"] as? Bool ?? true
        let strip = normalizer?["strip_accents"] as? Bool ?? lower
        try self.init(tokens: tokens, lowercase: lower, stripAccents: strip, source: path)
    }

    init(tokens: [String], lowercase: Bool, stripAccents: Bool, source: String) throws {
        self.tokens = tokens
        var vocabulary: [String: Int32] = [:]
        for (i, t) in tokens.enumerated() where vocabulary[t] == nil { vocabulary[t] = Int32(i) }
        self.vocabulary = vocabulary
        self.lowercase = lowercase
        self.stripAccents = stripAccents
        func special(_ t: String) throws -> Int32 {
            guard let id = vocabulary[t] else { throw TokenizerError.missingSpecialToken(t) }
            return id
        }
        unknown = try special("[UNK]")
        cls = try special("[CLS]")
        sep = try special("[SEP]")
        pad = try special("[PAD]")
    }

    /// The id of `[MASK]`, if the vocabulary has it.
    public var maskID: Int32? { vocabulary["[MASK]"] }
    public var padID: Int32 { pad }

    // MARK: encoding

    /// The WordPiece ids of one text, without special tokens.
    public func pieces(_ text: String) -> [Int32] {
        var ids: [Int32] = []
        for word in Self.preTokenize(normalize(text)) { ids += wordPieces(word) }
        return ids
    }

    /// `[CLS] text [SEP]`, or `[CLS] a [SEP] b [SEP]` with type ids 0 then 1, truncated to `options.maxLength`.
    ///
    /// Pairs are truncated as Hugging Face's `longest_first`: the shorter text keeps its length if the longer one can
    /// absorb the cut, otherwise both are cut to half of the room (the second gets the odd one).
    public func encode(_ text: String, pair: String? = nil, options: EncodingOptions = EncodingOptions()) throws
        -> Encoding
    {
        var a = pieces(text), b = pair.map(pieces)
        let specials = options.addSpecialTokens ? (b == nil ? 2 : 3) : 0
        if let maxLength = options.maxLength, a.count + (b?.count ?? 0) + specials > maxLength {
            guard maxLength >= specials else { throw TokenizerError.tooLongForPair(maximum: maxLength) }
            let room = maxLength - specials
            if let bb = b {
                var (n1, n2) = (a.count, bb.count)
                let swapped = n1 > n2
                if swapped { swap(&n1, &n2) }
                n2 = n1 > room ? n1 : max(n1, room - n1)
                if n1 + n2 > room { n1 = room / 2; n2 = n1 + room % 2 }
                if swapped { swap(&n1, &n2) }
                a = Array(a.prefix(n1))
                b = Array(bb.prefix(n2))
            } else {
                a = Array(a.prefix(room))
            }
        }
        var ids: [Int32] = [], types: [Int32] = []
        if options.addSpecialTokens { ids.append(cls); types.append(0) }
        ids += a; types += [Int32](repeating: 0, count: a.count)
        if options.addSpecialTokens { ids.append(sep); types.append(0) }
        if let b {
            ids += b; types += [Int32](repeating: 1, count: b.count)
            if options.addSpecialTokens { ids.append(sep); types.append(1) }
        }
        return Encoding(
            ids: ids, typeIDs: types, attentionMask: [Int32](repeating: 1, count: ids.count),
            tokens: ids.map { tokens[Int($0)] })
    }

    /// Encodes texts (or pairs) and pads them to a common length with `[PAD]` (type 0, mask 0).
    /// - Throws: ``TokenizerError`` for pairs that do not match the texts one for one, or padding to a length that
    ///   would not fit in memory.
    public func encodeBatch(_ texts: [String], pairs: [String]? = nil, options: EncodingOptions = EncodingOptions())
        throws -> [Encoding]
    {
        if let pairs, pairs.count != texts.count {
            throw TokenizerError.badInput("\(pairs.count) pair texts for \(texts.count) texts")
        }
        if options.padding == .maxLength, let maxLength = options.maxLength {
            do {
                try Tensor.checkMemory(
                    elements: maxLength, bytesPerElement: texts.count * 24,
                    what: "padding \(texts.count) texts to \(maxLength) tokens", operation: "encodeBatch")
            } catch { throw TokenizerError.badInput("\(error)") }
        }
        var out = try texts.indices.map { try encode(texts[$0], pair: pairs?[$0], options: options) }
        let target: Int
        switch options.padding {
        case .none: return out
        case .longest: target = out.map(\.ids.count).max() ?? 0
        case .maxLength: target = options.maxLength ?? (out.map(\.ids.count).max() ?? 0)
        }
        for i in out.indices where out[i].ids.count < target {
            let n = target - out[i].ids.count
            out[i].ids += [Int32](repeating: pad, count: n)
            out[i].typeIDs += [Int32](repeating: 0, count: n)
            out[i].attentionMask += [Int32](repeating: 0, count: n)
            out[i].tokens += [String](repeating: "[PAD]", count: n)
        }
        return out
    }

    /// Text from ids, as Hugging Face's WordPiece decoder: special tokens dropped (optionally), `##` continuations
    /// glued to the previous piece, other pieces preceded by a space, and each piece cleaned of the space before
    /// punctuation (`clean_up_tokenization_spaces`, which applies per piece).
    public func decode(_ ids: [Int32], skipSpecialTokens: Bool = true) -> String {
        let specials = Set(["[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"].compactMap { vocabulary[$0] })
        var text = "", first = true
        for id in ids where id >= 0 && Int(id) < tokens.count {
            if skipSpecialTokens && specials.contains(id) { continue }
            let t = tokens[Int(id)]
            var piece = t.hasPrefix("##") ? String(t.dropFirst(2)) : (first ? t : " " + t)
            for (from, to) in [
                (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
            ] {
                piece = piece.replacingOccurrences(of: from, with: to)
            }
            text += piece
            first = false
        }
        return text
    }

    // MARK: the steps

    func normalize(_ text: String) -> String {
        var out = String.UnicodeScalarView()
        for s in text.unicodeScalars {
            let v = s.value
            if v == 0 || v == 0xFFFD || Self.isControl(s) { continue }
            if Self.isWhitespace(s) { out.append(" "); continue }
            if Self.isCJK(v) { out.append(" "); out.append(s); out.append(" "); continue }
            out.append(s)
        }
        var result = String(out)
        if stripAccents {
            result = String(
                String.UnicodeScalarView(
                    result.decomposedStringWithCanonicalMapping.unicodeScalars.filter {
                        $0.properties.generalCategory != .nonspacingMark
                    }))
        }
        if lowercase { result = result.lowercased() }
        return result
    }

    /// The scalars of `unit` — one word as the tokenizer cuts text — that each of its `pieces` came from, as offsets
    /// into the word, or nil if that cannot be told. Normalization is followed scalar by scalar and a piece spans
    /// from the first to the last scalar that produced it, as Hugging Face's offsets do: a scalar normalization drops
    /// (a control character, a combining accent under `stripAccents`) belongs to no piece when it falls between two.
    /// `[UNK]` spans the word. Nil when a piece boundary falls inside what one scalar normalizes to.
    func pieceSpans(_ unit: [Unicode.Scalar], pieces: [Int32]) -> [Range<Int>]? {
        // How many normalized scalars each original scalar becomes (printable ASCII: one, without asking).
        let widths = unit.map { s in (0x20..<0x7F).contains(s.value) ? 1 : normalize(String(s)).unicodeScalars.count }
        var ends: [Int] = []  // normalized offset after each scalar
        for w in widths { ends.append((ends.last ?? 0) + w) }
        if pieces == [unknown] {
            guard let first = widths.firstIndex(where: { $0 > 0 }), let last = widths.lastIndex(where: { $0 > 0 })
            else { return nil }
            return [first..<(last + 1)]
        }
        guard !pieces.contains(unknown) else { return nil }
        var spans: [Range<Int>] = [], from = 0  // normalized offset where the next piece begins
        for (k, id) in pieces.enumerated() {
            let token = tokens[Int(id)]
            let to =
                from + (k > 0 && token.hasPrefix("##") ? token.dropFirst(2) : Substring(token)).unicodeScalars.count
            // The scalar whose output begins at `from`, and the one whose output ends at `to`.
            guard let first = widths.indices.first(where: { widths[$0] > 0 && ends[$0] - widths[$0] == from }),
                let last = widths.indices.first(where: { widths[$0] > 0 && ends[$0] == to })
            else { return nil }
            spans.append(first..<(last + 1))
            from = to
        }
        return from == ends.last ? spans : nil
    }

    static func preTokenize(_ text: String) -> [String] {
        var words: [String] = [], current = String.UnicodeScalarView()
        func flush() { if !current.isEmpty { words.append(String(current)); current = String.UnicodeScalarView() } }
        for s in text.unicodeScalars {
            if isWhitespace(s) {
                flush()
            } else if isPunctuation(s) {
                flush(); words.append(String(s))
            } else {
                current.append(s)
            }
        }
        flush()
        return words
    }

    func wordPieces(_ word: String) -> [Int32] {
        let chars = Array(word.unicodeScalars)
        if chars.count > maxWordCharacters { return [unknown] }
        var ids: [Int32] = [], start = 0
        while start < chars.count {
            var end = chars.count, found: Int32?
            while start < end {
                var piece = String(String.UnicodeScalarView(chars[start..<end]))
                if start > 0 { piece = "##" + piece }
                if let id = vocabulary[piece] { found = id; break }
                end -= 1
            }
            guard let id = found else { return [unknown] }
            ids.append(id)
            start = end
        }
        return ids
    }

    static func isWhitespace(_ s: Unicode.Scalar) -> Bool {
        s == "\t" || s == "\n" || s == "\r" || s.properties.isWhitespace
    }

    static func isControl(_ s: Unicode.Scalar) -> Bool {
        if s == "\t" || s == "\n" || s == "\r" { return false }
        switch s.properties.generalCategory {
        case .control, .format, .privateUse, .surrogate, .unassigned: return true
        default: return false
        }
    }

    static func isPunctuation(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        if (33...47).contains(v) || (58...64).contains(v) || (91...96).contains(v) || (123...126).contains(v) {
            return true
        }
        switch s.properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation, .initialPunctuation,
            .finalPunctuation, .otherPunctuation:
            return true
        default: return false
        }
    }

    static func isCJK(_ v: UInt32) -> Bool {
        (0x4E00...0x9FFF).contains(v) || (0x3400...0x4DBF).contains(v) || (0x20000...0x2A6DF).contains(v)
            || (0x2A700...0x2B73F).contains(v) || (0x2B740...0x2B81F).contains(v) || (0x2B820...0x2CEAF).contains(v)
            || (0xF900...0xFAFF).contains(v) || (0x2F800...0x2FA1F).contains(v)
    }
}

func readTokenizerJSON(_ path: String) throws -> [String: Any] {
    let data: Data
    do { data = try FileBytes.read(path) } catch {
        throw TokenizerError.unreadable(path: path, detail: error.localizedDescription)
    }
    guard let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
        throw TokenizerError.malformed(path: path, line: nil, detail: "not a JSON object")
    }
    return json
}

/// A WordPiece or byte-level BPE tokenizer, chosen from the file it is loaded from.
public enum AnyTokenizer {
    case wordPiece(WordPieceTokenizer)
    case bpe(BPETokenizer)

    /// `vocab.txt` (WordPiece), `vocab.json` with `merges.txt` beside it (BPE), a `tokenizer.json` of either kind, or
    /// a GGUF model file (its byte-level BPE or WordPiece tokenizer).
    public init(file path: String) throws {
        let url = URL(fileURLWithPath: path)
        if GGUFModel.isGGUF(path) {
            let file = try GGUFFile(path: path)
            self = file.metadata["tokenizer.ggml.model"]?.string == "bert"
                ? .wordPiece(try WordPieceTokenizer(gguf: file)) : .bpe(try BPETokenizer(gguf: file))
            return
        }
        switch url.pathExtension {
        case "txt": self = .wordPiece(try WordPieceTokenizer(vocabularyFile: path))
        case "json" where url.lastPathComponent == "tokenizer.json":
            let json = try readTokenizerJSON(path)
            switch (json["model"] as? [String: Any])?["type"] as? String {
            case "WordPiece": self = .wordPiece(try WordPieceTokenizer(tokenizerJSON: path))
            case "BPE": self = .bpe(try BPETokenizer(tokenizerJSON: path))
            case let other:
                throw TokenizerError.malformed(
                    path: path, line: nil, detail: "model type \(other ?? "(none)") is not WordPiece or BPE")
            }
        case "json":
            self = .bpe(
                try BPETokenizer(
                    vocabularyFile: path,
                    mergesFile: url.deletingLastPathComponent().appendingPathComponent("merges.txt").path))
        default:
            throw TokenizerError.unreadable(
                path: path, detail: "expected vocab.txt, vocab.json (with merges.txt) or tokenizer.json")
        }
    }

    /// The ids of one text, with the special tokens the model family adds ([CLS]/[SEP] for BERT, none for GPT-2).
    public func encode(_ text: String) throws -> [Int32] {
        switch self {
        case let .wordPiece(t): return try t.encode(text).ids
        case let .bpe(t): return t.encode(text)
        }
    }

    public func decode(_ ids: [Int32]) -> String {
        switch self {
        case let .wordPiece(t): return t.decode(ids)
        case let .bpe(t): return t.decode(ids)
        }
    }
}
