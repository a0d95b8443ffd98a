import Foundation
import Reins
import ReinsTestSupport
import Testing

struct LoRAConfigTests {
    @Test func targetsFollowPEFTMatchingAndLayersNarrowThem() throws {
        guard case let .bertSequenceClassification(m) = try PretrainedModel.load(directory: Fixtures.model("bert-cls"))
        else { return }
        let keys = try m.addLoRA("a", LoRAConfig(rank: 2, targets: ["query", "output.dense"]))
        #expect(
            keys == [
                "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.output.dense",
                "bert.encoder.layer.0.output.dense",
                "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.output.dense",
                "bert.encoder.layer.1.output.dense",
            ])
        let one = try m.addLoRA("b", LoRAConfig(rank: 4, alpha: 8, targets: ["value"], layers: [1]))
        #expect(one == ["bert.encoder.layer.1.attention.self.value"])
        #expect(throws: ModelError.self) { try m.addLoRA("c", LoRAConfig(targets: ["c_attn"])) }
        // Parameter count: r · (in + out) per adapted layer (C = 30, intermediate 37).
        m.freeze()
        m.unfreeze { $0.contains(".lora_A.a.") || $0.contains(".lora_B.a.") }
        // Per layer: query 30 -> 30, attention.output.dense 30 -> 30, output.dense 37 -> 30; two layers, r = 2.
        #expect(m.trainableParameterCount == 2 * 2 * ((30 + 30) + (30 + 30) + (37 + 30)))
        // Merged equals unmerged; unmerging restores the base exactly.
        m.activateAdapter("a")
        for (key, p) in m.namedParameters() where key.contains("lora_B.a.") {
            p.value = try Tensor.normal(p.value.shape, std: 0.3, seed: 9).requiringGradient()
        }
        let ids = try IntTensor(shape: [1, 5], values: [2, 14, 15, 16, 3])
        let live = try m.logits(ids)
        let weights = m.namedParameters().filter { $0.key.hasSuffix("dense.weight") }.map { $0.parameter.value.scalars }
        try m.mergeLoRA()
        expectClose(try m.logits(ids), live, atol: 1e-5, rtol: 1e-5, "merged")
        try m.unmergeLoRA()
        #expect(
            m.namedParameters().filter { $0.key.hasSuffix("dense.weight") }.map { $0.parameter.value.scalars }
                == weights)
    }
}
