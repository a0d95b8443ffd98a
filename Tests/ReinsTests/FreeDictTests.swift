import Foundation
import ReinsDemoData
import ReinsTestSupport
import Testing
@testable import ReinsDemoData

/// The English-French dictionary the decoder demo translates (Debian's dict-freedict-eng-fra, installed by
/// .ci/install-deps): its dictd index and compressed articles parsed, and bad files refused by name.
struct FreeDictTests {
    @Test func readsTheInstalledDictionary() throws {
        let entries = try FreeDict.entries()
        #expect(entries.count > 8000, "\(entries.count) entries")
        let byWord = Dictionary(entries.map { ($0.headword, $0) }, uniquingKeysWith: { a, _ in a })
        #expect(byWord["abandon"]?.translations.isEmpty == false)
        #expect(byWord["Albanian"]?.senses == [["albanais"], ["Albanais"]])
        #expect(byWord["AIDS"]?.senses == [["sida"]])
        #expect(byWord["Afro-Asian"]?.senses == [["afro-asiatique"]], "U+2010 hyphens read as '-'")
        #expect(!entries.contains { $0.headword.hasPrefix("00database") })
    }

    @Test func translationSplitIsFixedAndDisjoint() throws {
        let (train, dev, held) = try FreeDict.translationSplit()
        #expect(train.count > 4000 && dev.count > 400 && held.count > 400, "\(train.count) / \(dev.count) / \(held.count)")
        let sets = [train, dev, held].map { Set($0.map(\.english)) }
        #expect(sets[0].isDisjoint(with: sets[1]) && sets[0].isDisjoint(with: sets[2]) && sets[1].isDisjoint(with: sets[2]))
        #expect(held.allSatisfy { $0.accepted.contains($0.reference) && $0.english.first!.isLowercase })
        // The hash decides, not the order: a lone entry lands where it lands in the whole dictionary.
        let one = held[0]
        let alone = try FreeDict.translationSplit([.init(headword: one.english, senses: [[one.reference]])])
        #expect(alone.heldOut.map(\.english) == [one.english] && alone.train.isEmpty)
    }

    @Test func base64Numbers() {
        #expect(FreeDict.base64Number("A") == 0)
        #expect(FreeDict.base64Number("BW") == 64 + 22)
        #expect(FreeDict.base64Number("LOB") == (11 * 64 + 14) * 64 + 1)
        #expect(FreeDict.base64Number("") == nil && FreeDict.base64Number("a-b") == nil)
        #expect(FreeDict.base64Number("//////////") == nil)  // past 2^40: refused, not overflowed
    }

    @Test func badFilesAreRefusedByName() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(throws: FreeDict.LoadError.missing(path: dir.appendingPathComponent("x.index").path)) {
            try FreeDict.entries(directory: dir, name: "x")
        }
        let text = "hello /h/\nbonjour, salut\n"
        let gz = try Self.gzip(Data(text.utf8))
        try gz.write(to: dir.appendingPathComponent("t.dict.dz"))
        try "hello\tA\tZ\n".write(to: dir.appendingPathComponent("t.index"), atomically: true, encoding: .utf8)  // 25 bytes
        #expect(try FreeDict.entries(directory: dir, name: "t") == [.init(headword: "hello", senses: [["bonjour", "salut"]])])
        try "hello\tA\tzz\n".write(to: dir.appendingPathComponent("t.index"), atomically: true, encoding: .utf8)
        #expect(throws: FreeDict.LoadError.self) { try FreeDict.entries(directory: dir, name: "t") }  // outside the text
        try "hello A S\n".write(to: dir.appendingPathComponent("t.index"), atomically: true, encoding: .utf8)
        #expect(throws: FreeDict.LoadError.self) { try FreeDict.entries(directory: dir, name: "t") }  // no tabs
        try gz.prefix(gz.count / 2).write(to: dir.appendingPathComponent("t.dict.dz"))
        try "hello\tA\tZ\n".write(to: dir.appendingPathComponent("t.index"), atomically: true, encoding: .utf8)
        #expect(throws: FreeDict.LoadError.self) { try FreeDict.entries(directory: dir, name: "t") }  // truncated
        try Data("not gzip at all".utf8).write(to: dir.appendingPathComponent("t.dict.dz"))
        #expect(throws: FreeDict.LoadError.self) { try FreeDict.entries(directory: dir, name: "t") }
    }

    /// gzip by the system's tool, for a test input.
    static func gzip(_ data: Data) throws -> Data {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/gzip")
        p.arguments = ["-c"]
        let input = Pipe(), output = Pipe()
        (p.standardInput, p.standardOutput) = (input, output)
        try p.run()
        input.fileHandleForWriting.write(data)
        try input.fileHandleForWriting.close()
        let out = output.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return out
    }
}
