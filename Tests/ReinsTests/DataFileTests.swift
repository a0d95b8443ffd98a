import Foundation
import Reins
import ReinsDemoData
import ReinsTestSupport
import Testing

/// Data loaders read JSONL and CSV and name the file, line and field of every problem; WordNet entries parse.
struct DataFileTests {
    func write(_ text: String, _ name: String) throws -> URL {
        let url = try temporaryDirectory().appendingPathComponent(name)
        try Data(text.utf8).write(to: url)
        return url
    }

    @Test func jsonlAndCSVGiveTheSameExamples() throws {
        let jsonl = try write(
            "{\"text\": \"a cat\", \"label\": \"pos\"}\n\n{\"text\": \"b, \\\"dog\\\"\", \"label\": \"neg\"}\n",
            "d.jsonl")
        let csv = try write("text,label\r\na cat,pos\n\"b, \"\"dog\"\"\",neg\n", "d.csv")
        let a = try DataFiles.classification(jsonl, labels: ["neg", "pos"]),
            b = try DataFiles.classification(csv, labels: ["neg", "pos"])
        #expect(a == [LabeledText(text: "a cat", label: 1), LabeledText(text: "b, \"dog\"", label: 0)])
        #expect(a == b)
        let numeric = try write("{\"text\": \"x\", \"label\": 2}\n", "n.jsonl")
        #expect(try DataFiles.classification(numeric, labels: []) == [LabeledText(text: "x", label: 2)])
        let lm = try write("{\"prompt\": \"Q: 2+2?\", \"completion\": \" 4\"}\n{\"text\": \"plain\"}\n", "lm.jsonl")
        #expect(try DataFiles.languageModeling(lm).map { "\($0.prompt)|\($0.completion)" } == ["Q: 2+2?| 4", "|plain"])
    }

    @Test func malformedFilesNameTheFileLineAndField() throws {
        let bad = try write("{\"text\": \"ok\", \"label\": \"pos\"}\n{\"text\": \"no label\"}\n", "bad.jsonl")
        #expect(throws: DataError.missingField(path: bad.path, line: 2, field: "label")) {
            try DataFiles.classification(bad, labels: ["pos"])
        }
        let unknown = try write("{\"text\": \"t\", \"label\": \"maybe\"}\n", "u.jsonl")
        #expect(
            throws: DataError.badValue(
                path: unknown.path, line: 1, field: "label",
                detail: "'maybe' is not one of the labels [\"pos\", \"neg\"]")
        ) {
            try DataFiles.classification(unknown, labels: ["pos", "neg"])
        }
        let broken = try write("{\"text\": \"t\", \"label\": 1}\n{\"text\": \n", "b.jsonl")
        #expect(throws: DataError.malformed(path: broken.path, line: 2, detail: "not a JSON object")) {
            try DataFiles.records(broken)
        }
        let ragged = try write("text,label\na,1\nb\n", "r.csv")
        #expect(throws: DataError.malformed(path: ragged.path, line: 3, detail: "1 cells, the header has 2")) {
            try DataFiles.records(ragged)
        }
        let open = try write("text,label\n\"never closed,1\n", "o.csv")
        #expect(throws: DataError.malformed(path: open.path, line: 2, detail: "a quoted cell is not closed")) {
            try DataFiles.records(open)
        }
        let empty = try write("\n", "e.jsonl")
        #expect(throws: DataError.empty(path: empty.path)) { try DataFiles.records(empty) }
        #expect(throws: DataError.unreadable(path: "/nonexistent/x.jsonl")) {
            try DataFiles.records(URL(fileURLWithPath: "/nonexistent/x.jsonl"))
        }
    }

    @Test func answerStartCountsCodePointsAsSQuADDoes() throws {
        // "e\u{301}" and "\r\n" are one Character each in Swift, two code points each in Python: "paris" starts at 21.
        func record(_ start: Int) -> String {
            #"{"question": "where?", "context": "cafe\u0301\r\njohn lives in paris", "answer": "paris", "answer_start": \#(start)}"#
        }
        let good = try write(record(21) + "\n", "qa.jsonl")
        #expect(try DataFiles.questionAnswers(good).map(\.answerStart) == [21])
        let bad = try write(record(19) + "\n", "bad.jsonl")
        #expect(
            throws: DataError.badValue(
                path: bad.path, line: 1, field: "answer", detail: "the context does not contain it at answer_start 19")
        ) {
            try DataFiles.questionAnswers(bad)
        }
    }

    @Test func wordNetEntriesParseAndBadOnesAreNamed() throws {
        let dir = try temporaryDirectory()
        let noun =
            "  1 This software and database is provided\n02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 000 | a member of the genus Canis; \"the dog barked\"\n"
        try Data(noun.utf8).write(to: dir.appendingPathComponent("data.noun"))
        try Data("00001740 29 v 01 breathe 0 000 | draw air into, and expel out of, the lungs\n".utf8).write(
            to: dir.appendingPathComponent("data.verb"))
        try Data("00001740 00 a 01 able(a) 0 000 | having the necessary means\n".utf8).write(
            to: dir.appendingPathComponent("data.adj"))
        try Data("00001740 02 r 01 a_cappella 0 000 | without musical accompaniment\n".utf8).write(
            to: dir.appendingPathComponent("data.adv"))
        let g = try WordNet.glosses(directory: dir)
        #expect(
            g.map(\.text) == [
                "dog: a member of the genus Canis", "breathe: draw air into, and expel out of, the lungs",
                "able: having the necessary means", "a cappella: without musical accompaniment",
            ])
        #expect(g.map { WordNet.supersenses[$0.supersense] } == ["noun.animal", "verb.body", "adj.all", "adv.all"])
        try Data("02084071 77 n 03 dog 0 | bad lexicographer file\n".utf8).write(
            to: dir.appendingPathComponent("data.noun"))
        #expect(
            throws: WordNet.LoadError.malformed(
                path: dir.appendingPathComponent("data.noun").path, line: 1,
                detail: "expected 'offset lex_filenum ss_type w_cnt word ...'")
        ) { try WordNet.glosses(directory: dir) }
        try FileManager.default.removeItem(at: dir.appendingPathComponent("data.verb"))
        try Data("02084071 05 n 01 dog 0 000 | fine\n".utf8).write(to: dir.appendingPathComponent("data.noun"))
        #expect(throws: WordNet.LoadError.missing(path: dir.appendingPathComponent("data.verb").path)) {
            try WordNet.glosses(directory: dir)
        }
    }
}
