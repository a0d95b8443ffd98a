import Foundation
import ReinsTensor

/// A model with a task head (sequence or token classification, question answering) that adapters can own: each
/// adapter in an adapter set may bring its own head (its own label count), registered under the model's head key
/// while the adapter is active, and saved and loaded with the adapter.
public protocol TaskHeadModel: Module {
    /// The model's own head and the adapters' heads.
    var heads: Variants<Linear> { get }
    /// The head's key in checkpoints (`classifier`, `score`, `qa_outputs`).
    var headKey: String { get }
    /// A freshly initialised head with `labels` outputs (question answering always has 2).
    func newHead(labels: Int, seed: UInt64) throws -> Linear
}

extension BertForSequenceClassification: TaskHeadModel { public var headKey: String { "classifier" } }
extension BertForTokenClassification: TaskHeadModel { public var headKey: String { "classifier" } }
extension BertForQuestionAnswering: TaskHeadModel { public var headKey: String { "qa_outputs" } }
extension GPT2ForSequenceClassification: TaskHeadModel { public var headKey: String { "score" } }
extension LlamaForSequenceClassification: TaskHeadModel { public var headKey: String { "score" } }

/// How a sequence-classification model turns token states into one vector.
public enum Pooling: String, Sendable {
    /// BERT's pooler: `tanh(dense(h[:, 0]))`.
    case cls
    /// The mean of the real tokens' states (sentence-transformers' pooling, what MiniLM was trained with).
    case mean

    /// `h: [B, T, C]`, `attentionMask: [B, T]` (nil: every token is real) to `[B, C]`.
    static func mean(_ h: Tensor, attentionMask: IntTensor?) throws -> Tensor {
        let (B, T) = (h.shape[0], h.shape[1])
        var weights = [Float](repeating: 1 / Float(T), count: B * T)
        if let m = attentionMask {
            for b in 0..<B {
                let n = max(1, (0..<T).reduce(0) { $0 + (m.values[b * T + $1] != 0 ? 1 : 0) })
                for t in 0..<T { weights[b * T + t] = m.values[b * T + t] != 0 ? 1 / Float(n) : 0 }
            }
        }
        // [B, 1, T] · [B, T, C] -> [B, 1, C]
        let w = try Tensor(shape: [B, 1, T], values: weights)
        return try Tensor.matmul(w, h).reshaped([B, h.shape[2]])
    }
}
