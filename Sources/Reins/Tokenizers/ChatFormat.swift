import Foundation
import ReinsTensor

/// How a chat model wants its conversations: the byte-level BPE tokenizer, the chat template and the tokens that end
/// an assistant turn, read from a model directory (`tokenizer.json` and `tokenizer_config.json`).
public struct ChatFormat: @unchecked Sendable {
    public let tokenizer: BPETokenizer
    public let template: ChatTemplate
    /// `bos_token`, `eos_token` and the other variables the template reads.
    public var variables: [String: ChatValue]
    /// Generation stops at these: the tokenizer's `eos_token` and the model config's `eos_token_id`s.
    public var stopTokens: Set<Int32>

    public init(tokenizer: BPETokenizer, template: ChatTemplate, variables: [String: ChatValue] = [:], stopTokens: Set<Int32> = []) {
        (self.tokenizer, self.template, self.variables, self.stopTokens) = (tokenizer, template, variables, stopTokens)
    }

    /// The format of a model directory. The template is `tokenizer_config.json`'s `chat_template` (a string, or the
    /// entry named `default` of a list), else a `chat_template.jinja` file beside it.
    /// - Throws: ``TokenizerError`` when the directory has no byte-level BPE tokenizer.json or no chat template, and
    ///   ``ChatTemplateError`` for a template Reins cannot run.
    public init(directory: URL) throws {
        if GGUFModel.isGGUF(directory.path) {
            self = try ChatFormat(gguf: try GGUFFile(path: directory.path))
            return
        }
        let tokenizerPath = directory.appendingPathComponent("tokenizer.json").path
        tokenizer = try BPETokenizer(tokenizerJSON: tokenizerPath)
        let configPath = directory.appendingPathComponent("tokenizer_config.json").path
        let config = FileBytes.contents(configPath).flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] } ?? [:]
        var source: String? = config["chat_template"] as? String
        if let list = config["chat_template"] as? [[String: Any]] {
            source = list.first { $0["name"] as? String == "default" }?["template"] as? String
        }
        if source == nil, let data = FileBytes.contents(directory.appendingPathComponent("chat_template.jinja").path) {
            source = String(decoding: data, as: UTF8.self)
        }
        guard let source else {
            throw TokenizerError.malformed(
                path: configPath, line: nil, detail: "no chat_template (nor chat_template.jinja beside it)")
        }
        template = try ChatTemplate(source)
        variables = [:]
        stopTokens = []
        for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            // A special token is a string, or an AddedToken object with its `content`.
            let value = (config[key] as? String) ?? ((config[key] as? [String: Any])?["content"] as? String)
            if let value { variables[key] = .string(value) }
        }
        if case let .string(eos)? = variables["eos_token"], let id = tokenizer.id(of: eos) { stopTokens.insert(id) }
        if let model = try? Checkpoint.modelConfig(directory) {
            let ids = (model["eos_token_id"] as? [Any]) ?? (model["eos_token_id"].map { [$0] } ?? [])
            for id in ids { if let n = JSONNumber.exactInt(id), let i = Int32(exactly: n) { stopTokens.insert(i) } }
        }
    }

    /// The prompt ids for `messages` (special tokens come from the template's text, none are added).
    public func prompt(_ messages: [ChatTemplate.Message], addGenerationPrompt: Bool = true) throws -> [Int32] {
        tokenizer.encode(
            try template.render(messages, addGenerationPrompt: addGenerationPrompt, variables: variables),
            addingSpecialTokens: false)
    }

    /// A conversation for instruction tuning: its ids, with the loss on the assistant turns only (each turn's text as
    /// the template writes it, its end-of-turn token included, so the model learns to stop).
    ///
    /// The text is rendered turn by turn: the prompt before each assistant turn (with the generation prompt) must be
    /// a prefix of the conversation up to that turn, which holds for the templates models ship; pieces are tokenized
    /// separately, so a token never straddles a turn boundary.
    /// - Throws: ``ChatTemplateError`` when the conversation has no assistant turn, or the template renders a turn in a
    ///   way that is not an extension of the prompt before it.
    public func trainingSequence(_ messages: [ChatTemplate.Message], maxLength: Int? = nil) throws -> TokenSequence {
        guard messages.contains(where: { $0.role == "assistant" }) else {
            throw ChatTemplateError.runtime("a conversation without an assistant turn has nothing to learn")
        }
        var ids: [Int32] = [], trained: [Bool] = [], done = ""
        func append(_ text: String, train: Bool) {
            let piece = tokenizer.encode(text, addingSpecialTokens: false)
            ids += piece
            trained += [Bool](repeating: train, count: piece.count)
        }
        for (k, m) in messages.enumerated() where m.role == "assistant" {
            let before = try template.render(Array(messages[..<k]), addGenerationPrompt: true, variables: variables)
            let through = try template.render(Array(messages[...k]), addGenerationPrompt: false, variables: variables)
            guard before.hasPrefix(done), through.hasPrefix(before) else {
                throw ChatTemplateError.runtime(
                    "the template does not render assistant turn \(k + 1) as a continuation of the prompt before it")
            }
            append(String(before.dropFirst(done.count)), train: false)
            append(String(through.dropFirst(before.count)), train: true)
            done = through
        }
        let full = try template.render(messages, addGenerationPrompt: false, variables: variables)
        if full.hasPrefix(done), full.count > done.count { append(String(full.dropFirst(done.count)), train: false) }
        if let maxLength, ids.count > maxLength {
            ids = Array(ids.prefix(maxLength))
            trained = Array(trained.prefix(maxLength))
        }
        return TokenSequence(ids: ids, trainedTokens: trained)
    }
}
