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
    public static func learn(
        from text: String, vocabularySize: Int, minimumFrequency: Int = 2,
        specialTokens: [String] = ["<|endoftext|>"]
    ) throws -> Learned {
        guard vocabularySize >= 256 + specialTokens.count else {
            throw TokenizerError.malformed(
                path: "(training)", line: nil,
                detail:
                    "vocabulary size \(vocabularySize) cannot hold the 256 bytes and \(specialTokens.count) special tokens"
            )
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
        // Pair counts are kept up to date as merges rewrite words (only the words holding the merged pair change), and
        // the next merge comes from a heap of candidates; an entry whose count has changed since it was pushed is
        // stale and skipped.
        var pairs: [UInt64: Int] = [:]
        var holders: [UInt64: [Int]] = [:]  // the words each pair occurs in (may list a word twice, or one it has left)
        func key(_ a: Int32, _ b: Int32) -> UInt64 { UInt64(UInt32(a)) << 32 | UInt64(UInt32(b)) }
        for (w, word) in words.enumerated() where word.symbols.count > 1 {
            for i in 0..<(word.symbols.count - 1) {
                let k = key(word.symbols[i], word.symbols[i + 1])
                pairs[k, default: 0] += word.count
                if holders[k]?.last != w { holders[k, default: []].append(w) }
            }
        }
        var candidates = LazyHeap<MergeCandidate>()
        func offer(_ k: UInt64) {
            guard let count = pairs[k], count >= minimumFrequency else { return }
            candidates.push(.init(count: count, merged: tokens[Int(k >> 32)] + tokens[Int(k & 0xFFFF_FFFF)], key: k))
        }
        for k in pairs.keys { offer(k) }
        var merges: [(String, String)] = []
        var visited = [Int](repeating: -1, count: words.count)  // the merge that last rewrote each word
        while tokens.count + specialTokens.count < vocabularySize {
            guard let chosen = candidates.popValid(where: { pairs[$0.key] == $0.count }) else { break }
            let (a, b) = (Int32(chosen.key >> 32), Int32(chosen.key & 0xFFFF_FFFF))
            let id = Int32(tokens.count), step = merges.count
            tokens.append(chosen.merged)
            merges.append((tokens[Int(a)], tokens[Int(b)]))
            var changed = Set<UInt64>()
            for w in holders.removeValue(forKey: chosen.key) ?? [] where visited[w] != step {
                visited[w] = step
                let s = words[w].symbols, n = words[w].count
                var out: [Int32] = [], j = 0
                while j < s.count {
                    if j + 1 < s.count && s[j] == a && s[j + 1] == b {
                        out.append(id); j += 2
                    } else {
                        out.append(s[j]); j += 1
                    }
                }
                guard out.count != s.count else { continue }
                for i in 0..<(s.count - 1) {
                    let k = key(s[i], s[i + 1])
                    pairs[k]! -= n
                    changed.insert(k)
                }
                for i in 0..<max(out.count - 1, 0) {
                    let k = key(out[i], out[i + 1])
                    pairs[k, default: 0] += n
                    changed.insert(k)
                    if out[i] == id || out[i + 1] == id { holders[k, default: []].append(w) }
                }
                words[w].symbols = out
            }
            // Every pair whose count moved gets an entry with its new count (its older entries are stale now).
            for k in changed {
                if pairs[k] == 0 { pairs[k] = nil } else { offer(k) }
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
        try AtomicFile.write(
            try JSONSerialization.data(withJSONObject: vocab, options: [.sortedKeys]),
            to: directory.appendingPathComponent("vocab.json").path)
        let merges = "#version: 0.2\n" + learned.merges.map { "\($0.0) \($0.1)" }.joined(separator: "\n") + "\n"
        try AtomicFile.write(Data(merges.utf8), to: directory.appendingPathComponent("merges.txt").path)
    }
}

/// A pair that may be merged next while learning: most frequent first; among equally frequent pairs the one whose
/// merged token sorts first (then the lower pair of ids), so that learning is deterministic.
struct MergeCandidate: HeapOrdered {
    var count: Int
    var merged: String
    var key: UInt64

    func precedes(_ other: MergeCandidate) -> Bool {
        if count != other.count { return count > other.count }
        if merged != other.merged { return merged < other.merged }
        return key < other.key
    }
}

/// What can be kept in a ``LazyHeap``: an order in which entries come out.
protocol HeapOrdered {
    /// Whether `self` comes out before `other`.
    func precedes(_ other: Self) -> Bool
}

/// A binary heap with lazy deletion: entries that went stale since they were pushed stay in it and are skipped when
/// they reach the top (cheaper than finding and removing them). Learning merges and applying them both use one.
struct LazyHeap<Entry: HeapOrdered> {
    private var heap: [Entry] = []

    mutating func push(_ entry: Entry) {
        heap.append(entry)
        var i = heap.count - 1
        while i > 0, heap[i].precedes(heap[(i - 1) / 2]) {
            heap.swapAt(i, (i - 1) / 2)
            i = (i - 1) / 2
        }
    }

    /// Removes entries from the top until one satisfies `isCurrent` and returns it, or nil when none is left.
    mutating func popValid(where isCurrent: (Entry) -> Bool) -> Entry? {
        while let top = heap.first {
            heap.swapAt(0, heap.count - 1)
            heap.removeLast()
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var best = i
                if l < heap.count, heap[l].precedes(heap[best]) { best = l }
                if r < heap.count, heap[r].precedes(heap[best]) { best = r }
                if best == i { break }
                heap.swapAt(i, best)
                i = best
            }
            if isCurrent(top) { return top }
        }
        return nil
    }
}
