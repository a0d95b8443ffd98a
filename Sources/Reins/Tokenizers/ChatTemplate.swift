import Foundation

/// A chat template: the Jinja program in a model's `tokenizer_config.json` (`chat_template`) or GGUF metadata
/// (`tokenizer.chat_template`) that turns a conversation into the model's prompt text.
///
/// Rendered as transformers renders it (`apply_chat_template`: Jinja with `trim_blocks` and `lstrip_blocks`, the
/// `raise_exception` and `strftime_now` functions and a `tojson` filter that keeps non-ASCII text). The interpreter
/// covers the language these templates use — `for` (with `loop`, `break`, `continue`, unpacking, a filter `if`),
/// `if`/`elif`/`else`, `set` (also `namespace` attributes), expressions with filters and tests, string methods —
/// and anything else is a named ``ChatTemplateError``, never a wrong prompt.
public struct ChatTemplate: Sendable {
    public let source: String
    let body: [ChatNode]

    /// - Throws: ``ChatTemplateError`` for a template that does not parse or uses what Reins does not implement.
    public init(_ source: String) throws {
        self.source = source
        var parser = ChatParser(tokens: try ChatLexer.tokenize(source))
        body = try parser.parseBody(until: [])
    }

    /// One turn of a conversation.
    public struct Message: Sendable, Equatable {
        public var role: String
        public var content: String
        public init(role: String, content: String) { (self.role, self.content) = (role, content) }
    }

    /// The prompt text for `messages`.
    /// - Parameters:
    ///   - addGenerationPrompt: end with the header of an assistant turn, for generation.
    ///   - variables: further template variables (`bos_token`, `eos_token`, `date_string`, tools ...), as JSON values.
    /// - Throws: ``ChatTemplateError`` (including the template's own `raise_exception`).
    public func render(
        _ messages: [Message], addGenerationPrompt: Bool = false, variables: [String: ChatValue] = [:]
    ) throws -> String {
        var globals = variables
        globals["messages"] = .list(
            messages.map { .dict([("role", .string($0.role)), ("content", .string($0.content))]) })
        globals["add_generation_prompt"] = .bool(addGenerationPrompt)
        var context = ChatContext(scopes: [globals])
        var out = ""
        try ChatInterpreter.run(body, &context, &out)
        return out
    }
}

/// Why a chat template cannot be rendered.
public enum ChatTemplateError: Error, CustomStringConvertible, Equatable {
    case syntax(String)
    case unsupported(String)
    case runtime(String)
    /// The template's own `raise_exception(message)`.
    case raised(String)

    public var description: String {
        switch self {
        case let .syntax(d): return "chat template: \(d)"
        case let .unsupported(d): return "chat template uses something Reins does not implement: \(d)"
        case let .runtime(d): return "chat template: \(d)"
        case let .raised(d): return "chat template refused the conversation: \(d)"
        }
    }
}

/// A Jinja value: what JSON holds, plus `undefined`, mutable namespaces and the loop object.
public indirect enum ChatValue: Sendable {
    case undefined
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([ChatValue])
    /// Keys in insertion order, as Python dictionaries keep them.
    case dict([(String, ChatValue)])
    case namespace(ChatNamespace)

    /// A value from parsed JSON (`JSONSerialization`'s objects).
    public init(json: Any?) {
        switch json {
        case nil, is NSNull: self = .none
        case let s as String: self = .string(s)
        case let n as NSNumber:
            if String(cString: n.objCType) == "c" {
                self = .bool(n.boolValue)
            } else if let i = JSONNumber.exactInt(n) {
                self = .int(i)
            } else {
                self = .double(n.doubleValue)
            }
        case let a as [Any]: self = .list(a.map { ChatValue(json: $0) })
        case let d as [String: Any]: self = .dict(d.keys.sorted().map { ($0, ChatValue(json: d[$0])) })
        default: self = .undefined
        }
    }

    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case let .bool(b): return b
        case let .int(i): return i != 0
        case let .double(d): return d != 0
        case let .string(s): return !s.isEmpty
        case let .list(l): return !l.isEmpty
        case let .dict(d): return !d.isEmpty
        case .namespace: return true
        }
    }

    /// Python's `str()`, which is what `{{ }}` prints.
    var printed: String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case let .bool(b): return b ? "True" : "False"
        case let .int(i): return String(i)
        case let .double(d): return ChatValue.pythonFloat(d)
        case let .string(s): return s
        case .list, .dict, .namespace: return repr
        }
    }

    /// Python's `repr()`.
    var repr: String {
        switch self {
        case let .string(s):
            let quote = s.contains("'") && !s.contains("\"") ? "\"" : "'"
            var out = quote
            for c in s.unicodeScalars {
                switch c {
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                default: out += String(quote) == String(c) ? "\\" + String(c) : String(c)
                }
            }
            return out + quote
        case let .list(l): return "[" + l.map(\.repr).joined(separator: ", ") + "]"
        case let .dict(d): return "{" + d.map { ChatValue.string($0.0).repr + ": " + $0.1.repr }.joined(separator: ", ") + "}"
        case .namespace: return "<Namespace>"
        default: return printed
        }
    }

    static func pythonFloat(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d > 0 ? "inf" : "-inf" }
        if d == d.rounded(), abs(d) < 1e16 { return String(format: "%.1f", d) }
        return "\(d)"
    }

    /// JSON as Python's `json.dumps(ensure_ascii=False)` writes it (transformers' `tojson`).
    func json(indent: Int?, level: Int = 0) throws -> String {
        if let indent, !(0...32).contains(indent) {
            throw ChatTemplateError.unsupported("tojson(indent=\(indent)): an indent outside 0...32")
        }
        guard level < 64 else { throw ChatTemplateError.runtime("tojson of a value nested deeper than 64") }
        let (nl, pad, inner) =
            indent.map { ("\n", String(repeating: " ", count: $0 * level), String(repeating: " ", count: $0 * (level + 1))) }
            ?? ("", "", "")
        let comma = indent == nil ? ", " : ","
        switch self {
        case .none, .undefined: return "null"
        case let .bool(b): return b ? "true" : "false"
        case let .int(i): return String(i)
        case let .double(d): return ChatValue.pythonFloat(d)
        case let .string(s):
            var out = "\""
            for c in s.unicodeScalars {
                switch c {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                case "\u{08}": out += "\\b"
                case "\u{0C}": out += "\\f"
                default:
                    if c.value < 0x20 { out += String(format: "\\u%04x", c.value) } else { out.unicodeScalars.append(c) }
                }
            }
            return out + "\""
        case let .list(l):
            if l.isEmpty { return "[]" }
            return "[" + nl + (try l.map { inner + (try $0.json(indent: indent, level: level + 1)) }).joined(separator: comma + nl)
                + nl + pad + "]"
        case let .dict(d):
            if d.isEmpty { return "{}" }
            return "{" + nl
                + (try d.map { inner + ChatValue.string($0.0).printedJSON + ": " + (try $0.1.json(indent: indent, level: level + 1)) })
                .joined(separator: comma + nl) + nl + pad + "}"
        case .namespace: throw ChatTemplateError.runtime("a namespace cannot be written as JSON")
        }
    }
    var printedJSON: String { (try? json(indent: nil)) ?? "" }

    func attribute(_ name: String) -> ChatValue {
        switch self {
        case let .dict(d): return d.first { $0.0 == name }?.1 ?? .undefined
        case let .namespace(n): return n.values.withLock { $0[name] } ?? .undefined
        default: return .undefined
        }
    }
}

