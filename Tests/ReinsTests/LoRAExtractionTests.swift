import Foundation
import Reins
import ReinsTestSupport
import Testing

struct LoRAExtractionTests {
    func load() throws -> GPT2LMHeadModel {
        guard case let .gpt2LMHead(m) = try PretrainedModel.load(directory: Fixtures.model("gpt2-lm")) else {
            throw ModelError.badInput("fixture")
        }
        return m
    }

    @Test func aRankTwoFineTuneIsRecoveredExactly() throws {
        let base = try load(), tuned = try load()
        // A fine-tune that moved two layers by exact rank-2 updates (in each layer's own storage layout).
        for (key, seed) in [("transformer.h.0.attn.c_attn", UInt64(1)), ("transformer.h.1.mlp.c_fc", UInt64(2))] {
            let layer = tuned.namedModules().first { $0.key == key }!.module as! Linear
            let u = try Tensor.normal([layer.outputs, 2], std: 0.3, seed: seed),
                v = try Tensor.normal([2, layer.inputs], std: 0.3, seed: seed + 10)
            let delta = try Tensor.matmul(u, v)  // [out, in]
            let stored = layer.weightTransposed ? try delta.transposed() : delta
            layer.weight.value = try (layer.weight.value + stored).detached()
        }
        let ids = try IntTensor(shape: [1, 6], values: [5, 17, 42, 3, 8, 60])
        let report = try LoRAExtraction.extract(base: base, fineTuned: tuned, rank: 2)
        #expect(report.layers.map(\.key) == ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc"])
        #expect(report.layers.allSatisfy { abs($0.energyKept - 1) < 1e-6 })
        #expect(report.otherChangedParameters.isEmpty)
        expectClose(
            try base.logits(ids), try tuned.logits(ids), atol: 1e-4, rtol: 1e-4, "base + extracted LoRA = fine-tune")

        // Rank 1 keeps only part of the energy; a changed bias is reported as not carried by LoRA.
        let base1 = try load()
        (tuned.namedModules().first { $0.key == "transformer.h.0.ln_1" }!.module as! LayerNorm).bias.value =
            try Tensor.ones([30])
        let report1 = try LoRAExtraction.extract(base: base1, fineTuned: tuned, rank: 1)
        #expect(report1.layers.allSatisfy { $0.rank == 1 && $0.energyKept > 0.2 && $0.energyKept < 0.999 })
        #expect(report1.otherChangedParameters == ["transformer.h.0.ln_1.bias"])
        // Another architecture is refused, naming what does not fit.
        guard case let .gpt2LMHead(other) = try PretrainedModel.load(directory: Fixtures.model("gpt2-variant")) else {
            return
        }
        #expect(throws: ModelError.self) { try LoRAExtraction.extract(base: try load(), fineTuned: other, rank: 2) }
    }
}
