import Foundation
import Reins
import ReinsTestSupport
import Testing

/// Byte-level BPE with the pre-tokenizers of Llama 3 (split regex, ignore_merges, a BOS from the post-processor),
/// Qwen2 (NFC, single digits) and SmolLM (Digits + GPT-2's regex) id for id with `tokenizers`, and chat templates
/// rendered as transformers' apply_chat_template renders them (Tests/Fixtures/make_chat_fixtures.py).
struct ChatTemplateTests {
    static let folder = Fixtures.directory.appendingPathComponent("tokenizers")
    let expected: [String: Any]

    init() throws {
        let data = try Data(contentsOf: Self.folder.appendingPathComponent("chat.json"))
        expected = try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
    }

    func tokenizer(_ style: String) throws -> BPETokenizer {
        try BPETokenizer(tokenizerJSON: Self.folder.appendingPathComponent("\(style)/tokenizer.json").path)
    }

    @Test(arguments: ["llama3", "qwen2", "smollm"])
    func preTokenizersMatchTokenizers(style: String) throws {
        let tok = try tokenizer(style)
        let texts = expected["texts"] as? [String] ?? []
        let s = (expected["styles"] as? [String: Any])?[style] as? [String: Any] ?? [:]
        let ids = (s["ids"] as? [[Int]] ?? []).map { $0.map(Int32.init) }
        let bare = (s["ids_without_specials"] as? [[Int]] ?? []).map { $0.map(Int32.init) }
        let decoded = s["decoded"] as? [String] ?? []
        #expect(texts.count > 10 && ids.count == texts.count && bare.count == texts.count)
        for (k, text) in texts.enumerated() {
            #expect(tok.encode(text) == ids[k], "\(style): \(text.debugDescription)")
            #expect(tok.encode(text, addingSpecialTokens: false) == bare[k], "\(style) without specials: \(text.debugDescription)")
            #expect(tok.decode(ids[k]) == decoded[k], "\(style) decode: \(text.debugDescription)")
        }
    }

    @Test(arguments: ["smollm2", "llama3", "qwen2", "llama31-style", "qwen25-style"])
    func templatesRenderAsTransformers(name: String) throws {
        let t = (expected["templates"] as? [String: Any])?[name] as? [String: Any] ?? [:]
        let template = try ChatTemplate(t["template"] as? String ?? "")
        let tok = try tokenizer(t["style"] as? String ?? "")
        let tools = try ChatValue(jsonText: expected["tools_json"] as? String ?? "null")
        let cases = t["cases"] as? [[String: Any]] ?? []
        #expect(cases.count >= 6)
        for c in cases {
            let messages = (c["messages"] as? [[String: String]] ?? []).map {
                ChatTemplate.Message(role: $0["role"] ?? "", content: $0["content"] ?? "")
            }
            var variables: [String: ChatValue] = [
                "bos_token": .string(t["bos_token"] as? String ?? ""), "eos_token": .string(t["eos_token"] as? String ?? ""),
            ]
            if !(c["tools"] is NSNull), c["tools"] != nil { variables["tools"] = tools }
            let generation = c["add_generation_prompt"] as? Bool ?? false
            let text = try template.render(messages, addGenerationPrompt: generation, variables: variables)
            #expect(text == c["text"] as? String, "\(name) generation \(generation) tools \(variables["tools"] != nil)")
            #expect(
                tok.encode(text, addingSpecialTokens: false) == (c["ids"] as? [Int] ?? []).map(Int32.init),
                "\(name) ids")
        }
    }

    /// What the interpreter does not implement is a named error, and so is a template's own refusal.
    @Test func unsupportedConstructsAndRefusalsAreNamed() throws {
        #expect(throws: ChatTemplateError.unsupported("the 'macro' tag")) {
            try ChatTemplate("{% macro m(x) %}{{ x }}{% endmacro %}{{ m(1) }}")
        }
        #expect(throws: ChatTemplateError.unsupported("the 'include' tag")) { try ChatTemplate("{% include 'x' %}") }
        #expect(throws: ChatTemplateError.unsupported("the wordwrap filter")) {
            try ChatTemplate("{{ messages | wordwrap }}").render([])
        }
        #expect(throws: ChatTemplateError.self) { try ChatTemplate("{% if x %}no end") }
        #expect(throws: ChatTemplateError.self) { try ChatTemplate("{{ 'unterminated }}") }
        let llama31 =
            ((expected["templates"] as? [String: Any])?["llama31-style"] as? [String: Any])?["template"] as? String ?? ""
        #expect(throws: ChatTemplateError.raised("Only user and assistant roles after the system message")) {
            try ChatTemplate(llama31).render([.init(role: "user", content: "a"), .init(role: "tool", content: "b")])
        }
        // Loops, scoping, filters and tests the templates above do not exercise.
        let t = try ChatTemplate(
            "{% for a, b in [[1, 'x'], [2, 'y']] if a > 1 %}{{ a }}{{ b | upper }}{% else %}none{% endfor %}"
                + "{% set n = 5 %}{% for i in range(3) %}{% set n = i %}{% if i == 1 %}{% break %}{% endif %}{% endfor %}{{ n }}"
                + "{{ [3, 4] | length }}{{ 'a,b' .split(',') | join('+') }}{{ none is none }}{{ 7 // 2 }}{{ 'é' ~ 1.5 }}")
        // The expected text is what jinja2 (ImmutableSandboxedEnvironment, trim/lstrip blocks, loopcontrols) renders.
        #expect(try t.render([]) == "2Y52a+bTrue3é1.5")
    }
}