/// `namespace(...)`: the one mutable object Jinja templates have (assignments inside loops survive the loop).
public final class ChatNamespace: @unchecked Sendable {
    let values: Locked<[String: ChatValue]>
    init(_ values: [String: ChatValue]) { self.values = Locked(values) }
}

// MARK: - syntax

indirect enum ChatExpr: Sendable {
    case literal(ChatValue)
    case name(String)
    case list([ChatExpr])
    case dict([(ChatExpr, ChatExpr)])
    case attribute(ChatExpr, String)
    case index(ChatExpr, ChatExpr)
    case slice(ChatExpr, ChatExpr?, ChatExpr?)
    case call(ChatExpr, [ChatExpr], [(String, ChatExpr)])
    case filter(ChatExpr, String, [ChatExpr], [(String, ChatExpr)])
    case test(ChatExpr, String, [ChatExpr], negated: Bool)
    case unary(String, ChatExpr)
    case binary(String, ChatExpr, ChatExpr)
    case conditional(ChatExpr, ChatExpr, ChatExpr?)
}

indirect enum ChatNode: Sendable {
    case text(String)
    case output(ChatExpr)
    case ifChain([(ChatExpr, [ChatNode])], otherwise: [ChatNode])
    case forLoop(targets: [String], iterable: ChatExpr, filter: ChatExpr?, body: [ChatNode], otherwise: [ChatNode])
    case set(target: String, attribute: String?, value: ChatExpr)
    case loopBreak, loopContinue
}

enum ChatToken: Equatable {
    case text(String)
    case output(String)  // the source between {{ and }}
    case statement(String)  // between {% and %}
}

