import CZlib
import Foundation

/// An English-French dictionary read from the dictd files Debian's `dict-freedict-eng-fra` installs in
/// `/usr/share/dictd`: `freedict-eng-fra.index` (one `headword TAB offset TAB length` line per article, offset and
/// length in dictd's base-64 digits) and `freedict-eng-fra.dict.dz` (the articles, gzip-compressed).
///
/// An article is the headword with its pronunciation (`abandon /əbændən/`), then its translations: one line of
/// comma-separated alternatives, or numbered senses (`1. africain` / `2. Africain`), each such a line.
public enum FreeDict {
    /// One headword and its translations.
    public struct Entry: Sendable, Equatable {
        public var headword: String
        /// Each sense's alternatives, in the article's order; the first of the first is the main translation.
        public var senses: [[String]]
        /// Every alternative of every sense.
        public var translations: [String] { senses.flatMap { $0 } }
    }

    /// Where Debian puts the dictionaries, or `REINS_DICTD_DIR`.
    public static var defaultDirectory: URL {
        URL(fileURLWithPath: ProcessInfo.processInfo.environment["REINS_DICTD_DIR"] ?? "/usr/share/dictd")
    }

    public typealias LoadError = DemoDataError

    /// One translation item: the English, its main French translation (the reference), every accepted translation.
    public struct TranslationItem: Sendable, Equatable {
        public let english: String, reference: String, accepted: [String]
    }

    /// The dictionary as a translation task a small model can be scored on: lowercase English headwords of at most
    /// three words of letters (and `-`, `'`), their main translation at most four such words; split into training,
    /// development and held-out items (8 : 1 : 1) by a fixed hash of the headword (FNV-1a), the same on every machine.
    public static func translationSplit(_ entries: [Entry]? = nil) throws -> (train: [TranslationItem], dev: [TranslationItem], heldOut: [TranslationItem]) {
        var train: [TranslationItem] = [], dev: [TranslationItem] = [], held: [TranslationItem] = []
        let allowed = CharacterSet.letters.union(CharacterSet(charactersIn: " -'"))
        for e in try entries ?? FreeDict.entries() {
            let english = e.headword
            guard let first = english.unicodeScalars.first, CharacterSet.lowercaseLetters.contains(first),
                english.unicodeScalars.allSatisfy(allowed.contains), english.split(separator: " ").count <= 3,
                let reference = e.senses.first?.first, reference.split(separator: " ").count <= 4,
                reference.unicodeScalars.allSatisfy(allowed.contains)
            else { continue }
            let item = TranslationItem(english: english, reference: reference, accepted: e.translations)
            var h: UInt64 = 0xcbf2_9ce4_8422_2325
            for b in english.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            switch h % 10 {
            case 0: held.append(item)
            case 1: dev.append(item)
            default: train.append(item)
            }
        }
        return (train, dev, held)
    }

    /// The decompressed size a `.dict.dz` may have (the English-French one is ~0.5 MB): a larger claim is refused.
    static let maximumTextBytes = 64 << 20

