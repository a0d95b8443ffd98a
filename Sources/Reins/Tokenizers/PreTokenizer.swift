import Foundation
import ReinsTensor

/// What a byte-level BPE `tokenizer.json` does around the merges: its normalizer, its pre-tokenizer (the regex splits
/// of Llama 3 and Qwen2, SmolLM's digit splitting, GPT-2's pattern) and its post-processor (a BOS token in front, say).
/// Each step is read from the file; a step Reins does not implement is a named error, never a silently different
/// split.
struct TextPipeline: @unchecked Sendable {
    enum Normalizer { case nfc }
    enum Step {
        /// A regex split (`Split`), keeping matches and the text between them as pieces (`Isolated`) or dropping the
        /// matches (`Removed`).
        case split(Regex<AnyRegexOutput>, removeMatches: Bool)
        /// `Digits`: each digit its own piece, or each run of digits.
        case digits(individual: Bool)
        /// `ByteLevel`: a space before each piece that lacks one (`add_prefix_space`), and GPT-2's pattern (`use_regex`).
        case byteLevel(addPrefixSpace: Bool, gpt2Pattern: Bool)
    }
    var normalizers: [Normalizer] = []
    var steps: [Step] = [.byteLevel(addPrefixSpace: false, gpt2Pattern: true)]
    /// Special tokens the post-processor puts around one sequence (`TemplateProcessing`'s `single`).
    var prefix: [String] = [], suffix: [String] = []

    /// GPT-2's: its pattern, nothing added.
    static let gpt2 = TextPipeline()

    init() {}

    /// From a `tokenizer.json`'s `normalizer`, `pre_tokenizer` and `post_processor`.
    init(tokenizerJSON json: [String: Any], path: String) throws {
        func fail(_ detail: String) -> TokenizerError { .malformed(path: path, line: nil, detail: detail) }
        func flatten(_ node: Any?, _ listKey: String) -> [[String: Any]] {
            guard let d = node as? [String: Any] else { return [] }
            if d["type"] as? String == "Sequence" {
                return (d[listKey] as? [Any] ?? []).flatMap { flatten($0, listKey) }
            }
            return [d]
        }
        for n in flatten(json["normalizer"], "normalizers") {
            switch n["type"] as? String {
            case "NFC": normalizers.append(.nfc)
            case let other:
                throw fail("normalizer \(other ?? "(untyped)") is not supported (NFC is; byte-level BPE needs no other)")
            }
        }
        if json["pre_tokenizer"] == nil || json["pre_tokenizer"] is NSNull {
            steps = []
        } else {
            steps = try flatten(json["pre_tokenizer"], "pretokenizers").map { p in
                switch p["type"] as? String {
                case "ByteLevel":
                    return .byteLevel(
                        addPrefixSpace: p["add_prefix_space"] as? Bool ?? false,
                        gpt2Pattern: p["use_regex"] as? Bool ?? true)
                case "Digits": return .digits(individual: p["individual_digits"] as? Bool ?? false)
                case "Split":
                    guard let pattern = p["pattern"] as? [String: Any] else { throw fail("a Split without a pattern") }
                    guard p["invert"] as? Bool != true else { throw fail("an inverted Split is not supported") }
                    let behavior = p["behavior"] as? String ?? "Isolated"
                    guard behavior == "Isolated" || behavior == "Removed" else {
                        throw fail("Split behavior \(behavior) is not supported (Isolated, Removed)")
                    }
                    let source: String
                    if let r = pattern["Regex"] as? String {
                        source = r
                    } else if let s = pattern["String"] as? String {
                        source = NSRegularExpression.escapedPattern(for: s)
                    } else {
                        throw fail("a Split pattern is neither Regex nor String")
                    }
                    if let problem = Self.backtrackingHazard(source) {
                        throw fail("the Split pattern \(source.debugDescription) \(problem)")
                    }
                    do {
                        let regex = try Regex(source).matchingSemantics(.unicodeScalar)
                        return .split(regex, removeMatches: behavior == "Removed")
                    } catch {
                        throw fail("the Split pattern \(source.debugDescription) does not compile: \(error)")
                    }
                case let other:
                    throw fail(
                        "pre-tokenizer \(other ?? "(untyped)") is not supported (ByteLevel, Split, Digits, Sequence)")
                }
            }
        }
        if let post = json["post_processor"] as? [String: Any] {
            for p in flatten(post, "processors") {
                switch p["type"] as? String {
                case "ByteLevel": break  // offsets only
                case "TemplateProcessing":
                    guard let single = p["single"] as? [[String: Any]] else { throw fail("TemplateProcessing without single") }
                    var seenSequence = false
                    for item in single {
                        if let special = item["SpecialToken"] as? [String: Any], let id = special["id"] as? String {
                            if seenSequence { suffix.append(id) } else { prefix.append(id) }
                        } else if item["Sequence"] != nil {
                            seenSequence = true
                        } else {
                            throw fail("a TemplateProcessing item that is neither SpecialToken nor Sequence")
                        }
                    }
                case "RobertaProcessing", "BertProcessing":
                    guard let cls = (p["cls"] as? [Any])?.first as? String, let sep = (p["sep"] as? [Any])?.first as? String
                    else { throw fail("\(p["type"]!) without cls and sep") }
                    prefix.append(cls)
                    suffix.append(sep)
                case let other:
                    throw fail("post-processor \(other ?? "(untyped)") is not supported")
                }
            }
        }
    }

