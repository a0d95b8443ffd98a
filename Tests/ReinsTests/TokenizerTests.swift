import Foundation
import Reins
import ReinsTestSupport
import Testing

/// Tokenizers against Hugging Face `tokenizers` (Tests/Fixtures/make_tokenizer_fixtures.py) on texts with CJK, emoji,
/// accents, whitespace runs, long words, contractions and special tokens.
struct TokenizerTests {
    static let folder = Fixtures.directory.appendingPathComponent("tokenizers")
    let expected: [String: Any]

    init() throws {
        expected =
            try JSONSerialization.jsonObject(
                with: Data(contentsOf: Self.folder.appendingPathComponent("expected.json"))) as! [String: Any]
    }

    func section(_ name: String) -> [String: Any] { expected[name] as! [String: Any] }
    func idLists(_ value: Any?) -> [[Int32]] { (value as! [[Int]]).map { $0.map(Int32.init) } }

    @Test(arguments: ["vocab.txt", "tokenizer.json"])
    func wordPieceMatchesTokenizers(file: String) throws {
        let path = Self.folder.appendingPathComponent("wordpiece/\(file)").path
        let tok =
            file == "vocab.txt"
            ? try WordPieceTokenizer(vocabularyFile: path) : try WordPieceTokenizer(tokenizerJSON: path)
        let s = section("wordpiece"), texts = s["texts"] as! [String]
        for (text, ids) in zip(texts, idLists(s["ids"])) {
            #expect(try tok.encode(text).ids == ids, "\(text.debugDescription)")
        }
        for (text, ids) in zip(texts, idLists(s["truncated_max9"])) {
            #expect(
                try tok.encode(text, options: EncodingOptions(maxLength: 9)).ids == ids,
                "truncated \(text.debugDescription)")
        }
        for (key, options) in [("pairs", EncodingOptions()), ("truncated_pairs_max9", EncodingOptions(maxLength: 9))] {
            for p in s[key] as! [[String: Any]] {
                let e = try tok.encode(p["a"] as! String, pair: p["b"] as? String, options: options)
                #expect(e.ids == (p["ids"] as! [Int]).map(Int32.init), "\(key): \(p["a"]!)")
                #expect(e.typeIDs == (p["type_ids"] as! [Int]).map(Int32.init), "\(key) types: \(p["a"]!)")
            }
        }
        for (ids, text) in zip(idLists(s["ids"]), s["decoded"] as! [String]) {
            #expect(tok.decode(ids) == text)
        }
    }

    @Test func wordPieceBatchesPad() throws {
        let tok = try WordPieceTokenizer(vocabularyFile: Self.folder.appendingPathComponent("wordpiece/vocab.txt").path)
        let batch = try tok.encodeBatch(["the dog", "the quick brown fox jumps"])
        #expect(batch[0].ids.count == batch[1].ids.count)
        #expect(
            batch[0].attentionMask.suffix(3) == [0, 0, 0]
                && batch[0].ids.suffix(3) == [tok.padID, tok.padID, tok.padID])
        #expect(batch[1].attentionMask.allSatisfy { $0 == 1 })
        let fixed = try tok.encodeBatch(["the dog"], options: EncodingOptions(maxLength: 10, padding: .maxLength))
        #expect(fixed[0].ids.count == 10)
    }

    @Test(arguments: ["vocab.json", "tokenizer.json"])
    func byteLevelBPEMatchesTokenizers(file: String) throws {
        let dir = Self.folder.appendingPathComponent("bpe")
        let tok =
            file == "vocab.json"
            ? try BPETokenizer(
                vocabularyFile: dir.appendingPathComponent("vocab.json").path,
                mergesFile: dir.appendingPathComponent("merges.txt").path)
            : try BPETokenizer(tokenizerJSON: dir.appendingPathComponent("tokenizer.json").path)
        let s = section("bpe")
        for (text, ids) in zip(s["texts"] as! [String], idLists(s["ids"])) {
            #expect(tok.encode(text) == ids, "\(text.debugDescription)")
        }
        for (ids, text) in zip(idLists(s["ids"]), s["decoded"] as! [String]) {
            #expect(tok.decode(ids) == text)
        }
        // Byte-level BPE is lossless.
        for text in s["texts"] as! [String] { #expect(tok.decode(tok.encode(text)) == text) }
    }

    @Test func badTokenizerFilesThrowNamedErrors() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let vocab = dir.appendingPathComponent("vocab.txt")
        try "[PAD]\n[CLS]\n[SEP]\nhello\n".write(to: vocab, atomically: true, encoding: .utf8)
        #expect(throws: TokenizerError.missingSpecialToken("[UNK]")) {
            try WordPieceTokenizer(vocabularyFile: vocab.path)
        }
        #expect { try WordPieceTokenizer(vocabularyFile: dir.appendingPathComponent("absent.txt").path) } throws: {
            "\($0)".contains("cannot read")
        }
        let merges = dir.appendingPathComponent("merges.txt"), json = dir.appendingPathComponent("vocab.json")
        try "#version: 0.2\na b\nthree parts here\n".write(to: merges, atomically: true, encoding: .utf8)
        try "{\"a\": 0}".write(to: json, atomically: true, encoding: .utf8)
        #expect(
            throws: TokenizerError.malformed(
                path: merges.path, line: 3, detail: "a merge is two symbols separated by one space")
        ) {
            try BPETokenizer(vocabularyFile: json.path, mergesFile: merges.path)
        }
        try "#version: 0.2\na b\n".write(to: merges, atomically: true, encoding: .utf8)
        #expect { try BPETokenizer(vocabularyFile: json.path, mergesFile: merges.path) } throws: {
            "\($0)".contains("which is not in the vocabulary")
        }
        try "not json".write(to: json, atomically: true, encoding: .utf8)
        #expect { try BPETokenizer(tokenizerJSON: json.path) } throws: { "\($0)".contains("not a JSON object") }
    }

    /// A vocabulary may lack bytes its training text never had (SmolLM2's lacks some control bytes): such a byte
    /// encodes as the unknown token when the model names one, and is dropped when it does not, as `tokenizers` does.
    @Test func aByteMissingFromTheVocabularyIsTheUnknownTokenOrDropped() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        var json = try JSONSerialization.jsonObject(
            with: Data(contentsOf: Fixtures.directory.appendingPathComponent("tokenizers/smollm/tokenizer.json")))
            as! [String: Any]
        var model = json["model"] as! [String: Any]
        var vocab = model["vocab"] as! [String: Any]
        let missing = "\u{104}"  // byte 4 (U+0004) as byte-level BPE writes it
        #expect(vocab[missing] != nil)
        vocab[missing] = nil
        model["vocab"] = vocab
        for unk in ["<|endoftext|>", nil] as [String?] {
            model["unk_token"] = unk ?? NSNull()
            json["model"] = model
            let path = dir.appendingPathComponent("tokenizer.json")
            try JSONSerialization.data(withJSONObject: json).write(to: path)
            let t = try BPETokenizer(tokenizerJSON: path.path)
            // The pre-tokenizer isolates the byte: "a", "\u{4}", "b".
            let expected = t.encode("a") + (unk.flatMap { t.id(of: $0) }.map { [$0] } ?? []) + t.encode("b")
            #expect(t.encode("a\u{4}b") == expected, "unknown token \(unk ?? "none")")
        }
    }
}
