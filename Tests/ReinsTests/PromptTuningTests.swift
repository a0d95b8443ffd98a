import Foundation
import Reins
import ReinsTestSupport
import Testing

struct PromptTuningTests {
    @Test func peftPromptTuningReproducesPEFTLogitsAndTrainsAlone() throws {
        guard case let .gpt2LMHead(model) = try PretrainedModel.load(directory: Fixtures.model("gpt2-lm")) else {
            return
        }
        let dir = LoRATests.adapter("gpt2-prompt")
        try PEFTAdapter.load(directory: dir, into: model)
        #expect(model.transformer.promptLength == 5)
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        let ids = try io.intTensor("input_ids"), mask = try io.intTensor("attention_mask")
        expectClose(
            try model.logits(ids, attentionMask: mask), try io.tensor("logits"), atol: 1e-4, rtol: 1e-4,
            "GPT-2 + prompt tuning logits [B, P + T, V]")
        // Generation with the prompt in the KV cache agrees with recomputing every step.
        let out = try model.generate(prompts: [[5, 17, 42]], options: GenerationOptions(maxNewTokens: 5))[0]
        let full = try model.logits(try IntTensor(shape: [1, out.count - 1], values: Array(out.dropLast())))
        let V = full.shape[2]
        for t in 2..<(out.count - 1) {
            let row = Array(full.scalars[((5 + t) * V)..<((6 + t) * V)])
            #expect(Int32(row.indices.max { row[$0] < row[$1] }!) == out[t + 1], "step \(t)")
        }
        model.freeze()
        model.transformer.prompt!.isTrainable = true
        #expect(model.trainableParameterCount == 5 * 30)
        try model.loss(ids, attentionMask: mask).backward()
        for (key, p) in model.namedParameters() {
            #expect((p.gradient != nil) == key.hasSuffix("prompt_tuning_embeddings"), "\(key)")
        }
    }
}