    /// Why a pattern could make the backtracking matcher take exponential time (a repeated group that itself
    /// repeats something, as in `(a+)+`), or nil. The patterns tokenizers ship have no such group; a file that does is
    /// refused rather than risk a hang.
    static func backtrackingHazard(_ pattern: String) -> String? {
        let s = Array(pattern.unicodeScalars)
        var stack: [Bool] = [false]  // per open group: whether it holds a quantifier
        var i = 0, inClass = false
        func quantifierAt(_ k: Int) -> Bool { k < s.count && (s[k] == "*" || s[k] == "+" || s[k] == "{" || s[k] == "?") }
        func unbounded(_ k: Int) -> Bool {
            guard k < s.count else { return false }
            if s[k] == "*" || s[k] == "+" { return true }
            guard s[k] == "{" else { return false }
            var j = k + 1
            while j < s.count, s[j] != "}" { j += 1 }
            let inside = String(String.UnicodeScalarView(s[(k + 1)..<min(j, s.count)]))
            let parts = inside.split(separator: ",", omittingEmptySubsequences: false)
            return parts.count == 2 && (parts[1].isEmpty || (Int(parts[1]) ?? 0) > 16)
        }
        while i < s.count {
            let c = s[i]
            if c == "\\" { i += 2; if !inClass, quantifierAt(i) { stack[stack.count - 1] = true }; continue }
            if inClass { if c == "]" { inClass = false; if quantifierAt(i + 1) { stack[stack.count - 1] = true } }; i += 1; continue }
            switch c {
            case "[": inClass = true
            case "(": stack.append(false)
            case ")":
                let inner = stack.count > 1 ? stack.removeLast() : false
                if inner && unbounded(i + 1) { return "repeats a group that itself repeats (exponential backtracking)" }
                if quantifierAt(i + 1) || inner { stack[stack.count - 1] = true }
            case "*", "+", "{": stack[stack.count - 1] = true
            default: if quantifierAt(i + 1) { stack[stack.count - 1] = true }
            }
            i += 1
        }
        return nil
    }

    /// The pieces BPE encodes separately, in order.
    func split(_ text: String) -> [String] {
        var text = text
        for n in normalizers {
            switch n {
            case .nfc: text = text.precomposedStringWithCanonicalMapping
            }
        }
        var pieces = text.isEmpty ? [] : [text]
        for step in steps {
            pieces = pieces.flatMap { piece -> [String] in
                switch step {
                case let .split(regex, removeMatches): return Self.split(piece, regex, removeMatches: removeMatches)
                case let .digits(individual): return Self.splitDigits(piece, individual: individual)
                case let .byteLevel(addPrefixSpace, gpt2Pattern):
                    let spaced = addPrefixSpace && !piece.hasPrefix(" ") ? " " + piece : piece
                    return gpt2Pattern ? BPETokenizer.preTokenize(spaced) : [spaced]
                }
            }
        }
        return pieces
    }

    static func split(_ text: String, _ regex: Regex<AnyRegexOutput>, removeMatches: Bool) -> [String] {
        var out: [String] = [], cursor = text.startIndex
        for m in text.matches(of: regex) where !m.range.isEmpty {
            if m.range.lowerBound > cursor { out.append(String(text[cursor..<m.range.lowerBound])) }
            if !removeMatches { out.append(String(text[m.range])) }
            cursor = m.range.upperBound
        }
        if cursor < text.endIndex { out.append(String(text[cursor...])) }
        return out
    }

    /// Digits (`\p{Nd}`, as the `Digits` pre-tokenizer's `char::is_numeric`) split from the rest.
    static func splitDigits(_ text: String, individual: Bool) -> [String] {
        var out: [String] = [], current = String.UnicodeScalarView(), currentIsDigit = false
        func isDigit(_ c: Unicode.Scalar) -> Bool {
            switch c.properties.generalCategory {
            case .decimalNumber, .letterNumber, .otherNumber: return true
            default: return false
            }
        }
        for c in text.unicodeScalars {
            let d = isDigit(c)
            if !current.isEmpty && (d != currentIsDigit || (d && individual)) {
                out.append(String(current))
                current = String.UnicodeScalarView()
            }
            current.append(c)
            currentIsDigit = d
        }
        if !current.isEmpty { out.append(String(current)) }
        return out
    }
}
