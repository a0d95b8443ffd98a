import Foundation
import ReinsTensor

/// Why a data file cannot be used; every case names the file, and the line and field where it applies.
public enum DataError: Error, CustomStringConvertible, Equatable {
    case unreadable(path: String)
    case malformed(path: String, line: Int, detail: String)
    case missingField(path: String, line: Int, field: String)
    case badValue(path: String, line: Int, field: String, detail: String)
    case empty(path: String)

    public var description: String {
        switch self {
        case let .unreadable(path): return "\(path): cannot be read"
        case let .malformed(path, line, detail): return "\(path):\(line): \(detail)"
        case let .missingField(path, line, field): return "\(path):\(line): missing field '\(field)'"
        case let .badValue(path, line, field, detail): return "\(path):\(line): field '\(field)': \(detail)"
        case let .empty(path): return "\(path): no records"
        }
    }
}

/// Training data files: JSON Lines (`.jsonl`, one object per line) or CSV (`.csv`, a header row, RFC 4180 quoting).
public enum DataFiles {
    /// One record: its fields as strings (JSON numbers and booleans are written out) and its line number.
    public struct Record {
        public let line: Int
        public let fields: [String: String]
        let path: String

        /// The field `name`, or a ``DataError/missingField(path:line:field:)``.
        public func require(_ name: String) throws -> String {
            guard let v = fields[name] else { throw DataError.missingField(path: path, line: line, field: name) }
            return v
        }
    }

    /// Every record of a `.jsonl` or `.csv` file (by extension; anything else is read as JSON Lines).
    /// - Throws: ``DataError`` naming the file and line of a malformed record, or an empty file.
    public static func records(_ url: URL) throws -> [Record] {
        guard let data = FileBytes.contents(url.path) else { throw DataError.unreadable(path: url.path) }
        let text = String(decoding: data, as: UTF8.self)
        let records =
            url.pathExtension.lowercased() == "csv"
            ? try csv(text, path: url.path) : try jsonLines(text, path: url.path)
        guard !records.isEmpty else { throw DataError.empty(path: url.path) }
        return records
    }

    /// The non-blank lines of a JSON Lines text, trimmed, with their line numbers.
    static func nonBlankLines(_ text: String) -> [(line: Int, text: String)] {
        text.split(separator: "\n", omittingEmptySubsequences: false).enumerated().compactMap { i, line in
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            return trimmed.isEmpty ? nil : (i + 1, trimmed)
        }
    }

