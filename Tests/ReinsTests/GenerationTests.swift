import Foundation
import Reins
import ReinsTestSupport
import Testing

struct GenerationTests {
    let model: GPT2LMHeadModel
    let reference: SafeTensorsFile

    init() throws {
        guard case let .gpt2LMHead(m) = try PretrainedModel.load(directory: Fixtures.model("gpt2-lm")) else {
            throw ModelError.badInput("the fixture is not a GPT-2 LM")
        }
        model = m
        reference = try SafeTensorsFile(
            path: Fixtures.model("gpt2-lm").appendingPathComponent("generate.safetensors").path)
    }

    /// The prompts of the fixture, padding removed.
    func prompts() throws -> [[Int32]] {
        let ids = try reference.intTensor("prompt_ids"), mask = try reference.intTensor("attention_mask")
        let (B, L) = (ids.shape[0], ids.shape[1])
        return (0..<B).map { b in (0..<L).compactMap { mask.values[b * L + $0] == 1 ? ids.values[b * L + $0] : nil } }
    }

    @Test func greedyMatchesTransformersOnLeftPaddedBatches() throws {
        let prompts = try prompts()
        let out = try model.generate(prompts: prompts, options: GenerationOptions(maxNewTokens: 12, padID: 96))
        let seq = try reference.intTensor("sequences"), width = seq.shape[1],
            L = try reference.intTensor("prompt_ids").shape[1]
        for (b, p) in prompts.enumerated() {
            let expected = Array(seq.values[(b * width + L)..<((b + 1) * width)])
            #expect(Array(out[b].dropFirst(p.count)) == expected, "prompt \(b)")
            // The same prompt alone continues the same way.
            #expect(try model.generate(prompts: [p], options: GenerationOptions(maxNewTokens: 12)) == [out[b]])
        }
    }

    @Test func theCacheGivesTheSameLogitsAsRecomputing() throws {
        let ids: [Int32] = [5, 17, 42, 3, 8, 60, 11]
        let full = try model.logits(try IntTensor(shape: [1, 7], values: ids))
        let cache = KVCache(layers: 2)
        var stepped: [Float] = try model.logits(
            try IntTensor(shape: [1, 4], values: Array(ids.prefix(4))), cache: cache
        ).scalars
        for (i, id) in ids.dropFirst(4).enumerated() {
            stepped += try model.logits(
                try IntTensor(shape: [1, 1], values: [id]),
                attentionMask: try IntTensor(shape: [1, 5 + i], values: [Int32](repeating: 1, count: 5 + i)),
                cache: cache
            ).scalars
        }
        expectClose(stepped, full.scalars, atol: 1e-5, rtol: 1e-5, "logits with the KV cache")
        #expect(cache.length == 7)
    }

    @Test func samplingIsSeededAndHonoursItsSettings() throws {
        let prompt: [[Int32]] = [[5, 17, 42]]
        func sample(_ o: GenerationOptions) throws -> [Int32] { try model.generate(prompts: prompt, options: o)[0] }
        let a = try sample(GenerationOptions(maxNewTokens: 15, greedy: false, temperature: 1.5, seed: 7))
        #expect(try sample(GenerationOptions(maxNewTokens: 15, greedy: false, temperature: 1.5, seed: 7)) == a)
        #expect(try sample(GenerationOptions(maxNewTokens: 15, greedy: false, temperature: 1.5, seed: 8)) != a)
        // top-k = 1 and a tiny nucleus are greedy whatever the seed.
        let greedy = try sample(GenerationOptions(maxNewTokens: 15))
        #expect(try sample(GenerationOptions(maxNewTokens: 15, greedy: false, topK: 1, seed: 3)) == greedy)
        #expect(try sample(GenerationOptions(maxNewTokens: 15, greedy: false, topP: 1e-6, seed: 4)) == greedy)
        // A strong repetition penalty avoids repeating the greedy loop's favourite token.
        let penalised = try sample(GenerationOptions(maxNewTokens: 15, repetitionPenalty: 100))
        #expect(Set(penalised.dropFirst(3)).count > Set(greedy.dropFirst(3)).count)
        // A stop token ends the sequence right after it appears.
        let stop = greedy[4]
        #expect(try sample(GenerationOptions(maxNewTokens: 15, stopTokens: [stop])) == Array(greedy.prefix(5)))
    }

    @Test func badRequestsThrow() throws {
        #expect(throws: ModelError.sequenceTooLong(length: 25, maximum: 24)) {
            try model.generate(prompts: [[1, 2, 3, 4, 5]], options: GenerationOptions(maxNewTokens: 20))
        }
        #expect(throws: ModelError.self) { try model.generate(prompts: [[]]) }
        #expect(throws: ModelError.badInput("maxNewTokens must not be negative, got -1")) {
            try model.generate(prompts: [[1]], options: GenerationOptions(maxNewTokens: -1))
        }
        #expect(throws: ModelError.tokenOutOfRange(position: 1, id: 500, vocabularySize: 97)) {
            try model.generate(prompts: [[1, 500]])
        }
    }
}
