import Foundation
import Hummingbird
import Reins
import ReinsTensor

extension OpenAI {
    /// `/v1/classify`'s body: `input` is a string or a list of strings for a sequence- or token-classification
    /// adapter, and `{"question", "context"}` or a list of them for a question-answering adapter.
    struct ClassifyRequest: Decodable {
        let model: String
        let input: ClassifyInput
        /// Question answering: the longest answer span, in tokens (default 30).
        let max_answer_tokens: Int?
    }

    struct Question: Decodable {
        let question: String
        let context: String
    }

    enum ClassifyInput: Decodable {
        case texts([String])
        case questions([Question])

        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let s = try? c.decode(String.self) { self = .texts([s]); return }
            if let l = try? c.decode([String].self) { self = .texts(l); return }
            if let q = try? c.decode(Question.self) { self = .questions([q]); return }
            if let l = try? c.decode([Question].self) { self = .questions(l); return }
            throw DecodingError.dataCorruptedError(
                in: c,
                debugDescription: "input must be a string, a list of strings, or {\"question\", \"context\"} objects")
        }

        var count: Int {
            switch self {
            case let .texts(l): return l.count
            case let .questions(l): return l.count
            }
        }
    }
}

extension ReinsServer {
    /// `POST /v1/classify`: a classification or question-answering adapter's answers for a batch of inputs, computed
    /// in one pass over the shared base (with the other classify requests waiting, whatever their adapters), each row's
    /// adapter routed and its head on the final hidden states.
    /// - Sequence classification: each input's `label`, `probs` (softmax) and `logits`.
    /// - Token classification: each input's tokens with their `label` and its probability (`score`).
    /// - Question answering: the `answer` span of the context (the question's tokens come first, then the
    ///   context's) whose start and end logits add up highest, at most `max_answer_tokens` long, with that sum as `score`.
    func classify(_ data: Data) async throws -> Response {
        let request = try JSONDecoder().decode(OpenAI.ClassifyRequest.self, from: data)
        guard request.model != baseName else {
            throw ServerError.badRequest(
                "the base '\(baseName)' has no task head: name a classification or question-answering adapter (see /v1/models)")
        }
        // The engine checks the adapter in the pass that answers (no turn of its own before it).
        let adapter = request.model
        guard (1...256).contains(request.input.count) else { throw ServerError.badRequest("input takes 1 to 256 items") }
        let maxAnswer = request.max_answer_tokens ?? 30
        guard (1...options.maxPromptTokens).contains(maxAnswer) else {
            throw ServerError.badRequest("max_answer_tokens must be between 1 and \(options.maxPromptTokens), got \(maxAnswer)")
        }
        let tokenizer = format.tokenizer
        // Each input's tokens; for question answering, where the context's start.
        var sequences: [[Int32]] = [], contextStart: [Int] = []
        switch request.input {
        case let .texts(texts):
            sequences = texts.map { tokenizer.encode($0) }
        case let .questions(questions):
            for (i, q) in questions.enumerated() {
                let question = tokenizer.encode(q.question), context = tokenizer.encode(q.context)
                guard !context.isEmpty else { throw ServerError.badRequest("input \(i): the context is empty") }
                sequences.append(question + context)
                contextStart.append(question.count)
            }
        }
        try checkInputs(sequences)
        // Answered together with the other classify requests waiting at the engine's next turn.
        let output = try await engine.classify(sequences, adapter: adapter, questions: !contextStart.isEmpty)
        let L = output.labels.count
        let data: [[String: Any]] = sequences.enumerated().map { i, ids in
            let row = output.logits[i]
            switch output.task {
            case .sequenceClassification:
                let probs = Self.softmax(row[...])
                let best = probs.indices.max { probs[$0] < probs[$1] } ?? 0
                return ["index": i, "label": output.labels[best], "probs": probs, "logits": row, "num_classes": L]
            case .tokenClassification:
                let tokens = ids.indices.map { t -> [String: Any] in
                    let probs = Self.softmax(row[(t * L)..<((t + 1) * L)])
                    let best = probs.indices.max { probs[$0] < probs[$1] } ?? 0
                    return ["token": tokenizer.decode([ids[t]]), "label": output.labels[best], "score": probs[best]]
                }
                return ["index": i, "tokens": tokens]
            case .questionAnswering:
                let first = contextStart[i]
                var best = (start: first, end: first, score: -Float.infinity)
                for s in first..<ids.count {
                    for e in s..<min(ids.count, s + maxAnswer) where row[2 * s] + row[2 * e + 1] > best.score {
                        best = (s, e, row[2 * s] + row[2 * e + 1])
                    }
                }
                return [
                    "index": i, "answer": tokenizer.decode(Array(ids[best.start...best.end])), "score": best.score,
                    "start_token": best.start - first, "end_token": best.end - first,
                ]
            }
        }
        let tokens = sequences.map(\.count).reduce(0, +)
        return Self.json([
            "id": "classify-" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: ""),
            "object": "list", "created": Int(Date().timeIntervalSince1970), "model": request.model,
            "task": output.task.rawValue, "data": data, "usage": ["prompt_tokens": tokens, "total_tokens": tokens],
        ])
    }

    static func softmax(_ x: ArraySlice<Float>) -> [Float] {
        let top = x.max() ?? 0
        let e = x.map { Foundation.exp($0 - top) }
        let sum = e.reduce(0, +)
        return e.map { $0 / sum }
    }
}