enum ChatLexer {
    /// Splits the source into text, `{{ }}` and `{% %}` parts, applying `-` whitespace control, `trim_blocks` (the
    /// newline after a block tag goes) and `lstrip_blocks` (spaces and tabs before a block tag on its line go), as
    /// transformers configures Jinja. Comments are dropped like blocks.
    static func tokenize(_ source: String) throws -> [ChatToken] {
        var tokens: [ChatToken] = []
        let s = Array(source.unicodeScalars)
        var i = 0, text = String.UnicodeScalarView()
        var trimNextLeading = false, trimNextNewline = false
        func flushText(stripTrailing: Bool, lstripBlock: Bool) {
            var t = Array(text)
            if stripTrailing {
                while let last = t.last, last.properties.isWhitespace { t.removeLast() }
            } else if lstripBlock {
                // Spaces and tabs back to the start of the line (only if nothing else is on the line before the tag).
                var k = t.count
                while k > 0, t[k - 1] == " " || t[k - 1] == "\t" { k -= 1 }
                if k == 0 || t[k - 1] == "\n" { t.removeLast(t.count - k) }
            }
            if !t.isEmpty { tokens.append(.text(String(String.UnicodeScalarView(t)))) }
            text = String.UnicodeScalarView()
        }
        while i < s.count {
            if s[i] == "{", i + 1 < s.count, ["{", "%", "#"].contains(s[i + 1]) {
                let kind = s[i + 1]
                let close: Unicode.Scalar = kind == "{" ? "}" : kind == "%" ? "%" : "#"
                var j = i + 2
                let stripBefore = j < s.count && s[j] == "-"
                if stripBefore || (j < s.count && s[j] == "+") { j += 1 }
                // Find the closing tag, skipping string literals inside expressions.
                var k = j, quote: Unicode.Scalar? = nil
                while k + 1 < s.count {
                    if let q = quote {
                        if s[k] == "\\" { k += 2; continue }
                        if s[k] == q { quote = nil }
                    } else if kind != "#" && (s[k] == "'" || s[k] == "\"") {
                        quote = s[k]
                    } else if s[k] == close && s[k + 1] == "}" {
                        break
                    }
                    k += 1
                }
                guard k + 1 < s.count else {
                    throw ChatTemplateError.syntax("an unclosed \(kind == "{" ? "{{" : kind == "%" ? "{%" : "{#") tag")
                }
                var end = k
                let stripAfter = end > j && s[end - 1] == "-"
                if stripAfter || (end > j && s[end - 1] == "+") { end -= 1 }
                let inner = String(String.UnicodeScalarView(s[j..<max(j, end)])).trimmingCharacters(in: .whitespacesAndNewlines)
                let isBlock = kind != "{"
                flushText(stripTrailing: stripBefore, lstripBlock: isBlock && s[i + 2] != "+")
                if kind == "{" { tokens.append(.output(inner)) } else if kind == "%" { tokens.append(.statement(inner)) }
                i = k + 2
                trimNextLeading = stripAfter
                trimNextNewline = isBlock && !stripAfter
                // Apply right away to the text that follows.
                if trimNextLeading {
                    while i < s.count, s[i].properties.isWhitespace { i += 1 }
                } else if trimNextNewline, i < s.count, s[i] == "\n" {
                    i += 1
                } else if trimNextNewline, i + 1 < s.count, s[i] == "\r", s[i + 1] == "\n" {
                    i += 2
                }
                continue
            }
            text.append(s[i])
            i += 1
        }
        flushText(stripTrailing: false, lstripBlock: false)
        return tokens
    }
}

/// Tokens inside one tag.
enum ChatWord: Equatable {
    case name(String), string(String), int(Int), double(Double), op(String)
}

struct ChatExpressionLexer {
    static func words(_ source: String) throws -> [ChatWord] {
        let s = Array(source.unicodeScalars)
        var out: [ChatWord] = [], i = 0
        let twoChar: Set<String> = ["==", "!=", "<=", ">=", "//", "**"]
        while i < s.count {
            let c = s[i]
            if c.properties.isWhitespace { i += 1; continue }
            if c == "'" || c == "\"" {
                var j = i + 1, value = String.UnicodeScalarView()
                while j < s.count && s[j] != c {
                    if s[j] == "\\", j + 1 < s.count {
                        j += 1
                        switch s[j] {
                        case "n": value.append("\n")
                        case "t": value.append("\t")
                        case "r": value.append("\r")
                        case "\\": value.append("\\")
                        case "'": value.append("'")
                        case "\"": value.append("\"")
                        default: value.append("\\"); value.append(s[j])
                        }
                    } else {
                        value.append(s[j])
                    }
                    j += 1
                }
                guard j < s.count else { throw ChatTemplateError.syntax("an unterminated string in '\(source)'") }
                out.append(.string(String(value)))
                i = j + 1
                continue
            }
            if c.properties.numericType != nil && ("0"..."9").contains(c) {
                var j = i
                while j < s.count && (("0"..."9").contains(s[j]) || s[j] == "_") { j += 1 }
                if j + 1 < s.count && s[j] == "." && ("0"..."9").contains(s[j + 1]) {
                    j += 1
                    while j < s.count && ("0"..."9").contains(s[j]) { j += 1 }
                    out.append(.double(Double(String(String.UnicodeScalarView(s[i..<j]))) ?? 0))
                } else {
                    guard let n = Int(String(String.UnicodeScalarView(s[i..<j])).replacingOccurrences(of: "_", with: ""))
                    else { throw ChatTemplateError.syntax("a number too large in '\(source)'") }
                    out.append(.int(n))
                }
                i = j
                continue
            }
            if c == "_" || c.properties.isAlphabetic {
                var j = i
                while j < s.count && (s[j] == "_" || s[j].properties.isAlphabetic || ("0"..."9").contains(s[j])) { j += 1 }
                out.append(.name(String(String.UnicodeScalarView(s[i..<j]))))
                i = j
                continue
            }
            if i + 1 < s.count, twoChar.contains(String(c) + String(s[i + 1])) {
                out.append(.op(String(c) + String(s[i + 1])))
                i += 2
                continue
            }
            guard "()[]{}.,:|+-*/%~<>=!".unicodeScalars.contains(c) else {
                throw ChatTemplateError.syntax("unexpected '\(c)' in '\(source)'")
            }
            out.append(.op(String(c)))
            i += 1
        }
        return out
    }
}

struct ChatExpressionParser {
    var words: [ChatWord]
    var at = 0
    let source: String
    /// Nesting so far: bounded, so that a hostile template cannot exhaust the stack.
    var depth = 0
    static let maximumDepth = 64

    init(_ source: String) throws {
        self.source = source
        words = try ChatExpressionLexer.words(source)
    }

    var atEnd: Bool { at >= words.count }
    func peek(_ offset: Int = 0) -> ChatWord? { at + offset < words.count ? words[at + offset] : nil }
    mutating func take() -> ChatWord? {
        defer { at += 1 }
        return peek()
    }
    mutating func accept(_ w: ChatWord) -> Bool {
        if peek() == w { at += 1; return true }
        return false
    }
    mutating func expect(_ w: ChatWord) throws {
        guard accept(w) else { throw ChatTemplateError.syntax("expected \(w) in '\(source)'") }
    }
    mutating func name() throws -> String {
        guard case let .name(n)? = take() else { throw ChatTemplateError.syntax("expected a name in '\(source)'") }
        return n
    }

    mutating func expression() throws -> ChatExpr {
        depth += 1
        defer { depth -= 1 }
        guard depth <= Self.maximumDepth else {
            throw ChatTemplateError.unsupported("expressions nested deeper than \(Self.maximumDepth)")
        }
        let value = try orExpression()
        if accept(.name("if")) {
            let condition = try orExpression()
            let otherwise = accept(.name("else")) ? try expression() : nil
            return .conditional(condition, value, otherwise)
        }
        return value
    }
    mutating func orExpression() throws -> ChatExpr {
        var left = try andExpression()
        while accept(.name("or")) { left = .binary("or", left, try andExpression()) }
        return left
    }
    mutating func andExpression() throws -> ChatExpr {
        var left = try notExpression()
        while accept(.name("and")) { left = .binary("and", left, try notExpression()) }
        return left
    }
    mutating func notExpression() throws -> ChatExpr {
        if accept(.name("not")) {
            depth += 1
            defer { depth -= 1 }
            guard depth <= Self.maximumDepth else { throw ChatTemplateError.unsupported("a chain of 'not' deeper than 64") }
            return .unary("not", try notExpression())
        }
        return try comparison()
    }
    mutating func comparison() throws -> ChatExpr {
        var left = try concatenation()
        while true {
            if let w = peek(), case let .op(o) = w, ["==", "!=", "<", ">", "<=", ">="].contains(o) {
                at += 1
                left = .binary(o, left, try concatenation())
            } else if accept(.name("in")) {
                left = .binary("in", left, try concatenation())
            } else if peek() == .name("not"), peek(1) == .name("in") {
                at += 2
                left = .unary("not", .binary("in", left, try concatenation()))
            } else if accept(.name("is")) {
                let negated = accept(.name("not"))
                let test = try name()
                var args: [ChatExpr] = []
                if accept(.op("(")) {
                    if !accept(.op(")")) {
                        repeat { args.append(try expression()) } while accept(.op(","))
                        try expect(.op(")"))
                    }
                } else if let w = peek(), case .string = w {
                    args.append(try primary())
                }
                left = .test(left, test, args, negated: negated)
            } else {
                return left
            }
        }
    }
    mutating func concatenation() throws -> ChatExpr {
        var left = try additive()
        while accept(.op("~")) { left = .binary("~", left, try additive()) }
        return left
    }
    mutating func additive() throws -> ChatExpr {
        var left = try multiplicative()
        while let w = peek(), case let .op(o) = w, o == "+" || o == "-" {
            at += 1
            left = .binary(o, left, try multiplicative())
        }
        return left
    }
    mutating func multiplicative() throws -> ChatExpr {
        var left = try unary()
        while let w = peek(), case let .op(o) = w, ["*", "/", "//", "%"].contains(o) {
            at += 1
            left = .binary(o, left, try unary())
        }
        return left
    }
    mutating func unary() throws -> ChatExpr {
        if peek() == .op("-") || peek() == .op("+") {
            depth += 1
            defer { depth -= 1 }
            guard depth <= Self.maximumDepth else { throw ChatTemplateError.unsupported("a chain of signs deeper than 64") }
        }
        if accept(.op("-")) { return .unary("-", try unary()) }
        if accept(.op("+")) { return try unary() }
        return try postfix(try primary())
    }
    mutating func arguments() throws -> ([ChatExpr], [(String, ChatExpr)]) {
        var args: [ChatExpr] = [], keywords: [(String, ChatExpr)] = []
        if accept(.op(")")) { return (args, keywords) }
        repeat {
            if case let .name(n)? = peek(), peek(1) == .op("=") {
                at += 2
                keywords.append((n, try expression()))
            } else {
                args.append(try expression())
            }
        } while accept(.op(","))
        try expect(.op(")"))
        return (args, keywords)
    }
    mutating func postfix(_ base: ChatExpr) throws -> ChatExpr {
        var e = base
        while true {
            if accept(.op(".")) {
                e = .attribute(e, try name())
            } else if accept(.op("[")) {
                var lower: ChatExpr? = nil
                if peek() != .op(":") { lower = try expression() }
                if accept(.op(":")) {
                    let upper = peek() == .op("]") ? nil : try expression()
                    try expect(.op("]"))
                    e = .slice(e, lower, upper)
                } else {
                    try expect(.op("]"))
                    guard let lower else { throw ChatTemplateError.syntax("an empty subscript in '\(source)'") }
                    e = .index(e, lower)
                }
            } else if accept(.op("(")) {
                let (args, keywords) = try arguments()
                e = .call(e, args, keywords)
            } else if accept(.op("|")) {
                let f = try name()
                var args: [ChatExpr] = [], keywords: [(String, ChatExpr)] = []
                if accept(.op("(")) { (args, keywords) = try arguments() }
                e = .filter(e, f, args, keywords)
            } else {
                return e
            }
        }
    }
    mutating func primary() throws -> ChatExpr {
        guard let w = take() else { throw ChatTemplateError.syntax("an incomplete expression '\(source)'") }
        switch w {
        case let .string(s):
            // Adjacent string literals join, as in Python.
            var value = s
            while case let .string(more)? = peek() { value += more; at += 1 }
            return .literal(.string(value))
        case let .int(i): return .literal(.int(i))
        case let .double(d): return .literal(.double(d))
        case let .name(n):
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n)
            }
        case .op("("):
            let e = try expression()
            if accept(.op(",")) {  // a tuple: treated as a list
                var items = [e]
                if !accept(.op(")")) {
                    repeat { items.append(try expression()) } while accept(.op(",")) && peek() != .op(")")
                    try expect(.op(")"))
                }
                return .list(items)
            }
            try expect(.op(")"))
            return e
        case .op("["):
            var items: [ChatExpr] = []
            if !accept(.op("]")) {
                repeat {
                    if peek() == .op("]") { break }
                    items.append(try expression())
                } while accept(.op(","))
                try expect(.op("]"))
            }
            return .list(items)
        case .op("{"):
            var pairs: [(ChatExpr, ChatExpr)] = []
            if !accept(.op("}")) {
                repeat {
                    if peek() == .op("}") { break }
                    let k = try expression()
                    try expect(.op(":"))
                    pairs.append((k, try expression()))
                } while accept(.op(","))
                try expect(.op("}"))
            }
            return .dict(pairs)
        default:
            throw ChatTemplateError.syntax("unexpected \(w) in '\(source)'")
        }
    }
}

struct ChatParser {
    let tokens: [ChatToken]
    var at = 0
    var depth = 0

    init(tokens: [ChatToken]) { self.tokens = tokens }

    /// Statements up to one whose first word is in `terminators` (left for the caller to read).
    mutating func parseBody(until terminators: Set<String>) throws -> [ChatNode] {
        depth += 1
        defer { depth -= 1 }
        guard depth <= ChatExpressionParser.maximumDepth else {
            throw ChatTemplateError.unsupported("blocks nested deeper than \(ChatExpressionParser.maximumDepth)")
        }
        var nodes: [ChatNode] = []
        while at < tokens.count {
            switch tokens[at] {
            case let .text(t): nodes.append(.text(t)); at += 1
            case let .output(source):
                var p = try ChatExpressionParser(source)
                let e = try p.expression()
                guard p.atEnd else { throw ChatTemplateError.syntax("unexpected text after '\(source)'") }
                nodes.append(.output(e))
                at += 1
            case let .statement(source):
                let keyword = source.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).first.map(String.init) ?? ""
                if terminators.contains(keyword) { return nodes }
                at += 1
                nodes.append(try statement(keyword, source))
            }
        }
        guard terminators.isEmpty else {
            throw ChatTemplateError.syntax("missing {% \(terminators.sorted().joined(separator: " or ")) %}")
        }
        return nodes
    }

    mutating func closing() -> String? {
        guard at < tokens.count, case let .statement(s) = tokens[at] else { return nil }
        at += 1
        return s.split(whereSeparator: { $0 == " " }).first.map(String.init)
    }

    mutating func statement(_ keyword: String, _ source: String) throws -> ChatNode {
        var p = try ChatExpressionParser(source)
        _ = p.take()  // the keyword
        switch keyword {
        case "if":
            var branches = [(try p.expression(), [ChatNode]())]
            while true {
                // The body of the branch just opened (parseBody stops at its terminator or throws at the end).
                branches[branches.count - 1].1 = try parseBody(until: ["elif", "else", "endif"])
                guard case let .statement(s) = tokens[at] else { throw ChatTemplateError.syntax("if without endif") }
                at += 1
                if s.hasPrefix("elif") {
                    var q = try ChatExpressionParser(s)
                    _ = q.take()
                    branches.append((try q.expression(), []))
                } else if s.hasPrefix("else") {
                    let otherwise = try parseBody(until: ["endif"])
                    at += 1
                    return .ifChain(branches, otherwise: otherwise)
                } else {
                    return .ifChain(branches, otherwise: [])
                }
            }
        case "for":
            var targets = [try p.name()]
            while p.accept(.op(",")) { targets.append(try p.name()) }
            try p.expect(.name("in"))
            let iterable = try p.orExpression()
            let filter = p.accept(.name("if")) ? try p.expression() : nil
            if p.accept(.name("recursive")) { throw ChatTemplateError.unsupported("recursive loops") }
            guard p.atEnd else { throw ChatTemplateError.syntax("unexpected text in '{% \(source) %}'") }
            let body = try parseBody(until: ["else", "endfor"])
            var otherwise: [ChatNode] = []
            if closing() == "else" {
                otherwise = try parseBody(until: ["endfor"])
                at += 1
            }
            return .forLoop(targets: targets, iterable: iterable, filter: filter, body: body, otherwise: otherwise)
        case "set":
            let target = try p.name()
            let attribute = p.accept(.op(".")) ? try p.name() : nil
            guard p.accept(.op("=")) else {
                throw ChatTemplateError.unsupported("block assignments ({% set \(target) %}...{% endset %})")
            }
            let value = try p.expression()
            guard p.atEnd else { throw ChatTemplateError.syntax("unexpected text in '{% \(source) %}'") }
            return .set(target: target, attribute: attribute, value: value)
        case "break": return .loopBreak
        case "continue": return .loopContinue
        case "generation", "endgeneration":
            // transformers' marker for assistant-token masks: renders nothing.
            return .text("")
        default:
            throw ChatTemplateError.unsupported("the '\(keyword)' tag")
        }
    }
}

// MARK: - evaluation

struct ChatContext {
    var scopes: [[String: ChatValue]]
    /// Statements run so far: a template that loops for too long (or writes too much) is stopped, not waited on.
    var steps = 0
    static let maximumSteps = 2_000_000, maximumOutput = 16 << 20

    func lookup(_ name: String) -> ChatValue {
        for s in scopes.reversed() { if let v = s[name] { return v } }
        return .undefined
    }
    mutating func assign(_ name: String, _ value: ChatValue) { scopes[scopes.count - 1][name] = value }
}

enum ChatInterpreter {
    enum Flow: Error { case breakLoop, continueLoop }

    static func run(_ nodes: [ChatNode], _ context: inout ChatContext, _ out: inout String) throws {
        for node in nodes {
            context.steps += 1
            guard context.steps <= ChatContext.maximumSteps, out.utf8.count <= ChatContext.maximumOutput else {
                throw ChatTemplateError.runtime(
                    "the template ran more than \(ChatContext.maximumSteps) statements or wrote more than 16 MB")
            }
            switch node {
            case let .text(t): out += t
            case let .output(e): out += try evaluate(e, &context).printed
            case let .ifChain(branches, otherwise):
                var done = false
                for (condition, body) in branches where try evaluate(condition, &context).truthy {
                    try run(body, &context, &out)
                    done = true
                    break
                }
                if !done { try run(otherwise, &context, &out) }
            case let .set(target, attribute, value):
                let v = try evaluate(value, &context)
                if let attribute {
                    guard case let .namespace(ns) = context.lookup(target) else {
                        throw ChatTemplateError.runtime("'\(target).\(attribute)' can only be set on a namespace")
                    }
                    ns.values.withLock { $0[attribute] = v }
                } else {
                    context.assign(target, v)
                }
            case .loopBreak: throw Flow.breakLoop
            case .loopContinue: throw Flow.continueLoop
            case let .forLoop(targets, iterable, filter, body, otherwise):
                var items = try iterate(try evaluate(iterable, &context))
                if let filter {
                    items = try items.filter { item in
                        context.scopes.append(bind(targets, item))
                        defer { context.scopes.removeLast() }
                        return try evaluate(filter, &context).truthy
                    }
                }
                if items.isEmpty { try run(otherwise, &context, &out); continue }
                for (k, item) in items.enumerated() {
                    var scope = bind(targets, item)
                    scope["loop"] = .dict([
                        ("index", .int(k + 1)), ("index0", .int(k)), ("first", .bool(k == 0)),
                        ("last", .bool(k == items.count - 1)), ("length", .int(items.count)),
                        ("revindex", .int(items.count - k)), ("revindex0", .int(items.count - k - 1)),
                        ("previtem", k > 0 ? items[k - 1] : .undefined),
                        ("nextitem", k + 1 < items.count ? items[k + 1] : .undefined),
                    ])
                    context.scopes.append(scope)
                    defer { context.scopes.removeLast() }
                    do { try run(body, &context, &out) } catch Flow.breakLoop { break } catch Flow.continueLoop { continue }
                }
            }
        }
    }

    static func bind(_ targets: [String], _ item: ChatValue) -> [String: ChatValue] {
        guard targets.count > 1 else { return [targets[0]: item] }
        guard case let .list(parts) = item else { return [:] }
        var scope: [String: ChatValue] = [:]
        for (t, v) in zip(targets, parts) { scope[t] = v }
        return scope
    }

    static func iterate(_ v: ChatValue) throws -> [ChatValue] {
        switch v {
        case let .list(l): return l
        case let .dict(d): return d.map { .string($0.0) }
        case let .string(s): return s.map { .string(String($0)) }
        case .undefined, .none: return []
        default: throw ChatTemplateError.runtime("\(v.repr) is not iterable")
        }
    }

    static func evaluate(_ e: ChatExpr, _ context: inout ChatContext) throws -> ChatValue {
        switch e {
        case let .literal(v): return v
        case let .name(n): return context.lookup(n)
        case let .list(items): return .list(try items.map { try evaluate($0, &context) })
        case let .dict(pairs):
            return .dict(
                try pairs.map { k, v in
                    guard case let .string(key) = try evaluate(k, &context) else {
                        throw ChatTemplateError.unsupported("dictionary keys that are not strings")
                    }
                    return (key, try evaluate(v, &context))
                })
        case let .attribute(base, name):
            let b = try evaluate(base, &context)
            if case .undefined = b { throw ChatTemplateError.runtime("'\(name)' of an undefined value") }
            return b.attribute(name)
        case let .index(base, index):
            return try subscriptValue(try evaluate(base, &context), try evaluate(index, &context))
        case let .slice(base, lower, upper):
            let b = try evaluate(base, &context)
            let lo = try lower.map { try evaluate($0, &context) }, hi = try upper.map { try evaluate($0, &context) }
            return try slice(b, lo, hi)
        case let .call(callee, args, keywords):
            let a = try args.map { try evaluate($0, &context) }
            let k = try keywords.map { ($0.0, try evaluate($0.1, &context)) }
            if case let .attribute(base, method) = callee {
                return try callMethod(try evaluate(base, &context), method, a)
            }
            guard case let .name(function) = callee else { throw ChatTemplateError.unsupported("calling an expression") }
            return try callFunction(function, a, k)
        case let .filter(base, name, args, keywords):
            let v = try evaluate(base, &context)
            let a = try args.map { try evaluate($0, &context) }
            let k = try keywords.map { ($0.0, try evaluate($0.1, &context)) }
            return try applyFilter(name, v, a, k)
        case let .test(base, name, args, negated):
            let v = try evaluate(base, &context)
            let a = try args.map { try evaluate($0, &context) }
            return .bool(try applyTest(name, v, a) != negated)
        case let .unary(op, operand):
            let v = try evaluate(operand, &context)
            if op == "not" { return .bool(!v.truthy) }
            switch v {
            case let .int(i): return .int(-i)
            case let .double(d): return .double(-d)
            default: throw ChatTemplateError.runtime("cannot negate \(v.repr)")
            }
        case let .binary(op, l, r):
            if op == "and" {
                let a = try evaluate(l, &context)
                return a.truthy ? try evaluate(r, &context) : a
            }
            if op == "or" {
                let a = try evaluate(l, &context)
                return a.truthy ? a : try evaluate(r, &context)
            }
            return try binary(op, try evaluate(l, &context), try evaluate(r, &context))
        case let .conditional(condition, value, otherwise):
            if try evaluate(condition, &context).truthy { return try evaluate(value, &context) }
            return try otherwise.map { try evaluate($0, &context) } ?? .undefined
        }
    }

    static func number(_ v: ChatValue) -> Double? {
        switch v {
        case let .int(i): return Double(i)
        case let .double(d): return d
        case let .bool(b): return b ? 1 : 0
        default: return nil
        }
    }

    static func equal(_ a: ChatValue, _ b: ChatValue) -> Bool {
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): return true
        case let (.string(x), .string(y)): return x == y
        case let (.list(x), .list(y)): return x.count == y.count && zip(x, y).allSatisfy { equal($0, $1) }
        case let (.dict(x), .dict(y)):
            return x.count == y.count && x.allSatisfy { kv in y.contains { $0.0 == kv.0 && equal($0.1, kv.1) } }
        default:
            if let x = number(a), let y = number(b), !(a.isString || b.isString) { return x == y }
            return false
        }
    }

    static func binary(_ op: String, _ a: ChatValue, _ b: ChatValue) throws -> ChatValue {
        switch op {
        case "==": return .bool(equal(a, b))
        case "!=": return .bool(!equal(a, b))
        case "~": return .string(a.printed + b.printed)
        case "in":
            switch b {
            case let .string(s):
                guard case let .string(x) = a else { throw ChatTemplateError.runtime("'in' a string needs a string") }
                return .bool(x.isEmpty || s.contains(x))
            case let .list(l): return .bool(l.contains { equal($0, a) })
            case let .dict(d): return .bool(d.contains { ChatValue.string($0.0).printed == a.printed && a.isString })
            case .namespace: return .bool(!(b.attribute(a.printed).isUndefined))
            default: throw ChatTemplateError.runtime("'in' \(b.repr)")
            }
        case "<", ">", "<=", ">=":
            let ordered: Bool
            if case let .string(x) = a, case let .string(y) = b {
                ordered = op == "<" ? x < y : op == ">" ? x > y : op == "<=" ? x <= y : x >= y
            } else if let x = number(a), let y = number(b) {
                ordered = op == "<" ? x < y : op == ">" ? x > y : op == "<=" ? x <= y : x >= y
            } else {
                throw ChatTemplateError.runtime("cannot compare \(a.repr) \(op) \(b.repr)")
            }
            return .bool(ordered)
        case "+":
            switch (a, b) {
            case let (.string(x), .string(y)): return .string(x + y)
            case let (.list(x), .list(y)): return .list(x + y)
            case let (.int(x), .int(y)): return .int(x &+ y)
            default:
                if let x = number(a), let y = number(b), !a.isString, !b.isString { return .double(x + y) }
                throw ChatTemplateError.runtime("cannot add \(a.repr) and \(b.repr)")
            }
        case "-", "*", "/", "//", "%":
            if case let .int(x) = a, case let .int(y) = b, op != "/" {
                switch op {
                case "-": return .int(x &- y)
                case "*": return .int(x &* y)
                default:
                    guard y != 0 else { throw ChatTemplateError.runtime("division by zero") }
                    let q = Int((Double(x) / Double(y)).rounded(.down))
                    return .int(op == "//" ? q : x - q * y)
                }
            }
            if op == "*", case let .string(s) = a, case let .int(n) = b {
                guard n <= (1 << 20) / max(s.utf8.count, 1) else {
                    throw ChatTemplateError.runtime("a string repeated \(n) times is too long")
                }
                return .string(String(repeating: s, count: max(n, 0)))
            }
            guard let x = number(a), let y = number(b), !a.isString, !b.isString else {
                throw ChatTemplateError.runtime("cannot apply \(op) to \(a.repr) and \(b.repr)")
            }
            switch op {
            case "-": return .double(x - y)
            case "*": return .double(x * y)
            case "/": return .double(x / y)
            case "//": return .double((x / y).rounded(.down))
            default: return .double(x - (x / y).rounded(.down) * y)
            }
        default: throw ChatTemplateError.unsupported("the operator \(op)")
        }
    }

    static func subscriptValue(_ base: ChatValue, _ index: ChatValue) throws -> ChatValue {
        switch (base, index) {
        case let (.list(l), .int(i)):
            let k = i < 0 ? l.count + i : i
            guard l.indices.contains(k) else { return .undefined }
            return l[k]
        case let (.string(s), .int(i)):
            let chars = Array(s)
            let k = i < 0 ? chars.count + i : i
            return chars.indices.contains(k) ? .string(String(chars[k])) : .undefined
        case let (.dict, .string(key)), let (.namespace, .string(key)): return base.attribute(key)
        case (.undefined, _): throw ChatTemplateError.runtime("subscript of an undefined value")
        default: return .undefined
        }
    }

    static func slice(_ base: ChatValue, _ lower: ChatValue?, _ upper: ChatValue?) throws -> ChatValue {
        func bounds(_ n: Int) throws -> Range<Int> {
            func resolve(_ v: ChatValue?, _ fallback: Int) throws -> Int {
                guard let v, !v.isNoneOrUndefined else { return fallback }
                guard case let .int(i) = v else { throw ChatTemplateError.runtime("a slice bound that is not an integer") }
                return min(max(i < 0 ? n + i : i, 0), n)
            }
            let lo = try resolve(lower, 0), hi = try resolve(upper, n)
            return lo..<max(lo, hi)
        }
        switch base {
        case let .list(l): return .list(Array(l[try bounds(l.count)]))
        case let .string(s):
            let chars = Array(s)
            return .string(String(chars[try bounds(chars.count)]))
        default: throw ChatTemplateError.runtime("cannot slice \(base.repr)")
        }
    }

    static func callFunction(_ name: String, _ args: [ChatValue], _ keywords: [(String, ChatValue)]) throws -> ChatValue
    {
        switch name {
        case "raise_exception": throw ChatTemplateError.raised(args.first?.printed ?? "")
        case "namespace":
            var values: [String: ChatValue] = [:]
            if case let .dict(d)? = args.first { for (k, v) in d { values[k] = v } }
            for (k, v) in keywords { values[k] = v }
            return .namespace(ChatNamespace(values))
        case "range":
            let ints = args.compactMap { v -> Int? in if case let .int(i) = v { return i } else { return nil } }
            guard ints.count == args.count, (1...3).contains(ints.count) else {
                throw ChatTemplateError.runtime("range takes one to three integers")
            }
            let (start, stop, step) =
                ints.count == 1 ? (0, ints[0], 1) : (ints[0], ints[1], ints.count == 3 ? ints[2] : 1)
            guard step != 0, abs((stop - start) / step) < 1_000_000 else {
                throw ChatTemplateError.runtime("range(\(ints)) is too long or has step 0")
            }
            return .list(Swift.stride(from: start, to: stop, by: step).map { .int($0) })
        case "strftime_now":
            let formatter = DateFormatter()
            formatter.locale = Locale(identifier: "en_US_POSIX")
            let format = args.first?.printed ?? ""
            // The strftime directives templates use (%d %b %Y %B %m %H %M %S %y %A %a), as DateFormatter patterns.
            let map: [Character: String] = [
                "d": "dd", "b": "MMM", "B": "MMMM", "Y": "yyyy", "y": "yy", "m": "MM", "H": "HH", "M": "mm", "S": "ss",
                "A": "EEEE", "a": "EEE",
            ]
            var pattern = "", chars = Array(format), i = 0
            while i < chars.count {
                if chars[i] == "%", i + 1 < chars.count {
                    guard let p = map[chars[i + 1]] else {
                        throw ChatTemplateError.unsupported("strftime directive %\(chars[i + 1])")
                    }
                    pattern += p
                    i += 2
                } else {
                    pattern += chars[i].isLetter ? "'\(chars[i])'" : String(chars[i])
                    i += 1
                }
            }
            formatter.dateFormat = pattern
            return .string(formatter.string(from: Date()))
        default:
            throw ChatTemplateError.unsupported("the function \(name)()")
        }
    }

    static func callMethod(_ base: ChatValue, _ method: String, _ args: [ChatValue]) throws -> ChatValue {
        switch (base, method) {
        case let (.string(s), "strip"): return .string(strip(s, args.first, leading: true, trailing: true))
        case let (.string(s), "lstrip"): return .string(strip(s, args.first, leading: true, trailing: false))
        case let (.string(s), "rstrip"): return .string(strip(s, args.first, leading: false, trailing: true))
        case let (.string(s), "upper"): return .string(s.uppercased())
        case let (.string(s), "lower"): return .string(s.lowercased())
        case let (.string(s), "title"): return .string(s.capitalized)
        case let (.string(s), "capitalize"): return .string(s.prefix(1).uppercased() + s.dropFirst().lowercased())
        case let (.string(s), "startswith"): return .bool(s.hasPrefix(args.first?.printed ?? ""))
        case let (.string(s), "endswith"): return .bool(s.hasSuffix(args.first?.printed ?? ""))
        case let (.string(s), "replace"):
            guard args.count >= 2 else { throw ChatTemplateError.runtime("replace needs two arguments") }
            return .string(s.replacingOccurrences(of: args[0].printed, with: args[1].printed))
        case let (.string(s), "split"):
            if let sep = args.first, !sep.isNoneOrUndefined {
                return .list(s.components(separatedBy: sep.printed).map { .string($0) })
            }
            return .list(s.split(whereSeparator: { $0.isWhitespace }).map { .string(String($0)) })
        case let (.dict(d), "get"):
            return d.first { $0.0 == args.first?.printed && args.first?.isString == true }?.1 ?? (args.count > 1 ? args[1] : .none)
        case let (.dict(d), "items"): return .list(d.map { .list([.string($0.0), $0.1]) })
        case let (.dict(d), "keys"): return .list(d.map { .string($0.0) })
        case let (.dict(d), "values"): return .list(d.map(\.1))
        default: throw ChatTemplateError.unsupported("the method .\(method)() on \(base.kind)")
        }
    }

    static func strip(_ s: String, _ chars: ChatValue?, leading: Bool, trailing: Bool) -> String {
        let set: (Character) -> Bool
        if let chars, case let .string(c) = chars { set = { c.contains($0) } } else { set = { $0.isWhitespace } }
        var sub = Substring(s)
        if leading { sub = sub.drop(while: set) }
        if trailing { while let l = sub.last, set(l) { sub = sub.dropLast() } }
        return String(sub)
    }

    static func applyFilter(_ name: String, _ v: ChatValue, _ args: [ChatValue], _ keywords: [(String, ChatValue)]) throws
        -> ChatValue
    {
        switch name {
        case "trim": return .string(strip(v.printed, args.first, leading: true, trailing: true))
        case "upper": return .string(v.printed.uppercased())
        case "lower": return .string(v.printed.lowercased())
        case "capitalize": return .string(v.printed.prefix(1).uppercased() + v.printed.dropFirst().lowercased())
        case "title": return .string(v.printed.capitalized)
        case "string": return .string(v.printed)
        case "safe", "e", "escape":
            if name != "safe" { throw ChatTemplateError.unsupported("the \(name) filter") }
            return v
        case "length", "count":
            switch v {
            case let .string(s): return .int(s.count)
            case let .list(l): return .int(l.count)
            case let .dict(d): return .int(d.count)
            default: throw ChatTemplateError.runtime("length of \(v.repr)")
            }
        case "first": return try iterate(v).first ?? .undefined
        case "last": return try iterate(v).last ?? .undefined
        case "list": return .list(try iterate(v))
        case "reverse":
            if case let .string(s) = v { return .string(String(s.reversed())) }
            return .list(try iterate(v).reversed())
        case "join":
            let sep = args.first?.printed ?? keywords.first { $0.0 == "d" }?.1.printed ?? ""
            return .string(try iterate(v).map(\.printed).joined(separator: sep))
        case "default", "d":
            let fallback = args.first ?? .string("")
            let boolean = args.count > 1 ? args[1].truthy : false
            if v.isUndefined || (boolean && !v.truthy) { return fallback }
            return v
        case "items":
            guard case let .dict(d) = v else { throw ChatTemplateError.runtime("items of \(v.repr)") }
            return .list(d.map { .list([.string($0.0), $0.1]) })
        case "tojson":
            let indent = keywords.first { $0.0 == "indent" }?.1 ?? args.first
            var n: Int? = nil
            if let indent, case let .int(i) = indent { n = i }
            return .string(try v.json(indent: n))
        case "int":
            switch v {
            case let .int(i): return .int(i)
            case let .double(d): return .int(Int(d))
            case let .string(s): return .int(Int(s.trimmingCharacters(in: .whitespaces)) ?? 0)
            case let .bool(b): return .int(b ? 1 : 0)
            default: return .int(0)
            }
        case "replace":
            guard args.count >= 2 else { throw ChatTemplateError.runtime("replace needs two arguments") }
            return .string(v.printed.replacingOccurrences(of: args[0].printed, with: args[1].printed))
        case "selectattr", "rejectattr":
            guard let attr = args.first?.printed else { throw ChatTemplateError.runtime("\(name) needs an attribute") }
            let items = try iterate(v)
            let keep = try items.filter { item in
                let a = item.attribute(attr)
                let passes =
                    args.count > 1 ? try applyTest(args[1].printed, a, Array(args.dropFirst(2))) : a.truthy
                return name == "selectattr" ? passes : !passes
            }
            return .list(keep)
        case "map":
            if let attr = keywords.first(where: { $0.0 == "attribute" })?.1.printed {
                return .list(try iterate(v).map { $0.attribute(attr) })
            }
            guard let filter = args.first?.printed else { throw ChatTemplateError.runtime("map needs a filter") }
            return .list(try iterate(v).map { try applyFilter(filter, $0, Array(args.dropFirst()), []) })
        default: throw ChatTemplateError.unsupported("the \(name) filter")
        }
    }

    static func applyTest(_ name: String, _ v: ChatValue, _ args: [ChatValue]) throws -> Bool {
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": if case .none = v { return true } else { return false }
        case "string": return v.isString
        case "number": if case .int = v { return true } else if case .double = v { return true } else { return false }
        case "integer": if case .int = v { return true } else { return false }
        case "float": if case .double = v { return true } else { return false }
        case "boolean": if case .bool = v { return true } else { return false }
        case "true": if case .bool(true) = v { return true } else { return false }
        case "false": if case .bool(false) = v { return true } else { return false }
        case "mapping": if case .dict = v { return true } else { return false }
        case "sequence", "iterable":
            switch v {
            case .list, .string, .dict: return true
            default: return false
            }
        case "equalto", "eq", "sameas", "==": return equal(v, args.first ?? .undefined)
        case "ne", "!=": return !equal(v, args.first ?? .undefined)
        case "even": if case let .int(i) = v { return i % 2 == 0 } else { return false }
        case "odd": if case let .int(i) = v { return i % 2 != 0 } else { return false }
        case "in": return try binary("in", v, args.first ?? .undefined).truthy
        default: throw ChatTemplateError.unsupported("the test 'is \(name)'")
        }
    }
}

