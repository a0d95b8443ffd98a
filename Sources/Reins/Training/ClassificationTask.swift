import Foundation
import ReinsTensor

/// A text (or text pair) with a class label.
public struct LabeledText: Sendable, Equatable {
    public var text: String
    public var pair: String?
    public var label: Int

    public init(text: String, pair: String? = nil, label: Int) {
        (self.text, self.pair, self.label) = (text, pair, label)
    }
}

/// A model that maps a padded batch to class logits `[B, labels]`.
public protocol SequenceClassifier: Module {
    func logits(_ ids: IntTensor, attentionMask: IntTensor?, tokenTypeIDs: IntTensor?) throws -> Tensor
}

extension BertForSequenceClassification: SequenceClassifier {}
extension GPT2ForSequenceClassification: SequenceClassifier {}

/// A tokenized example, unpadded.
struct EncodedExample {
    let ids: [Int32], types: [Int32]
    let label: Int32
}

extension Array {
    /// Consecutive runs of at most `size` elements and where each starts (every task's evaluation batches).
    func batches(of size: Int) -> [(start: Int, rows: [Element])] {
        stride(from: 0, to: count, by: Swift.max(size, 1)).map { ($0, Array(self[$0..<Swift.min($0 + size, count)])) }
    }
}

/// Rows of different lengths right-padded with `pad` to the longest, as one `[B, T]` tensor (every task's batches,
/// the server's).
public func rightPadded(_ rows: [[Int32]], with pad: Int32) throws -> IntTensor {
    let T = rows.map(\.count).max() ?? 0
    return try IntTensor(
        shape: [rows.count, T], values: rows.flatMap { $0 + [Int32](repeating: pad, count: T - $0.count) })
}

/// The attention mask of ``rightPadded(_:with:)``: 1 on each row's real tokens, 0 on the padding, `[B, T]`.
public func paddingMask(_ rows: [[Int32]]) throws -> IntTensor {
    try rightPadded(rows.map { [Int32](repeating: 1, count: $0.count) }, with: 0)
}

/// Right-pads encoded examples to the longest: ids, attention mask and token types `[B, T]`.
/// Token types are nil when the examples have none (GPT-2 is run without them: given, it would add their embeddings).
func paddedBatch(_ rows: [EncodedExample], padID: Int32) throws -> (
    ids: IntTensor, mask: IntTensor, types: IntTensor?, tokens: Int
) {
    let ids = rows.map(\.ids)
    let types =
        rows.allSatisfy { $0.types.isEmpty }
        ? nil
        : try rightPadded(
            rows.map { $0.types.isEmpty ? [Int32](repeating: 0, count: $0.ids.count) : $0.types }, with: 0)
    return (try rightPadded(ids, with: padID), try paddingMask(ids), types, ids.reduce(0) { $0 + $1.count })
}

/// Sequence classification (single texts or pairs): cross-entropy on the class logits; evaluated by accuracy and
/// macro-F1.
public final class SequenceClassificationTask: ShardedEvaluation {
    public let classifier: any SequenceClassifier
    public var model: any Module { classifier }
    let train: [EncodedExample]
    let evaluation: [EncodedExample]
    let padID: Int32
    /// Examples per evaluation batch.
    public var evaluationBatchSize = 64

    /// - Parameters:
    ///   - encode: turns a text (and optional pair) into token ids and token types (one per id, or none: GPT-2 takes
    ///     none), truncated as the model allows.
    /// - Throws: ``ModelError/badInput(_:)`` for a label outside `0..<labels` or token types that do not match the ids
    ///   (naming the example), and encoding errors.
    public init(
        model: any SequenceClassifier, labels: Int, train: [LabeledText], evaluation: [LabeledText], padID: Int32,
        encode: (String, String?) throws -> (ids: [Int32], types: [Int32])
    ) throws {
        func prepare(_ set: [LabeledText], _ name: String) throws -> [EncodedExample] {
            try set.enumerated().map { i, e in
                guard (0..<labels).contains(e.label) else {
                    throw ModelError.badInput("\(name) example \(i + 1) has label \(e.label), outside 0..<\(labels)")
                }
                let (ids, types) = try encode(e.text, e.pair)
                guard types.isEmpty || types.count == ids.count else {
                    throw ModelError.badInput(
                        "\(name) example \(i + 1): \(types.count) token types for \(ids.count) ids")
                }
                return EncodedExample(ids: ids, types: types, label: Int32(e.label))
            }
        }
        classifier = model
        self.train = try prepare(train, "training")
        self.evaluation = try prepare(evaluation, "evaluation")
        self.padID = padID
    }

