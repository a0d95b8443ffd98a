import ReinsTensor

/// Evaluation that the ranks of a data-parallel run split between them: each rank summarizes its own consecutive
/// slice of the evaluation data as numbers, the ranks exchange them, and every rank computes the metrics one process
/// would (the same examples, the same statistics; only float rounding in batched products may differ). The built-in
/// tasks all conform, and their ``TrainingTask/evaluate()`` is the one-shard case of it. A task that does not conform
/// is evaluated whole by every rank.
public protocol ShardedEvaluation: TrainingTask {
    /// The numbers that summarize the evaluation examples of slice `shard` of `shards`.
    func evaluationPart(shard: Int, of shards: Int) throws -> [Double]
    /// The metrics from every slice's part, in slice order.
    func metrics(fromParts parts: [[Double]]) throws -> [String: Double]
}

extension ShardedEvaluation {
    /// The whole evaluation as one slice.
    func evaluateAsOneShard() throws -> [String: Double] {
        try metrics(fromParts: [try evaluationPart(shard: 0, of: 1)])
    }
}

/// The examples of slice `shard` of `shards` of `count` examples cut into batches of `batch`: whole batches, so that a
/// batch-seeded evaluation (masked LM) sees the same batches as one process.
func shardRange(count: Int, batch: Int, shard: Int, of shards: Int) -> Range<Int> {
    let batches = (count + batch - 1) / max(batch, 1)
    let (first, last) = (batches * shard / max(shards, 1), batches * (shard + 1) / max(shards, 1))
    return min(first * batch, count)..<min(last * batch, count)
}