extension ChatValue {
    var isUndefined: Bool { if case .undefined = self { return true } else { return false } }
    var isString: Bool { if case .string = self { return true } else { return false } }
    var isNoneOrUndefined: Bool {
        switch self {
        case .none, .undefined: return true
        default: return false
        }
    }
    var kind: String {
        switch self {
        case .undefined: return "an undefined value"
        case .none: return "None"
        case .bool: return "a boolean"
        case .int, .double: return "a number"
        case .string: return "a string"
        case .list: return "a list"
        case .dict: return "a mapping"
        case .namespace: return "a namespace"
        }
    }
}

extension ChatValue {
    /// A value from JSON text, with objects' keys in the order the text has them (what `tojson` writes back, as
    /// Python's dictionaries keep insertion order).
    /// - Throws: ``ChatTemplateError/syntax(_:)`` for text that is not JSON.
    public init(jsonText: String) throws {
        var p = OrderedJSONParser(Array(jsonText.unicodeScalars))
        self = try p.value(depth: 0)
        p.skipSpace()
        guard p.i == p.s.count else { throw ChatTemplateError.syntax("trailing characters after JSON") }
    }
}

/// A small JSON reader that keeps object key order; nesting is bounded so hostile input cannot exhaust the stack.
struct OrderedJSONParser {
    let s: [Unicode.Scalar]
    var i = 0
    init(_ s: [Unicode.Scalar]) { self.s = s }

