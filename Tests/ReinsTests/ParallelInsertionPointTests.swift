import Foundation
import Reins
import ReinsTestSupport
import Testing

struct ParallelInsertionPointTests {
    /// AdapterBias and the parallel adapter on both model families: no change at attach, only they train, counts.
    @Test(arguments: ["AdapterBias", "parallel"])
    func startAsNoOpsAndTrainAlone(method: String) throws {
        let (C, I, L, m) = (30, 37, 2, 6)
        guard case let .gpt2LMHead(lm) = try PretrainedModel.load(directory: Fixtures.model("gpt2-lm")),
            case let .bertSequenceClassification(cls) = try PretrainedModel.load(directory: Fixtures.model("bert-cls"))
        else { return }
        let ids = try IntTensor(shape: [1, 5], values: [2, 14, 15, 16, 3])
        for model in [lm as any Module, cls] {
            func run() throws -> Tensor {
                if let lm = model as? GPT2LMHeadModel { return try lm.loss(ids) }
                return try Tensor.crossEntropy(
                    logits: (model as! BertForSequenceClassification).logits(ids), targets: IntTensor([1]))
            }
            let before = try run().item
            model.freeze()
            if method == "AdapterBias" {
                try model.addAdapterBias("t", intermediate: I, size: C)
            } else {
                try model.addParallelAdapter("t", size: C, bottleneck: m)
            }
            #expect(abs(try run().item - before) < 1e-6, "\(method): nothing changes at attach")
            let perLayer = method == "AdapterBias" ? (I + 1) + C : (C * m + m) + (m * C + C)
            #expect(model.trainableParameterCount == L * perLayer)
            try run().backward()
            for (key, p) in model.namedParameters() {
                #expect(
                    (p.gradient != nil)
                        == key.contains(method == "AdapterBias" ? ".adapter_bias." : ".parallel_adapter."), "\(key)")
            }
            // Once v (or W_up) moves, the output moves; switching the adapter off restores it.
            for (key, p) in model.namedParameters()
            where key.hasSuffix("adapter_vector") || key.hasSuffix("adapter_alpha.weight")
                || key.contains("parallel_adapter.t.adapter_up.weight")
            {
                p.value = try Tensor.normal(p.value.shape, std: 0.5, seed: 3).requiringGradient()
            }
            #expect(abs(try run().item - before) > 1e-4)
            model.activateAdapter(nil)
            #expect(abs(try run().item - before) < 1e-6)
        }
    }
}
