import Foundation
import ReinsTensor

/// A token sequence for causal-LM training; the first `promptLength` tokens are context only (no loss), which is
/// instruction tuning's "loss on the completion only". `promptLength` 0 trains on every next token. A conversation
/// marks the tokens to learn one by one instead (`trainedTokens`: the assistant turns).
public struct TokenSequence: Sendable, Equatable {
    public var ids: [Int32]
    public var promptLength: Int
    /// Per token, whether it is predicted with loss (nil: every token after the prompt).
    public var trainedTokens: [Bool]?

    public init(ids: [Int32], promptLength: Int = 0) { (self.ids, self.promptLength) = (ids, promptLength) }

    /// A sequence whose loss covers exactly the tokens marked in `trainedTokens` (as many marks as ids).
    public init(ids: [Int32], trainedTokens: [Bool]) {
        (self.ids, self.promptLength, self.trainedTokens) = (ids, 0, trainedTokens)
    }

    /// The label of each position: the id where it is learned, -100 elsewhere.
    var labels: [Int32] {
        if let t = trainedTokens { return zip(ids, t).map { $1 ? $0 : -100 } }
        return ids.enumerated().map { $0.offset < promptLength ? -100 : $0.element }
    }

    /// How many next-token predictions carry loss (the first token is never predicted).
    var predictedCount: Int {
        if let t = trainedTokens { return t.dropFirst().filter { $0 }.count }
        return ids.count - max(promptLength, 1)
    }
}

/// Causal language modelling on a decoder (GPT-2, Llama family): next-token cross-entropy over the non-prompt, non-padding tokens; evaluated by
/// perplexity.
public final class CausalLMTask: ShardedEvaluation {
    public let languageModel: any CausalLanguageModel
    public var model: any Module { languageModel }
    let train: [TokenSequence], evaluation: [TokenSequence]
    let padID: Int32
    /// Sequences per evaluation batch.
    public var evaluationBatchSize = 16
    /// Turns generated ids into text. When set, evaluation also completes each evaluation prompt greedily (as many new
    /// tokens as its reference completion has, stopping at `stopTokens`) and scores the completions with corpus BLEU
    /// against the references (``Metrics/bleu(hypotheses:references:)``).
    public var decode: (([Int32]) -> String)?
    /// Tokens that end a generated completion (e.g. `<|endoftext|>`).
    public var stopTokens: Set<Int32> = []

    /// - Throws: ``ModelError/badInput(_:)`` for an empty sequence or a prompt as long as its sequence (no token to learn).
    public init(model: any CausalLanguageModel, train: [TokenSequence], evaluation: [TokenSequence], padID: Int32) throws {
        for (name, set) in [("training", train), ("evaluation", evaluation)] {
            if let i = set.firstIndex(where: { s in
                s.ids.count < 2 || s.promptLength >= s.ids.count || s.promptLength < 0
                    || s.trainedTokens.map { t in t.count != s.ids.count || !t.dropFirst().contains(true) } ?? false
            }) {
                throw ModelError.badInput(
                    "\(name) sequence \(i + 1) has \(set[i].ids.count) tokens and a prompt of \(set[i].promptLength): nothing to predict"
                )
            }
        }
        (languageModel, self.train, self.evaluation, self.padID) = (model, train, evaluation, padID)
    }

    public var trainingCount: Int { train.count }

    /// Right-padded ids, mask and labels (-100 on padding and prompt tokens) `[B, T]`, and the number of predicted tokens.
    func batch(_ rows: [TokenSequence]) throws -> (ids: IntTensor, mask: IntTensor, labels: IntTensor, predicted: Int) {
        let ids = rows.map(\.ids)
        let labels = rows.map(\.labels)
        let predicted = rows.reduce(0) { $0 + $1.predictedCount }
        return (try rightPadded(ids, with: padID), try paddingMask(ids), try rightPadded(labels, with: -100), predicted)
    }

    public func loss(_ indices: [Int]) throws -> (loss: Tensor, tokens: Int) {
        let rows = indices.map { train[$0] }
        let b = try batch(rows)
        let mask: IntTensor? = b.mask.values.contains(0) ? b.mask : nil
        return (
            try languageModel.loss(b.ids, labels: b.labels, attentionMask: mask), rows.reduce(0) { $0 + $1.ids.count }
        )
    }

    public func evaluate() throws -> [String: Double] { try evaluateAsOneShard() }

    /// The slice's summed negative log-likelihood and predicted-token count, then (with a decoder) BLEU's statistics
    /// of the prompted examples' continuations.
    public func evaluationPart(shard: Int, of shards: Int) throws -> [Double] {
        let range = shardRange(count: evaluation.count, batch: evaluationBatchSize, shard: shard, of: shards)
        let slice = Array(evaluation[range])
        var total = 0.0, count = 0
        for (_, rows) in slice.batches(of: evaluationBatchSize) {
            let b = try batch(rows)
            let mask: IntTensor? = b.mask.values.contains(0) ? b.mask : nil
            let loss = try Autograd.withoutGradients {
                try languageModel.loss(b.ids, labels: b.labels, attentionMask: mask)
            }
            total += Double(try loss.item) * Double(b.predicted)
            count += b.predicted
        }
        var part = [total, Double(count)]
        if let decode {
            var hypotheses: [String] = [], references: [String] = []
            for e in slice where e.promptLength > 0 {
                let prompt = Array(e.ids.prefix(e.promptLength)), reference = Array(e.ids.dropFirst(e.promptLength))
                let out = try languageModel.generate(
                    prompts: [prompt],
                    options: GenerationOptions(maxNewTokens: reference.count, stopTokens: stopTokens, padID: padID))[0]
                hypotheses.append(decode(Array(out.dropFirst(prompt.count)).filter { !stopTokens.contains($0) }))
                references.append(decode(reference.filter { !stopTokens.contains($0) }))
            }
            part += [Double(hypotheses.count)] + Metrics.bleuStatistics(hypotheses: hypotheses, references: [references])
        }
        return part
    }

    public func metrics(fromParts parts: [[Double]]) throws -> [String: Double] {
        guard !evaluation.isEmpty else { return [:] }
        let width = parts.first?.count ?? 0
        guard width == 2 || width == 13, parts.allSatisfy({ $0.count == width }) else {
            throw ModelError.badInput("evaluation parts of lengths \(parts.map(\.count)) do not fit a language-model task")
        }
        let sums = (0..<width).map { i in parts.reduce(0) { $0 + $1[i] } }
        let nll = sums[0] / max(sums[1], 1)
        var metrics = ["loss": nll, "perplexity": Metrics.perplexity(meanNegativeLogLikelihood: nll)]
        if width == 13, sums[2] > 0 { metrics["bleu"] = Metrics.bleu(statistics: Array(sums[3...])) }
        return metrics
    }

    public var primaryMetric: (name: String, higherIsBetter: Bool) { ("perplexity", false) }
}
