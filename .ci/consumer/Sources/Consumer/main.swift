import Foundation
import Reins
import ReinsTensor

// A tiny use of the public API: one causal attention forward and backward.
let q = try Tensor.normal([1, 2, 3, 5], seed: 1).requiringGradient()
let out = try Tensor.attention(query: q, key: q, value: q, causal: true)
try out.sum().backward()
print(
    "consumer: Reins \(Reins.version), kernels \(Kernels.activeInstructionSet), attention output \(out.shape), gradient \(q.gradient!.shape)"
)

// The README's training example, compiled here so that it stays true (not run: it needs MiniLM and data).
func readmeTrainingExample(
    miniLMDirectory: URL, runDirectory: URL, tokenizer: WordPieceTokenizer,
    train: [LabeledText], dev: [LabeledText]
) throws {
    let base = try BertForSequenceClassification.pretrained(miniLMDirectory, labels: 45, pooling: .mean)
    try base.addAdapter("supersense", .lora(LoRAConfig(rank: 8, alpha: 16, targets: ["query", "value"], dropout: 0.1)))
    let task = try SequenceClassificationTask(
        model: base, labels: 45, train: train, evaluation: dev, padID: tokenizer.padID
    ) {
        let e = try tokenizer.encode($0, pair: $1, options: EncodingOptions(maxLength: 64, padding: .none));
        return (e.ids, e.typeIDs)
    }
    var options = TrainingOptions(steps: 500, batchSize: 32, learningRate: 2e-3)
    options.warmupSteps = 50; options.evaluateEvery = 100; options.outputDirectory = runDirectory;
    options.adapterName = "supersense"
    try Trainer(task: task, options: options).run()
    try base.addAdapter("sentiment", .houlsby(bottleneck: 32), labels: 2)
    base.activateAdapter("supersense")
}
