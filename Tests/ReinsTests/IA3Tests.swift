import Foundation
import Reins
import ReinsTestSupport
import Testing

struct IA3Tests {
    @Test func peftIA3ReproducesPEFTLogitsStartsAsANoOpAndTrainsAlone() throws {
        guard case let .gpt2LMHead(model) = try PretrainedModel.load(directory: Fixtures.model("gpt2-lm")) else {
            return
        }
        let ids = try IntTensor(shape: [1, 5], values: [5, 17, 42, 3, 8])
        let base = try model.logits(ids).scalars
        try PEFTAdapter.load(directory: LoRATests.adapter("gpt2-ia3"), into: model)
        let io = try SafeTensorsFile(
            path: LoRATests.adapter("gpt2-ia3").appendingPathComponent("expected.safetensors").path)
        expectClose(
            try model.logits(try io.intTensor("input_ids"), attentionMask: try io.intTensor("attention_mask")),
            try io.tensor("logits"),
            atol: 1e-4, rtol: 1e-4, "GPT-2 + IA3 (c_attn output, mlp.c_proj input) logits")
        // A fresh IA3 adapter (vectors of ones) changes nothing; only its vectors train: 3C per c_attn + 4C per c_proj input.
        model.activateAdapter(nil)
        model.freeze()
        for (key, m) in model.namedModules() {
            guard let l = m as? Linear else { continue }
            if key.hasSuffix("attn.c_attn") { try l.attachIA3("fresh", IA3(size: l.outputs, scalesInput: false)) }
            if key.hasSuffix("mlp.c_proj") { try l.attachIA3("fresh", IA3(size: l.inputs, scalesInput: true)) }
        }
        expectClose(try model.logits(ids).scalars, base, atol: 1e-6, rtol: 1e-6, "ones: nothing changes")
        #expect(model.trainableParameterCount == 2 * (90 + 37))
        try model.loss(ids).backward()
        for (key, p) in model.namedParameters() {
            #expect((p.gradient != nil) == key.contains(".ia3_l.fresh"), "\(key)")
        }
        #expect(throws: ModelError.self) {
            try model.transformer.blocks[0].attentionIn.attachIA3("bad", IA3(size: 7, scalesInput: false))
        }
    }
}