    mutating func skipSpace() { while i < s.count, [" ", "\n", "\r", "\t"].contains(s[i]) { i += 1 } }

    func fail(_ what: String) -> ChatTemplateError { .syntax("JSON: \(what) at character \(i)") }

    mutating func value(depth: Int) throws -> ChatValue {
        guard depth < 64 else { throw fail("nesting deeper than 64") }
        skipSpace()
        guard i < s.count else { throw fail("unexpected end") }
        switch s[i] {
        case "{":
            i += 1
            var pairs: [(String, ChatValue)] = []
            skipSpace()
            if i < s.count, s[i] == "}" { i += 1; return .dict(pairs) }
            while true {
                skipSpace()
                guard case let .string(key) = try value(depth: depth + 1) else { throw fail("an object key") }
                skipSpace()
                guard i < s.count, s[i] == ":" else { throw fail("':'") }
                i += 1
                pairs.append((key, try value(depth: depth + 1)))
                skipSpace()
                guard i < s.count else { throw fail("unexpected end") }
                if s[i] == "," { i += 1; continue }
                if s[i] == "}" { i += 1; return .dict(pairs) }
                throw fail("',' or '}'")
            }
        case "[":
            i += 1
            var items: [ChatValue] = []
            skipSpace()
            if i < s.count, s[i] == "]" { i += 1; return .list(items) }
            while true {
                items.append(try value(depth: depth + 1))
                skipSpace()
                guard i < s.count else { throw fail("unexpected end") }
                if s[i] == "," { i += 1; continue }
                if s[i] == "]" { i += 1; return .list(items) }
                throw fail("',' or ']'")
            }
        case "\"":
            i += 1
            var out = String.UnicodeScalarView()
            while i < s.count, s[i] != "\"" {
                if s[i] == "\\" {
                    i += 1
                    guard i < s.count else { throw fail("an escape") }
                    switch s[i] {
                    case "n": out.append("\n")
                    case "t": out.append("\t")
                    case "r": out.append("\r")
                    case "b": out.append("\u{08}")
                    case "f": out.append("\u{0C}")
                    case "u":
                        func hex4() throws -> UInt32 {
                            guard i + 4 < s.count, let v = UInt32(String(String.UnicodeScalarView(s[(i + 1)...(i + 4)])), radix: 16)
                            else { throw fail("a \\u escape") }
                            i += 4
                            return v
                        }
                        var v = try hex4()
                        if (0xD800..<0xDC00).contains(v), i + 2 < s.count, s[i + 1] == "\\", s[i + 2] == "u" {
                            i += 2
                            let low = try hex4()
                            v = 0x10000 + ((v - 0xD800) << 10) + (low - 0xDC00)
                        }
                        out.append(Unicode.Scalar(v) ?? "\u{FFFD}")
                    default: out.append(s[i])
                    }
                } else {
                    out.append(s[i])
                }
                i += 1
            }
            guard i < s.count else { throw fail("an unterminated string") }
            i += 1
            return .string(String(out))
        default:
            let start = i
            while i < s.count, !",]} \n\r\t".unicodeScalars.contains(s[i]) { i += 1 }
            let word = String(String.UnicodeScalarView(s[start..<i]))
            switch word {
            case "true": return .bool(true)
            case "false": return .bool(false)
            case "null": return .none
            default:
                if let n = Int(word) { return .int(n) }
                if let d = Double(word) { return .double(d) }
                throw fail("'\(word)'")
            }
        }
    }
}
