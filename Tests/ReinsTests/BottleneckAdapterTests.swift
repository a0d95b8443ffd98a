import Foundation
import Reins
import ReinsTestSupport
import Testing

struct BottleneckAdapterTests {
    func gpt2() throws -> GPT2LMHeadModel {
        guard case let .gpt2LMHead(m) = try PretrainedModel.load(directory: Fixtures.model("gpt2-lm")) else {
            throw ModelError.badInput("fixture")
        }
        return m
    }
    func bert() throws -> BertForSequenceClassification {
        guard case let .bertSequenceClassification(m) = try PretrainedModel.load(directory: Fixtures.model("bert-cls"))
        else { throw ModelError.badInput("fixture") }
        return m
    }

    @Test(arguments: [BottleneckPlacement.houlsby, .pfeiffer])
    func adaptersStartAsNoOpsAndTrainAloneOnBothModels(placement: BottleneckPlacement) throws {
        let (C, m, L) = (30, 5, 2)
        let perAdapter = C * m + m + m * C + C
        let count = placement == .houlsby ? 2 * L : L

        let lm = try gpt2()
        let ids = try IntTensor(shape: [1, 6], values: [5, 17, 42, 3, 8, 60])
        let base = try lm.logits(ids).scalars
        lm.freeze()
        #expect(try lm.addBottleneckAdapter("task", placement: placement, size: C, bottleneck: m) == count)
        expectClose(try lm.logits(ids).scalars, base, atol: 1e-6, rtol: 1e-6, "GPT-2: W_up = 0, nothing changes")
        #expect(lm.trainableParameterCount == count * perAdapter)
        try LoRATests.trainAdapterAlone(lm, ids, marker: ".adapters.")
        #expect(try lm.logits(ids).scalars != base)

        let cls = try bert()
        let bids = try IntTensor(shape: [1, 5], values: [2, 14, 15, 16, 3])
        let bbase = try cls.logits(bids).scalars
        cls.freeze()
        try cls.addBottleneckAdapter("task", placement: placement, size: C, bottleneck: m, nonLinearity: .gelu)
        cls.unfreeze { $0.hasPrefix("classifier.") }
        expectClose(try cls.logits(bids).scalars, bbase, atol: 1e-6, rtol: 1e-6, "BERT: nothing changes at attach")
        #expect(cls.trainableParameterCount == count * perAdapter + (C * 3 + 3))
        try Tensor.crossEntropy(logits: cls.logits(bids), targets: IntTensor([1])).backward()
        for (key, p) in cls.namedParameters() {
            #expect((p.gradient != nil) == (key.contains(".adapters.") || key.hasPrefix("classifier.")), "\(key)")
        }
    }

    @Test func adaptersSwitchOnOneBase() throws {
        let lm = try gpt2()
        let ids = try IntTensor(shape: [1, 6], values: [5, 17, 42, 3, 8, 60])
        let base = try lm.logits(ids).scalars
        lm.freeze()
        try lm.addBottleneckAdapter("a", placement: .pfeiffer, size: 30, bottleneck: 4, seed: 1)
        try lm.addBottleneckAdapter("b", placement: .houlsby, size: 30, bottleneck: 3, seed: 2)
        // Give both adapters non-zero up-projections so that they differ from the base and from each other.
        for (key, p) in lm.namedParameters() where key.contains("adapter_up.weight") {
            p.value = try Tensor.normal(p.value.shape, std: 0.5, seed: UInt64(key.count)).requiringGradient()
        }
        lm.activateAdapter("a")
        let a = try lm.logits(ids).scalars
        lm.activateAdapter("b")
        let b = try lm.logits(ids).scalars
        lm.activateAdapter(nil)
        expectClose(try lm.logits(ids).scalars, base, atol: 1e-6, rtol: 1e-6, "all adapters off")
        #expect(a != base && b != base && a != b)
        lm.activateAdapter("a")
        expectClose(try lm.logits(ids).scalars, a, atol: 1e-6, rtol: 1e-6, "back to a")
        for block in lm.blockAdapters { block.afterFeedForward.remove("a") }
        expectClose(try lm.logits(ids).scalars, base, atol: 1e-6, rtol: 1e-6, "a deleted")
    }

    @Test func bitFitTrainsOnlyBiasesAndCombinesWithLoRA() throws {
        let lm = try gpt2()
        lm.applyBitFit()
        let biases = lm.namedParameters().filter { $0.key.hasSuffix(".bias") }
        #expect(lm.trainableParameterCount == biases.map { $0.parameter.value.count }.reduce(0, +))
        let ids = try IntTensor(shape: [1, 4], values: [1, 2, 3, 4])
        try lm.loss(ids).backward()
        for (key, p) in lm.namedParameters() { #expect((p.gradient != nil) == key.hasSuffix(".bias"), "\(key)") }
        // LoRA + BitFit in one adapter.
        let layer = lm.transformer.blocks[0].attentionIn
        try layer.attachLoRA("combo", LoRA(inputs: layer.inputs, outputs: layer.outputs, rank: 2, alpha: 4, seed: 3))
        lm.applyBitFit(alsoTrain: { $0.contains(".lora_") })
        #expect(lm.trainableParameterCount == biases.map { $0.parameter.value.count }.reduce(0, +) + 2 * (30 + 90))
    }
}