    public var trainingCount: Int { train.count }

    public func trainingLength(_ index: Int) -> Int? { train.indices.contains(index) ? train[index].ids.count : nil }

    public func loss(_ indices: [Int]) throws -> (loss: Tensor, tokens: Int) {
        let rows = indices.map { train[$0] }
        let b = try paddedBatch(rows, padID: padID)
        let logits = try classifier.logits(b.ids, attentionMask: b.mask, tokenTypeIDs: b.types)
        return (try Tensor.crossEntropy(logits: logits, targets: IntTensor(rows.map(\.label))), b.tokens)
    }

    /// Predicted classes for `examples`, in order (batched by similar length for speed).
    func predict(_ examples: [EncodedExample]) throws -> [Int] {
        var predictions = [Int](repeating: 0, count: examples.count)
        let order = examples.indices.sorted { examples[$0].ids.count < examples[$1].ids.count }
        for (_, chunk) in order.batches(of: evaluationBatchSize) {
            let b = try paddedBatch(chunk.map { examples[$0] }, padID: padID)
            let logits = try Autograd.withoutGradients {
                try classifier.logits(b.ids, attentionMask: b.mask, tokenTypeIDs: b.types)
            }
            for (row, best) in zip(chunk, logits.argmax()) { predictions[row] = best }
        }
        return predictions
    }

    public func evaluate() throws -> [String: Double] { try evaluateAsOneShard() }

    /// The predicted classes of the slice.
    public func evaluationPart(shard: Int, of shards: Int) throws -> [Double] {
        let range = shardRange(count: evaluation.count, batch: 1, shard: shard, of: shards)
        return try predict(Array(evaluation[range])).map(Double.init)
    }

    public func metrics(fromParts parts: [[Double]]) throws -> [String: Double] {
        guard !evaluation.isEmpty else { return [:] }
        let predicted = parts.joined().map { Int($0) }
        guard predicted.count == evaluation.count else {
            throw ModelError.badInput("\(predicted.count) predictions for \(evaluation.count) evaluation examples")
        }
        let truth = evaluation.map { Int($0.label) }
        return [
            "accuracy": Metrics.accuracy(predicted: predicted, truth: truth),
            "macro_f1": Metrics.macroF1(predicted: predicted, truth: truth),
        ]
    }

    public var primaryMetric: (name: String, higherIsBetter: Bool) { ("accuracy", true) }
}

extension BertForSequenceClassification {
    /// A sequence classifier on a pretrained BERT checkpoint (any head-less or headed BERT directory), with a new
    /// classifier of `labels` outputs initialised as transformers does.
    /// - Parameters:
    ///   - pooling: `.mean` averages the token states (for sentence-embedding models such as MiniLM, which were trained
    ///     that way); `.cls` uses the checkpoint's pooler; nil: the config's `reins_pooling`, else `.cls`.
    /// - Throws: ``ModelError`` for a checkpoint that does not fit (naming the tensors), ``SafeTensorsError``.
    public static func pretrained(_ directory: URL, labels: Int, pooling: Pooling? = nil) throws
        -> BertForSequenceClassification
    {
        guard labels > 0 else { throw ModelError.badInput("a classifier needs at least one label, got \(labels)") }
        let checkpoint = try Checkpoint(directory: directory)
        var json = checkpoint.config
        // A directory Reins saved after mean-pooled training says so (`reins_pooling`); otherwise BERT's pooler.
        let pooling = pooling ?? (json["reins_pooling"] as? String).flatMap(Pooling.init(rawValue:)) ?? .cls
        json["num_labels"] = labels
        json["id2label"] = nil
        let configPath = directory.appendingPathComponent("config.json").path
        let config = try BertConfig(json: json, path: configPath)
        try checkpoint.requireHolds(parameters: config.parameterCount, configPath: configPath)
        let model = try Initializer.$skipped.withValue(true) {
            try BertForSequenceClassification(config, pooling: pooling)
        }
        var options = LoadOptions(basePrefix: "bert", ignoredSuffixes: ["position_ids"])
        options.newlyInitialized = ["classifier."] + (pooling == .cls ? ["bert.pooler."] : [])
        // A checkpoint's own classifier is replaced; its pretraining heads (`cls.`, e.g. bert-base-uncased's masked LM) are not used.
        options.ignoredPrefixes = (pooling == .cls ? ["classifier."] : ["pooler.", "classifier."]) + ["cls."]
        options.replaced = ["classifier."]
        try model.load(from: checkpoint, options: options)
        return model
    }
}