    /// Each non-blank line's JSON object with its line number.
    static func jsonObjectLines(_ text: String, path: String) throws -> [(line: Int, object: [String: Any])] {
        try nonBlankLines(text).map { line, text in
            guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
                throw DataError.malformed(path: path, line: line, detail: "not a JSON object")
            }
            return (line, object)
        }
    }

    static func jsonLines(_ text: String, path: String) throws -> [Record] {
        try jsonObjectLines(text, path: path).map { line, object in
            var fields: [String: String] = [:]
            for (k, v) in object {
                switch v {
                case let s as String: fields[k] = s
                case let n as NSNumber:
                    fields[k] = String(cString: n.objCType) == "c" ? (n.boolValue ? "true" : "false") : n.stringValue
                case is NSNull: continue
                default:
                    throw DataError.badValue(path: path, line: line, field: k, detail: "expected a string or a number")
                }
            }
            return Record(line: line, fields: fields, path: path)
        }
    }

    static func csv(_ text: String, path: String) throws -> [Record] {
        var rows: [(line: Int, cells: [String])] = []
        var cells: [String] = [], cell = "", quoted = false, line = 1, rowLine = 1, afterQuote = false
        var iterator = text.makeIterator()
        func endRow() {
            cells.append(cell)
            if !(cells.count == 1 && cells[0].isEmpty) { rows.append((rowLine, cells)) }
            cells = []; cell = ""
        }
        while let c = iterator.next() {
            if quoted {
                if c == "\"" {
                    quoted = false; afterQuote = true
                } else {
                    if c == "\n" || c == "\r\n" { line += 1 }; cell.append(c)
                }
                continue
            }
            switch c {
            case "\"":
                if afterQuote {
                    cell.append("\""); quoted = true; afterQuote = false
                }  // "" inside quotes
                else if cell.isEmpty {
                    quoted = true
                } else {
                    throw DataError.malformed(path: path, line: line, detail: "a quote inside an unquoted cell")
                }
            case ",": cells.append(cell); cell = ""; afterQuote = false
            case "\n", "\r\n":
                endRow(); line += 1; rowLine = line; afterQuote = false
            case "\r": continue
            default:
                if afterQuote {
                    throw DataError.malformed(path: path, line: line, detail: "text after a closing quote")
                }
                cell.append(c)
            }
        }
        if quoted { throw DataError.malformed(path: path, line: rowLine, detail: "a quoted cell is not closed") }
        if !cell.isEmpty || !cells.isEmpty { endRow() }
        guard let header = rows.first else { return [] }
        return try rows.dropFirst().map { row in
            guard row.cells.count == header.cells.count else {
                throw DataError.malformed(
                    path: path, line: row.line, detail: "\(row.cells.count) cells, the header has \(header.cells.count)"
                )
            }
            return Record(
                line: row.line, fields: Dictionary(zip(header.cells, row.cells), uniquingKeysWith: { a, _ in a }),
                path: path)
        }
    }

    /// Integer class labels are class indices below this (token ids and class ids are `Int32` in batches).
    public static let maximumClassIndex = Int(Int32.max)

    /// Classification examples: the text in `textField`, an optional second text in `pairField`, and the label in
    /// `labelField` — a name from `labels` or, when `labels` is empty, an integer class index (0-based).
    /// - Throws: ``DataError`` naming the file, line and field of a missing field or an unknown label.
    public static func classification(
        _ url: URL, labels: [String], textField: String = "text", pairField: String? = nil,
        labelField: String = "label"
    ) throws -> [LabeledText] {
        try records(url).map { r in
            let raw = try r.require(labelField)
            let label: Int
            if labels.isEmpty {
                guard let n = Int(raw), n >= 0 else {
                    throw DataError.badValue(
                        path: r.path, line: r.line, field: labelField,
                        detail: "'\(raw)' is not a class index (give --labels to use names)")
                }
                // A class index sizes the head (index + 1 outputs): refuse one no head could have before anything is built.
                guard n < DataFiles.maximumClassIndex else {
                    throw DataError.badValue(
                        path: r.path, line: r.line, field: labelField,
                        detail:
                            "class index \(n) is not below \(DataFiles.maximumClassIndex) (give --labels to use names)")
                }
                label = n
            } else {
                guard let n = labels.firstIndex(of: raw) else {
                    throw DataError.badValue(
                        path: r.path, line: r.line, field: labelField,
                        detail: "'\(raw)' is not one of the labels \(labels)")
                }
                label = n
            }
            return LabeledText(
                text: try r.require(textField), pair: try pairField.map { try r.require($0) }, label: label)
        }
    }

    /// Causal-LM examples: `text` (every token is learned), or `prompt` + `completion` (only the completion is).
    public static func languageModeling(_ url: URL) throws -> [(prompt: String, completion: String)] {
        try records(url).map { r in
            if let text = r.fields["text"] { return ("", text) }
            guard r.fields["prompt"] != nil || r.fields["completion"] != nil else {
                throw DataError.missingField(path: r.path, line: r.line, field: "text (or prompt and completion)")
            }
            return (try r.require("prompt"), try r.require("completion"))
        }
    }

    /// Conversations for instruction tuning: each record's `messages` (a list of `{role, content}`), or a `prompt` and
    /// a `completion` (a user turn and the assistant's answer).
    /// - Throws: ``DataError`` naming the line of a record with neither, or a message without a string role or content.
    public static func conversations(_ url: URL) throws -> [[ChatTemplate.Message]] {
        guard let data = FileBytes.contents(url.path) else { throw DataError.unreadable(path: url.path) }
        let lines = try jsonObjectLines(String(decoding: data, as: UTF8.self), path: url.path)
        guard !lines.isEmpty else { throw DataError.empty(path: url.path) }
        return try lines.map { line, object in
            if let messages = object["messages"] {
                guard let list = messages as? [[String: Any]], !list.isEmpty else {
                    throw DataError.badValue(
                        path: url.path, line: line, field: "messages", detail: "expected a non-empty list of {role, content}")
                }
                return try list.enumerated().map { k, m in
                    guard let role = m["role"] as? String, let content = m["content"] as? String else {
                        throw DataError.badValue(
                            path: url.path, line: line, field: "messages",
                            detail: "message \(k + 1) needs a string role and a string content")
                    }
                    return ChatTemplate.Message(role: role, content: content)
                }
            }
            guard let prompt = object["prompt"] as? String, let completion = object["completion"] as? String else {
                throw DataError.missingField(path: url.path, line: line, field: "messages (or prompt and completion)")
            }
            return [.init(role: "user", content: prompt), .init(role: "assistant", content: completion)]
        }
    }

    /// Token-classification examples: `tokens` (words separated by spaces) and `tags` (one tag name per word, from
    /// `tags`).
    public static func taggedWords(_ url: URL, tags: [String]) throws -> [TaggedWords] {
        try records(url).map { r in
            let words = try r.require("tokens").split(separator: " ").map(String.init)
            let names = try r.require("tags").split(separator: " ").map(String.init)
            guard words.count == names.count else {
                throw DataError.badValue(
                    path: r.path, line: r.line, field: "tags", detail: "\(names.count) tags for \(words.count) tokens")
            }
            return TaggedWords(
                words: words,
                tags: try names.map { n in
                    guard let i = tags.firstIndex(of: n) else {
                        throw DataError.badValue(
                            path: r.path, line: r.line, field: "tags", detail: "'\(n)' is not one of \(tags)")
                    }
                    return i
                })
        }
    }

    /// Question-answering examples: `question`, `context`, `answer` and `answer_start` (where the answer text occurs
    /// in the context, counted in Unicode code points as Python's string indices and SQuAD count).
    public static func questionAnswers(_ url: URL) throws -> [QuestionAnswer] {
        try records(url).map { r in
            let context = try r.require("context"), answer = try r.require("answer")
            let scalars = context.unicodeScalars
            guard let start = Int(try r.require("answer_start")), start >= 0, start <= scalars.count else {
                throw DataError.badValue(
                    path: r.path, line: r.line, field: "answer_start", detail: "not a character offset into the context"
                )
            }
            guard scalars.dropFirst(start).starts(with: answer.unicodeScalars) else {
                throw DataError.badValue(
                    path: r.path, line: r.line, field: "answer",
                    detail: "the context does not contain it at answer_start \(start)")
            }
            return QuestionAnswer(
                question: try r.require("question"), context: context, answer: answer, answerStart: start)
        }
    }
}
