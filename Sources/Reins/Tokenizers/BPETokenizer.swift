import Foundation
import ReinsTensor

/// GPT-2's byte-level BPE tokenizer: split the text with GPT-2's pattern (contractions, letter runs, number runs,
/// other-symbol runs, each optionally led by one space; whitespace runs), map every UTF-8 byte to a printable
/// character, then merge adjacent symbols by rank until no listed merge applies. Special tokens such as
/// `<|endoftext|>` are matched whole before any of that. Every byte is in the vocabulary, so no text is unknown.
public final class BPETokenizer: @unchecked Sendable {
    public let vocabulary: [String: Int32]
    public let tokens: [String]
    let ranks: [Pair: Int]
    /// Special tokens, longest first, so that one that contains another wins.
    let specials: [(text: String, id: Int32)]
    /// Normalizer, pre-tokenizer and post-processor (GPT-2's unless a `tokenizer.json` says otherwise).
    let pipeline: TextPipeline
    /// A pre-tokenized word that is itself in the vocabulary is one token, without merging (`ignore_merges`, Llama 3).
    let ignoreMerges: Bool
    private let cache = Locked<[String: [Int32]]>([:])

    struct Pair: Hashable { let a: String, b: String }

    /// From `vocab.json` + `merges.txt`.
    public convenience init(vocabularyFile: String, mergesFile: String) throws {
        let data: Data
        do { data = try FileBytes.read(vocabularyFile) } catch {
            throw TokenizerError.unreadable(path: vocabularyFile, detail: error.localizedDescription)
        }
        guard let vocab = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw TokenizerError.malformed(path: vocabularyFile, line: nil, detail: "not a JSON object of token -> id")
        }
        let text: String
        do { text = try FileBytes.text(mergesFile) } catch {
            throw TokenizerError.unreadable(path: mergesFile, detail: error.localizedDescription)
        }
        var merges: [(String, String)] = []
        for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let l = line.hasSuffix("\r") ? line.dropLast() : line
            if l.isEmpty || (n == 0 && l.hasPrefix("#version")) { continue }
            let parts = l.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2 else {
                throw TokenizerError.malformed(
                    path: mergesFile, line: n + 1, detail: "a merge is two symbols separated by one space")
            }
            merges.append((String(parts[0]), String(parts[1])))
        }
        let specials = vocab.keys.filter { $0.hasPrefix("<|") && $0.hasSuffix("|>") }
        try self.init(vocab: vocab, merges: merges, specials: specials, source: vocabularyFile)
    }

    /// From a Hugging Face `tokenizer.json` whose model is BPE.
    public convenience init(tokenizerJSON path: String) throws {
        let json = try readTokenizerJSON(path)
        guard let model = json["model"] as? [String: Any], (model["type"] as? String) == "BPE",
            let vocab = model["vocab"] as? [String: Any], let rawMerges = model["merges"] as? [Any]
        else {
            throw TokenizerError.malformed(path: path, line: nil, detail: "not a BPE tokenizer.json")
        }
        let merges = try rawMerges.enumerated().map { (i, m) -> (String, String) in
            if let s = m as? String {
                let parts = s.split(separator: " ", omittingEmptySubsequences: false)
                if parts.count == 2 { return (String(parts[0]), String(parts[1])) }
            } else if let a = m as? [String], a.count == 2 {
                return (a[0], a[1])
            }
            throw TokenizerError.malformed(path: path, line: nil, detail: "merge \(i) is not a pair")
        }
        let added = (json["added_tokens"] as? [[String: Any]] ?? []).compactMap { $0["content"] as? String }
        // Model options that change the result and that a byte-level BPE does not use are refused, never ignored.
        if model["byte_fallback"] as? Bool == true {
            throw TokenizerError.malformed(
                path: path, line: nil,
                detail: "byte_fallback (a SentencePiece-style BPE) is not supported; Reins reads byte-level BPE")
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix", "dropout"] {
            if let v = model[key], !(v is NSNull), (v as? String) != "" {
                throw TokenizerError.malformed(path: path, line: nil, detail: "the BPE model's \(key) is not supported")
            }
        }
        try self.init(
            vocab: vocab, merges: merges, specials: added, source: path,
            pipeline: TextPipeline(tokenizerJSON: json, path: path), ignoreMerges: model["ignore_merges"] as? Bool ?? false,
            unknownToken: model["unk_token"] as? String)
    }

    /// Ids may leave gaps (a vocabulary with tokens removed), but not more than this many beyond the entries: the id
    /// table is sized by the largest id, and an id of 2^31 - 1 in a small file must not cost 34 GB.
    static let maximumIDGap = 1 << 16

    /// The id a byte missing from the vocabulary encodes as (the model's unknown token), or nil: such a byte is then
    /// dropped, as `tokenizers` drops it.
    let unknownID: Int32?

    init(
        vocab: [String: Any], merges: [(String, String)], specials: [String], source: String,
        pipeline: TextPipeline = .gpt2, ignoreMerges: Bool = false, unknownToken: String? = nil
    ) throws {
        (self.pipeline, self.ignoreMerges) = (pipeline, ignoreMerges)
        var vocabulary: [String: Int32] = [:]
        var maxID = -1
        for (token, id) in vocab {
            guard let i = JSONNumber.exactInt(id), i >= 0, i < vocab.count + BPETokenizer.maximumIDGap else {
                throw TokenizerError.malformed(
                    path: source, line: nil,
                    detail:
                        "token '\(token)' has id \(id), not an integer in 0..<\(vocab.count + BPETokenizer.maximumIDGap) (the vocabulary has \(vocab.count) entries)"
                )
            }
            vocabulary[token] = Int32(i)  // fits: below the entry count plus 65,536
            maxID = max(maxID, i)
        }
        var tokens = [String](repeating: "", count: maxID + 1)
        for (t, i) in vocabulary { tokens[Int(i)] = t }
        self.vocabulary = vocabulary
        self.tokens = tokens
        // A vocabulary may lack bytes that never occur in its training text (SmolLM2's lacks some control bytes).
        if let unknownToken {
            guard let id = vocabulary[unknownToken] else {
                throw TokenizerError.malformed(
                    path: source, line: nil, detail: "the unknown token '\(unknownToken)' is not in the vocabulary")
            }
            unknownID = id
        } else {
            unknownID = nil
        }
        var ranks: [Pair: Int] = [:]
        for (i, m) in merges.enumerated() where ranks[Pair(a: m.0, b: m.1)] == nil {
            // Every merge must make a token the vocabulary has (as `tokenizers` requires): otherwise its result would
            // have no id and text would encode silently wrong.
            guard vocabulary[m.0 + m.1] != nil else {
                throw TokenizerError.malformed(
                    path: source, line: nil,
                    detail: "merge \(i) ('\(m.0)' + '\(m.1)') makes '\(m.0 + m.1)', which is not in the vocabulary")
            }
            ranks[Pair(a: m.0, b: m.1)] = i
        }
        self.ranks = ranks
        self.specials = specials.compactMap { s in vocabulary[s].map { (s, $0) } }.sorted {
            $0.text.count > $1.text.count
        }
        for token in pipeline.prefix + pipeline.suffix where vocabulary[token] == nil {
            throw TokenizerError.malformed(
                path: source, line: nil, detail: "the post-processor adds '\(token)', which is not in the vocabulary")
        }
    }

    /// The id of `<|endoftext|>`, if present.
    public var endOfText: Int32? { vocabulary["<|endoftext|>"] }

    // MARK: encoding

    /// The ids of `text`, with the special tokens the post-processor adds (a Llama 3 BOS; GPT-2 adds none) unless
    /// `addingSpecialTokens` is false (text rendered by a chat template already holds them).
    public func encode(_ text: String, addingSpecialTokens: Bool = true) -> [Int32] {
        var ids: [Int32] = addingSpecialTokens ? pipeline.prefix.compactMap { vocabulary[$0] } : []
        for (piece, special) in splitSpecials(text) {
            if let special { ids.append(special); continue }
            for word in pipeline.split(piece) { ids += bpe(word) }
        }
        if addingSpecialTokens { ids += pipeline.suffix.compactMap { vocabulary[$0] } }
        return ids
    }

    /// The id of a token, if the vocabulary has it.
    public func id(of token: String) -> Int32? { vocabulary[token] }

    /// Encodes several texts; with `leftPadding` (for generation) shorter ones are padded on the left with `padID`.
    public func encodeBatch(_ texts: [String], padID: Int32, leftPadding: Bool = true) -> Encoding2D {
        let all = texts.map { encode($0) }
        let T = all.map(\.count).max() ?? 0
        var ids: [Int32] = [], mask: [Int32] = []
        for e in all {
            let pad = [Int32](repeating: padID, count: T - e.count), zeros = [Int32](repeating: 0, count: T - e.count)
            let ones = [Int32](repeating: 1, count: e.count)
            ids += leftPadding ? pad + e : e + pad
            mask += leftPadding ? zeros + ones : ones + zeros
        }
        return Encoding2D(batch: texts.count, length: T, ids: ids, attentionMask: mask)
    }

    /// Text from ids: the byte characters mapped back to bytes and decoded as UTF-8 (invalid sequences become U+FFFD).
    public func decode(_ ids: [Int32]) -> String {
        var bytes: [UInt8] = []
        for id in ids where id >= 0 && Int(id) < tokens.count {
            let t = tokens[Int(id)]
            if specials.contains(where: { $0.id == id }) { bytes += Array(t.utf8); continue }
            for ch in t.unicodeScalars {
                if let b = BPETokenizer.characterToByte[ch] { bytes.append(b) } else { bytes += Array(String(ch).utf8) }
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: the steps

    func splitSpecials(_ text: String) -> [(String, Int32?)] {
        guard !specials.isEmpty else { return [(text, nil)] }
        var out: [(String, Int32?)] = [], rest = Substring(text)
        // Each special's next occurrence at or after the cursor, searched again only once the cursor passes it: the
        // work is one scan of the text per special, however many specials the text holds.
        var next: [Range<Substring.Index>?] = specials.map { rest.range(of: $0.text) }
        while !rest.isEmpty {
            for k in specials.indices where next[k].map({ $0.lowerBound < rest.startIndex }) ?? false {
                next[k] = rest.range(of: specials[k].text)
            }
            // The earliest occurrence; among occurrences at the same place, the longest special (they are sorted so).
            var best: (range: Range<Substring.Index>, id: Int32)?
            for (k, s) in specials.enumerated() {
                if let r = next[k], best.map({ r.lowerBound < $0.range.lowerBound }) ?? true { best = (r, s.id) }
            }
            guard let b = best else { out.append((String(rest), nil)); break }
            if b.range.lowerBound > rest.startIndex { out.append((String(rest[..<b.range.lowerBound]), nil)) }
            out.append(("", b.id))
            rest = rest[b.range.upperBound...]
        }
        return out
    }

    /// GPT-2's pattern `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, scanned by hand.
    static func preTokenize(_ text: String) -> [String] {
        let s = Array(text.unicodeScalars)
        var words: [String] = [], i = 0
        func isLetter(_ c: Unicode.Scalar) -> Bool {
            switch c.properties.generalCategory {
            case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
            default: return false
            }
        }
        func isNumber(_ c: Unicode.Scalar) -> Bool {
            switch c.properties.generalCategory {
            case .decimalNumber, .letterNumber, .otherNumber: return true
            default: return false
            }
        }
        func isSpace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace }
        func isOther(_ c: Unicode.Scalar) -> Bool { !isSpace(c) && !isLetter(c) && !isNumber(c) }
        func run(from j: Int, _ pred: (Unicode.Scalar) -> Bool) -> Int {
            var k = j
            while k < s.count && pred(s[k]) { k += 1 }
            return k
        }
        while i < s.count {
            // contractions
            if s[i] == "'" {
                let match = ["s", "t", "re", "ve", "m", "ll", "d"].map { Array($0.unicodeScalars) }.first { u in
                    i + u.count < s.count && Array(s[(i + 1)...(i + u.count)]) == u
                }
                if let u = match {
                    words.append(String(String.UnicodeScalarView(s[i...(i + u.count)])))
                    i += u.count + 1
                    continue
                }
            }
            // an optional single space, then a run of letters, of numbers, or of other symbols
            let j = s[i] == " " && i + 1 < s.count && !isSpace(s[i + 1]) ? i + 1 : i
            if !isSpace(s[j]) {
                let end =
                    isLetter(s[j])
                    ? run(from: j, isLetter) : isNumber(s[j]) ? run(from: j, isNumber) : run(from: j, isOther)
                words.append(String(String.UnicodeScalarView(s[i..<end])))
                i = end
                continue
            }
            // whitespace: leave the last space of a run for the word that follows it
            let e = run(from: i, isSpace)
            let cut = e < s.count && e - i >= 2 ? e - 1 : e
            words.append(String(String.UnicodeScalarView(s[i..<cut])))
            i = cut
        }
        return words
    }

    /// The ids of one pre-tokenized word: its bytes as symbols, then the lowest-ranked adjacent pair merged, leftmost
    /// first, until no listed pair remains. A heap of candidate pairs over a linked list of symbols makes this
    /// O(n log n) in the word's length (a word may be a megabyte of letters). Merging one pair at a time gives what
    /// merging every occurrence of the best pair at once gives: a pair a merge creates always ranks after that merge.
    func bpe(_ word: String) -> [Int32] {
        if let hit = cache.withLock({ $0[word] }) { return hit }
        var symbols = word.utf8.map { String(BPETokenizer.byteToCharacter[Int($0)]) }
        if ignoreMerges, let whole = vocabulary[symbols.joined()] { return [whole] }
        let n = symbols.count
        var next = Array(1...max(n, 1)), previous = Array(-1..<max(n - 1, 0)), alive = [Bool](repeating: true, count: n)
        if n > 0 { next[n - 1] = -1 }
        var heap = LazyHeap<PairCandidate>()
        func consider(_ i: Int) {
            guard i >= 0, next[i] >= 0, let r = ranks[Pair(a: symbols[i], b: symbols[next[i]])] else { return }
            heap.push(PairCandidate(rank: r, at: i))
        }
        for i in 0..<max(n - 1, 0) { consider(i) }
        // Stale entries (a symbol merged away, or changed since it was pushed) are skipped.
        while let candidate = heap.popValid(where: { c in
            alive[c.at] && next[c.at] >= 0 && ranks[Pair(a: symbols[c.at], b: symbols[next[c.at]])] == c.rank
        }) {
            let (i, j) = (candidate.at, next[candidate.at])
            symbols[i] += symbols[j]
            alive[j] = false
            next[i] = next[j]
            if next[j] >= 0 { previous[next[j]] = i }
            consider(previous[i])
            consider(i)
        }
        // Every merge's result is in the vocabulary (checked when loading); a single byte may not be, and then encodes
        // as the unknown token, or is dropped when there is none.
        let ids = symbols.indices.filter { alive[$0] }.compactMap { vocabulary[symbols[$0]] ?? unknownID }
        cache.withLock { c in if c.count < 100_000 { c[word] = ids } }
        return ids
    }

    /// A pair that may be merged next while encoding: the lowest rank first, the leftmost among equal ranks.
    struct PairCandidate: HeapOrdered {
        let rank: Int, at: Int
        func precedes(_ other: PairCandidate) -> Bool { (rank, at) < (other.rank, other.at) }
    }

    /// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes map to themselves, the rest
    /// to U+0100 onwards in byte order.
    static let byteToCharacter: [Character] = {
        var printable = Array(33...126) + Array(161...172) + Array(174...255)
        var chars = printable
        var n = 0
        for b in 0...255 where !printable.contains(b) {
            printable.append(b)
            chars.append(256 + n)
            n += 1
        }
        var table = [Character](repeating: " ", count: 256)
        for (b, c) in zip(printable, chars) { table[b] = Character(Unicode.Scalar(UInt32(c))!) }
        return table
    }()

    static let characterToByte: [Unicode.Scalar: UInt8] = {
        var m: [Unicode.Scalar: UInt8] = [:]
        for (b, c) in byteToCharacter.enumerated() { m[c.unicodeScalars.first!] = UInt8(b) }
        return m
    }()
}

/// A padded batch of ids `[batch, length]` and its attention mask.
public struct Encoding2D: Sendable {
    public let batch: Int
    public let length: Int
    public let ids: [Int32]
    public let attentionMask: [Int32]
}
