import Foundation
import ReinsTensor
import ReinsTestSupport
import Testing
@testable import Reins

/// Instruction tuning: conversations formatted by the chat template with the loss on the assistant turns only.
struct InstructionTuningTests {
    static let folder = Fixtures.directory.appendingPathComponent("tokenizers")

    /// A chat format from the fixture tokenizer (Llama 3 style) and the SmolLM2 template, as a model directory holds them.
    static func format() throws -> ChatFormat {
        let json =
            try JSONSerialization.jsonObject(with: Data(contentsOf: folder.appendingPathComponent("chat.json")))
            as? [String: Any] ?? [:]
        let smol = (json["templates"] as? [String: Any])?["smollm2"] as? [String: Any] ?? [:]
        let tok = try BPETokenizer(tokenizerJSON: folder.appendingPathComponent("smollm/tokenizer.json").path)
        return ChatFormat(
            tokenizer: tok, template: try ChatTemplate(smol["template"] as? String ?? ""),
            stopTokens: Set([tok.id(of: "<|im_end|>")].compactMap { $0 }))
    }

    /// The ids equal apply_chat_template's for the whole conversation; exactly the assistant turns (with their
    /// `<|im_end|>\n`) carry loss.
    @Test func assistantTurnsAloneCarryTheLoss() throws {
        let format = try Self.format()
        let json =
            try JSONSerialization.jsonObject(with: Data(contentsOf: Self.folder.appendingPathComponent("chat.json")))
            as? [String: Any] ?? [:]
        let cases = ((json["templates"] as? [String: Any])?["smollm2"] as? [String: Any])?["cases"] as? [[String: Any]] ?? []
        var checked = 0
        for c in cases where c["add_generation_prompt"] as? Bool == false {
            let messages = (c["messages"] as? [[String: String]] ?? []).map {
                ChatTemplate.Message(role: $0["role"] ?? "", content: $0["content"] ?? "")
            }
            guard messages.contains(where: { $0.role == "assistant" }) else {
                #expect(throws: ChatTemplateError.self) { try format.trainingSequence(messages) }
                continue
            }
            let s = try format.trainingSequence(messages)
            #expect(s.ids == (c["ids"] as? [Int] ?? []).map(Int32.init), "ids as transformers renders and tokenizes them")
            let learned = zip(s.ids, s.trainedTokens ?? []).filter(\.1).map(\.0)
            let expected = messages.filter { $0.role == "assistant" }.map { $0.content + "<|im_end|>\n" }.joined()
            #expect(format.tokenizer.decode(learned) == expected)
            checked += 1
        }
        #expect(checked == 2)
        // Truncation keeps the marks aligned.
        let long = try format.trainingSequence(
            [.init(role: "user", content: "hi"), .init(role: "assistant", content: "hello there")], maxLength: 9)
        #expect(long.ids.count == 9 && long.trainedTokens?.count == 9)
    }

    /// A tiny Llama learns one answer by instruction tuning (full fine-tuning of a random model): greedy chat
    /// generation then gives it, and the loss fell.
    @Test func aTinyLlamaLearnsAnAnswer() throws {
        let format = try Self.format()
        let config = try LlamaConfig(
            vocabularySize: format.tokenizer.tokens.count, hidden: 36, intermediate: 52, layers: 2, heads: 6,
            keyValueHeads: 2, positions: 128, ropeTheta: 10000, tieWordEmbeddings: true)
        let model = try LlamaForCausalLM(config, seed: 5)
        let conversation: [ChatTemplate.Message] = [
            .init(role: "user", content: "What is the capital of France?"), .init(role: "assistant", content: "Paris."),
        ]
        let sequence = try format.trainingSequence(conversation)
        let task = try CausalLMTask(
            model: model, train: [TokenSequence](repeating: sequence, count: 4), evaluation: [sequence], padID: 0)
        let before = try task.evaluate()["loss"] ?? 0
        try Trainer(task: task, options: TrainingOptions(steps: 40, batchSize: 4, learningRate: 0.01)).run()
        let after = try task.evaluate()["loss"] ?? .infinity
        #expect(after < before / 4, "loss \(before) -> \(after)")
        let prompt = try format.prompt([conversation[0]])
        let out = try model.generate(
            prompts: [prompt], options: GenerationOptions(maxNewTokens: 12, stopTokens: format.stopTokens))[0]
        let answer = out.dropFirst(prompt.count).filter { !format.stopTokens.contains($0) }
        #expect(format.tokenizer.decode(Array(answer)) == "Paris.")
        #expect(out.last.map { format.stopTokens.contains($0) } == true, "stops at <|im_end|>")
    }

    @Test func conversationFilesAreReadWithNamedErrors() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let good = dir.appendingPathComponent("chat.jsonl")
        try Data(
            """
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
            {"prompt": "2+2?", "completion": "4"}
            """.utf8
        ).write(to: good)
        let read = try DataFiles.conversations(good)
        #expect(read.count == 2 && read[0].count == 3 && read[1] == [.init(role: "user", content: "2+2?"), .init(role: "assistant", content: "4")])
        let bad = dir.appendingPathComponent("bad.jsonl")
        try Data(#"{"messages": [{"role": "user"}]}"#.utf8).write(to: bad)
        #expect(throws: DataError.badValue(path: bad.path, line: 1, field: "messages", detail: "message 1 needs a string role and a string content")) {
            try DataFiles.conversations(bad)
        }
        try Data(#"{"text": "plain"}"#.utf8).write(to: bad)
        #expect(throws: DataError.missingField(path: bad.path, line: 1, field: "messages (or prompt and completion)")) {
            try DataFiles.conversations(bad)
        }
    }
}
