import Foundation

extension BPETokenizer {
    /// A learned byte-level BPE vocabulary: tokens by id, and the merges in the order they were learned.
    public struct Learned: Sendable {
        public var tokens: [String]
        public var merges: [(String, String)]
    }

    /// Learns a byte-level BPE vocabulary (Sennrich et al., arXiv 1508.07909, on GPT-2's byte alphabet) from `text`:
    /// the text is split with GPT-2's pre-tokenizer, words start as their bytes (256 base tokens), and the most frequent
    /// adjacent pair is merged until the vocabulary has `vocabularySize` tokens (special tokens included, appended last)
    /// or no pair occurs `minimumFrequency` times. Ties go to the pair whose merged token sorts first, so the result
    /// is deterministic.
    /// - Throws: ``TokenizerError`` if `vocabularySize` cannot hold the 256 bytes and the special tokens.
    public static func learn(from text: String, vocabularySize: Int, minimumFrequency: Int = 2,
                             specialTokens: [String] = ["<|endoftext|>"]) throws -> Learned {
        guard vocabularySize >= 256 + specialTokens.count else {
            throw TokenizerError.malformed(path: "(training)", line: nil, detail: "vocabulary size \(vocabularySize) cannot hold the 256 bytes and \(specialTokens.count) special tokens")
        }
        var tokens = byteToCharacter.map { String($0) }
        // Words as symbol-id sequences, with their counts.
        var counts: [[Int32]: Int] = [:]
        for piece in BPETokenizer.specialsFree(text, specials: specialTokens) {
            for word in preTokenize(piece) {
                counts[word.utf8.map { Int32($0) }, default: 0] += 1
            }
        }
        var words = counts.map { (symbols: $0.key, count: $0.value) }
        var merges: [(String, String)] = []
        while tokens.count + specialTokens.count < vocabularySize {
            var pairs: [UInt64: Int] = [:]
            for w in words where w.symbols.count > 1 {
                for i in 0..<(w.symbols.count - 1) {
                    pairs[UInt64(UInt32(w.symbols[i])) << 32 | UInt64(UInt32(w.symbols[i + 1])), default: 0] += w.count
                }
            }
            var best: (key: UInt64, count: Int, merged: String)?
            for (key, count) in pairs where count >= minimumFrequency {
                let merged = tokens[Int(key >> 32)] + tokens[Int(key & 0xFFFF_FFFF)]
                if best == nil || count > best!.count || (count == best!.count && merged < best!.merged) { best = (key, count, merged) }
            }
            guard let chosen = best else { break }
            let (a, b) = (Int32(chosen.key >> 32), Int32(chosen.key & 0xFFFF_FFFF))
            let id = Int32(tokens.count)
            tokens.append(chosen.merged)
            merges.append((tokens[Int(a)], tokens[Int(b)]))
            for i in words.indices where words[i].symbols.count > 1 && words[i].symbols.contains(a) {
                let s = words[i].symbols
                var out: [Int32] = [], j = 0
                while j < s.count {
                    if j + 1 < s.count && s[j] == a && s[j + 1] == b { out.append(id); j += 2 } else { out.append(s[j]); j += 1 }
                }
                words[i].symbols = out
            }
        }
        return Learned(tokens: tokens + specialTokens, merges: merges)
    }

    /// The text split around special tokens (which are not learned from).
    static func specialsFree(_ text: String, specials: [String]) -> [String] {
        var parts = [text]
        for special in specials { parts = parts.flatMap { $0.components(separatedBy: special) } }
        return parts
    }

    /// Writes `vocab.json` and `merges.txt` (GPT-2's layout, each atomically) to `directory`.
    public static func save(_ learned: Learned, to directory: URL) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let vocab = Dictionary(uniqueKeysWithValues: learned.tokens.enumerated().map { ($0.element, $0.offset) })
        try AtomicFile.write(try JSONSerialization.data(withJSONObject: vocab, options: [.sortedKeys]), to: directory.appendingPathComponent("vocab.json").path)
        let merges = "#version: 0.2\n" + learned.merges.map { "\($0.0) \($0.1)" }.joined(separator: "\n") + "\n"
        try AtomicFile.write(Data(merges.utf8), to: directory.appendingPathComponent("merges.txt").path)
    }
}
