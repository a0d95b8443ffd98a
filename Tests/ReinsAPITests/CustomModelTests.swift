import Foundation
import Reins
import ReinsTensor
import Testing

// The example of the DocC article "Build a custom model" (Sources/Reins/Reins.docc/BuildACustomModel.md), as a user
// writes it: only the public API (no @testable import). Keep the two in step.

/// A small transformer classifier from Reins's layers: token and position embeddings, two BERT layers, mean pooling
/// over the real tokens, dropout and a linear head.
final class TinyClassifier: Module {
    let tokens: Embedding, positions: Embedding
    let layers: [BertLayer]
    let dropout: Dropout
    let head: Linear

    init(vocabulary: Int, width: Int, depth: Int, heads: Int, classes: Int, maxLength: Int) throws {
        let config = try BertConfig(
            vocabularySize: vocabulary, hidden: width, layers: depth, heads: heads,
            intermediate: 4 * width, positions: maxLength, attentionDropout: 0)
        tokens = try Embedding(count: vocabulary, size: width)
        positions = try Embedding(count: maxLength, size: width)
        layers = try (0..<depth).map { _ in try BertLayer(config) }
        dropout = try Dropout(0.1)
        head = try Linear(inputs: width, outputs: classes)
    }

    func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("tokens", tokens)
        visit.module("positions", positions)
        visit.modules("layers", layers)
        visit.module("head", head)
    }

    /// ids: [B, T] -> logits [B, classes]
    func logits(_ ids: IntTensor) throws -> Tensor {
        let where_ = try IntTensor(shape: [ids.shape[1]], values: (0..<Int32(ids.shape[1])).map { $0 })
        var h = try tokens(ids) + positions(where_)
        for layer in layers { h = try layer(h) }
        return try head(dropout(h.mean(axis: 1)))
    }
}

struct CustomModelTests {
    /// A toy task: is token 1 in the sequence?
    func batch(_ seed: UInt64) throws -> (IntTensor, IntTensor) {
        var g = SeededGenerator(seed: seed)
        var ids: [Int32] = [], labels: [Int32] = []
        for _ in 0..<16 {
            let row = (0..<7).map { _ in Int32(2 + g.next() % 9) }
            let positive = g.next() % 2 == 0
            ids += positive ? [1] + row.dropFirst() : row
            labels.append(positive ? 1 : 0)
        }
        return (try IntTensor(shape: [16, 7], values: ids), IntTensor(labels))
    }

    @Test func aCustomModelTrainsTakesLoRAAndSavesIt() throws {
        let model = try TinyClassifier(vocabulary: 11, width: 18, depth: 2, heads: 3, classes: 2, maxLength: 8)
        try model.initializeParameters(seed: 7)
        #expect(model.unregisteredParameters() == [], "every layer is registered")

        // Train every weight with AdamW.
        let optimizer = AdamW(learningRate: 3e-3)
        func step(_ seed: UInt64, _ parameters: [Parameter]) throws -> Float {
            let (ids, labels) = try batch(seed)
            for p in parameters { p.zeroGradient() }
            let loss = try TrainingMode.run(seed: seed) {
                try Tensor.crossEntropy(logits: model.logits(ids), targets: labels)
            }
            try loss.backward()
            optimizer.update(parameters)
            return try loss.item
        }
        let first = try step(0, model.trainableParameters)
        var last = first
        for s in 1..<60 { last = try step(UInt64(s), model.trainableParameters) }
        #expect(last < first * 0.7, "loss \(first) -> \(last)")

        // Freeze it and attach LoRA to the attention of both layers: only the adapter trains.
        try model.addAdapter("task", .lora(LoRAConfig(rank: 2, alpha: 4, targets: ["query", "value"])))
        #expect(model.trainableParameterCount == 2 * 2 * (2 * 18 + 2 * 18))
        let adapterOptimizer = AdamW(learningRate: 1e-2)
        for s in 100..<110 {
            let (ids, labels) = try batch(UInt64(s))
            for p in model.trainableParameters { p.zeroGradient() }
            try Tensor.crossEntropy(logits: model.logits(ids), targets: labels).backward()
            adapterOptimizer.update(model.trainableParameters)
        }
        let (ids, _) = try batch(999)
        let expected = try model.logits(ids)

        // Save the base and the adapter; load both into a fresh model.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("reins-custom-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        try model.save(to: dir.appendingPathComponent("base"), config: ["model_type": "tiny-classifier"])
        try model.saveAdapter("task", to: dir.appendingPathComponent("task"))
        let fresh = try TinyClassifier(vocabulary: 11, width: 18, depth: 2, heads: 3, classes: 2, maxLength: 8)
        try fresh.load(from: try Checkpoint(directory: dir.appendingPathComponent("base")), options: LoadOptions())
        try fresh.loadAdapter("task", from: dir.appendingPathComponent("task"))
        let reloaded = try fresh.logits(ids)
        #expect(reloaded.shape == expected.shape)
        #expect(
            zip(reloaded.scalars, expected.scalars).allSatisfy { abs($0 - $1) <= 1e-5 }, "logits after save and load")
    }

    @Test func blocksAndATiedOutputMakeALanguageModel() throws {
        // A two-block decoder from GPT-2's public blocks, its output layer tied to the token table.
        let config = try GPT2Config(vocabularySize: 13, positions: 9, hidden: 12, layers: 2, heads: 3)
        let tokens = try Embedding(count: 13, size: 12)
        let blocks = try (0..<2).map { try GPT2Block(config, layer: $0) }
        let norm = try LayerNorm(12)
        let output = TiedOutput(table: tokens)
        let ids = try IntTensor(shape: [2, 5], values: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        var h = try tokens(ids)
        for block in blocks { h = try block(h) }
        let logits = try output(norm(h))
        #expect(logits.shape == [2, 5, 13])
        #expect(
            performing: { try blocks[0](try Tensor.zeros([2, 5, 7])) },
            throws: { "\($0)".contains("[batch, length, 12]") })
    }

    @Test func anUnregisteredLayerIsReported() throws {
        final class Forgetful: Module {
            let used = try! Linear(inputs: 3, outputs: 2)
            let forgotten = try! Linear(inputs: 2, outputs: 2)
            let loose = Parameter("scale", Tensor([1, 2]))
            func visitParameters(_ visit: inout ParameterVisitor) { visit.module("used", used) }
        }
        #expect(Forgetful().unregisteredParameters().sorted() == ["forgotten", "loose"])
    }
}