    /// Every article of dictionary `name` (its `00database…` entries skipped), in index order.
    /// - Throws: ``LoadError`` naming a missing file, or the file and line of a malformed index entry or article.
    public static func entries(directory: URL = defaultDirectory, name: String = "freedict-eng-fra") throws -> [Entry] {
        let indexPath = directory.appendingPathComponent("\(name).index").path
        let dictPath = directory.appendingPathComponent("\(name).dict.dz").path
        for path in [indexPath, dictPath] where !FileManager.default.fileExists(atPath: path) {
            throw LoadError.missing(path: path)
        }
        let text = try gunzip(try Data(contentsOf: URL(fileURLWithPath: dictPath)), path: dictPath)
        let index = try String(decoding: Data(contentsOf: URL(fileURLWithPath: indexPath)), as: UTF8.self)
        var entries: [Entry] = []
        for (n, line) in index.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where !line.isEmpty {
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false)
            guard fields.count == 3, let offset = base64Number(fields[1]), let length = base64Number(fields[2]) else {
                throw LoadError.malformed(path: indexPath, line: n + 1, detail: "not 'headword TAB offset TAB length'")
            }
            guard offset <= text.count, length <= text.count - offset else {
                throw LoadError.malformed(
                    path: indexPath, line: n + 1, detail: "bytes \(offset)..<\(offset + length) lie outside the \(text.count)-byte text")
            }
            let headword = String(fields[0])
            if headword.hasPrefix("00database") || headword.hasPrefix("00-database") { continue }
            let article = String(decoding: text[offset..<(offset + length)], as: UTF8.self)
            if let entry = parseArticle(article, headword: headword) { entries.append(entry) }
        }
        return entries
    }

    /// An article's senses; nil for an article with no translation line.
    static func parseArticle(_ article: String, headword: String) -> Entry? {
        // U+2010 and U+2011 (hyphens) as the ASCII hyphen a model writes.
        let clean = article.replacingOccurrences(of: "\u{2010}", with: "-").replacingOccurrences(of: "\u{2011}", with: "-")
        let lines = clean.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard lines.count >= 2 else { return nil }
        var senses: [[String]] = []
        for line in lines.dropFirst() {
            var body = Substring(line)
            // "1. text": a numbered sense.
            if let dot = body.firstIndex(of: "."), body[..<dot].allSatisfy(\.isNumber), !body[..<dot].isEmpty {
                body = body[body.index(after: dot)...]
            }
            let alternatives = body.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            if !alternatives.isEmpty { senses.append(alternatives) }
        }
        guard !senses.isEmpty else { return nil }
        // The article's own spelling (the index lowercases), without its pronunciation.
        var word = lines[0]
        if let slash = word.range(of: " /") { word = String(word[..<slash.lowerBound]) }
        if word.isEmpty { word = headword }
        return Entry(headword: word.trimmingCharacters(in: .whitespaces), senses: senses)
    }

    /// A number in dictd's base 64 (digits `A-Z a-z 0-9 + /`, most significant first); nil for another character
    /// or a value past 2^40.
    static func base64Number(_ s: Substring) -> Int? {
        guard !s.isEmpty else { return nil }
        var value = 0
        for c in s.unicodeScalars {
            let digit: Int
            switch c {
            case "A"..."Z": digit = Int(c.value - 65)
            case "a"..."z": digit = Int(c.value - 97) + 26
            case "0"..."9": digit = Int(c.value - 48) + 52
            case "+": digit = 62
            case "/": digit = 63
            default: return nil
            }
            value = value * 64 + digit
            if value > 1 << 40 { return nil }
        }
        return value
    }

    /// A gzip stream (dictzip is gzip with an index in its header) decompressed, at most ``maximumTextBytes``.
    static func gunzip(_ data: Data, path: String) throws -> Data {
        var stream = z_stream()
        guard inflateInit2_(&stream, 16 + MAX_WBITS, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw LoadError.malformed(path: path, line: 0, detail: "zlib could not start")
        }
        defer { inflateEnd(&stream) }
        var out = Data()
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var status: Int32 = Z_OK
        try data.withUnsafeBytes { (input: UnsafeRawBufferPointer) in
            guard let base = input.bindMemory(to: UInt8.self).baseAddress else {
                throw LoadError.malformed(path: path, line: 0, detail: "empty file")
            }
            stream.next_in = UnsafeMutablePointer(mutating: base)
            stream.avail_in = uInt(input.count)
            repeat {
                let produced = chunk.withUnsafeMutableBufferPointer { buffer -> Int in
                    stream.next_out = buffer.baseAddress
                    stream.avail_out = uInt(buffer.count)
                    status = inflate(&stream, Z_NO_FLUSH)
                    return buffer.count - Int(stream.avail_out)
                }
                guard status == Z_OK || status == Z_STREAM_END else {
                    throw LoadError.malformed(path: path, line: 0, detail: "not a gzip stream, or a damaged one (zlib status \(status))")
                }
                out.append(contentsOf: chunk[0..<produced])
                guard out.count <= maximumTextBytes else {
                    throw LoadError.malformed(path: path, line: 0, detail: "decompresses to more than \(maximumTextBytes) bytes")
                }
                if status == Z_OK && produced == 0 && stream.avail_in == 0 {
                    throw LoadError.malformed(path: path, line: 0, detail: "truncated gzip stream")
                }
            } while status != Z_STREAM_END
        }
        return out
    }
}
