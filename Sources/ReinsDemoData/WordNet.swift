import Foundation
import ReinsTensor

/// WordNet glosses labelled with their supersense, read from the `data.noun`, `data.verb`, `data.adj` and
/// `data.adv` files that Debian's `wordnet-base` installs in `/usr/share/wordnet`.
///
/// A data line is `offset lex_filenum ss_type w_cnt word lex_id ... | gloss`; `lex_filenum` names the
/// lexicographer file, which is the synset's supersense (`noun.animal`, `verb.motion`, ...). The gloss is a
/// definition optionally followed by `; "example"` sentences.
public enum WordNet {
    /// The 45 lexicographer files, by number (WordNet's lexnames(5) table).
    public static let supersenses = [
        "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
        "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
        "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
        "noun.possession",
        "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
        "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption",
        "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
        "verb.social", "verb.stative", "verb.weather", "adj.ppl",
    ]

    /// One synset's gloss.
    public struct Gloss: Sendable, Equatable {
        /// `n`, `v`, `a`, `s` (satellite adjective) or `r`.
        public var partOfSpeech: Character
        public var offset: Int
        /// The synset's first word, with spaces for underscores.
        public var lemma: String
        /// The definition part of the gloss (examples dropped).
        public var definition: String
        /// Index into ``supersenses``.
        public var supersense: Int

        /// What a classifier reads: `"lemma: definition"`.
        public var text: String { "\(lemma): \(definition)" }
    }

    /// Where Debian puts the database, or `REINS_WORDNET_DIR`.
    public static var defaultDirectory: URL {
        URL(fileURLWithPath: ProcessInfo.processInfo.environment["REINS_WORDNET_DIR"] ?? "/usr/share/wordnet")
    }

    public typealias LoadError = DemoDataError

    /// Every gloss of the four data files, in file order.
    /// - Throws: ``LoadError`` naming a missing file, or the file and line of a malformed entry.
    public static func glosses(directory: URL = defaultDirectory) throws -> [Gloss] {
        var all: [Gloss] = []
        for name in ["data.noun", "data.verb", "data.adj", "data.adv"] {
            let path = directory.appendingPathComponent(name).path
            guard let data = FileBytes.contents(path) else { throw LoadError.missing(path: path) }
            let text = String(decoding: data, as: UTF8.self)
            for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                if line.isEmpty || line.hasPrefix("  ") { continue }  // licence header
                all.append(try parse(line, path: path, line: i + 1))
            }
        }
        return all
    }

    static func parse(_ line: Substring, path: String, line number: Int) throws -> Gloss {
        guard let bar = line.firstIndex(of: "|") else {
            throw LoadError.malformed(path: path, line: number, detail: "no '|' before the gloss")
        }
        let fields = line[..<bar].split(separator: " ")
        guard fields.count >= 6, let offset = Int(fields[0]), let lex = Int(fields[1]),
            supersenses.indices.contains(lex),
            let pos = fields[2].first, "nvasr".contains(pos)
        else {
            throw LoadError.malformed(
                path: path, line: number, detail: "expected 'offset lex_filenum ss_type w_cnt word ...'")
        }
        var gloss = line[line.index(after: bar)...].trimmingCharacters(in: .whitespaces)
        if let example = gloss.range(of: "; \"") { gloss = String(gloss[..<example.lowerBound]) }
        // Adjective words may carry a syntactic marker such as "(a)" or "(p)".
        var lemma = fields[4].replacingOccurrences(of: "_", with: " ")
        if let paren = lemma.firstIndex(of: "(") { lemma = String(lemma[..<paren]) }
        return Gloss(partOfSpeech: pos, offset: offset, lemma: lemma, definition: gloss, supersense: lex)
    }

    /// A fixed split: a gloss is in the development set when a hash of its part of speech and offset falls in the
    /// last `developmentPercent` of 100 buckets. The same database always gives the same split.
    public static func isDevelopment(_ g: Gloss, developmentPercent: Int = 10) -> Bool {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325  // FNV-1a over "pos:offset"
        for b in "\(g.partOfSpeech):\(g.offset)".utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        return Int(h % 100) >= 100 - developmentPercent
    }
}
