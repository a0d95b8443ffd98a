import Foundation
import Reins
import ReinsTestSupport
import Testing

struct GenerationTests {
    let model: GPT2LMHeadModel
    let reference: SafeTensorsFile

    init() throws {
        guard case let .gpt2LMHead(m) = try PretrainedModel.load(directory: ModelParityTests.directory("gpt2-lm")) else {
            throw ModelError.badInput("the fixture is not a GPT-2 LM")
        }
        model = m
        reference = try SafeTensorsFile(path: ModelParityTests.directory("gpt2-lm").appendingPathComponent("generate.safetensors").path)
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
        let seq = try reference.intTensor("sequences"), width = seq.shape[1], L = try reference.intTensor("prompt_ids").shape[1]
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
        var stepped: [Float] = try model.logits(try IntTensor(shape: [1, 4], values: Array(ids.prefix(4))), cache: cache).scalars
        for (i, id) in ids.dropFirst(4).enumerated() {
            stepped += try model.logits(try IntTensor(shape: [1, 1], values: [id]), attentionMask: try IntTensor(shape: [1, 5 + i], values: [Int32](repeating: 1, count: 5 + i)),
                                        cache: cache).scalars
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
        #expect(throws: ModelError.tokenOutOfRange(position: 1, id: 500, vocabularySize: 97)) { try model.generate(prompts: [[1, 500]]) }
    }
}

struct BertInferenceTests {
    @Test func sentenceEmbeddingsAreMaskedMeansScaledToUnitLength() throws {
        guard case let .bert(m) = try PretrainedModel.load(directory: ModelParityTests.directory("bert-base")) else { return }
        let io = try SafeTensorsFile(path: ModelParityTests.directory("bert-base").appendingPathComponent("io.safetensors").path)
        let ids = try io.intTensor("input_ids"), mask = try io.intTensor("attention_mask")
        let e = try m.sentenceEmbeddings(ids, attentionMask: mask, tokenTypeIDs: try io.intTensor("token_type_ids"))
        // From the reference hidden states: the mean over real tokens, then unit length.
        let h = try io.tensor("last_hidden_state").scalars
        let (B, T, C) = (3, 9, 30)
        for b in 0..<B {
            var mean = [Float](repeating: 0, count: C)
            let real = (0..<T).filter { mask.values[b * T + $0] == 1 }
            for t in real { for c in 0..<C { mean[c] += h[(b * T + t) * C + c] / Float(real.count) } }
            let norm = mean.map { $0 * $0 }.reduce(0, +).squareRoot()
            expectClose(Array(e.scalars[(b * C)..<((b + 1) * C)]), mean.map { $0 / norm }, atol: 1e-5, rtol: 1e-4, "embedding \(b)")
        }
    }

    @Test func firstPositionOnlyEqualsTheFullLastLayer() throws {
        guard case let .bert(m) = try PretrainedModel.load(directory: ModelParityTests.directory("bert-base")) else { return }
        let io = try SafeTensorsFile(path: ModelParityTests.directory("bert-base").appendingPathComponent("io.safetensors").path)
        let ids = try io.intTensor("input_ids"), mask = try io.intTensor("attention_mask"), types = try io.intTensor("token_type_ids")
        let (B, T, C) = (3, 9, 30)
        // Against the reference: row 0 of transformers' last hidden state, padded sequences included.
        let first = try m.firstHiddenState(ids, attentionMask: mask, tokenTypeIDs: types)
        #expect(first.shape == [B, 1, C])
        let h = try io.tensor("last_hidden_state").scalars
        expectClose(first.scalars, (0..<B).flatMap { b in h[(b * T * C)..<(b * T * C + C)] }, "[CLS] states")
        // With a prefix and Houlsby adapters in every layer: the same values and the same gradients as slicing the full
        // hidden states (the last layer's keys and values still see every position).
        m.freeze()
        try m.attachPrefix(Parameter("prompt_embeddings", try Tensor.normal([4, m.config.layers * 2 * C], std: 0.5, seed: 3)))
        try m.addBottleneckAdapter("a", placement: .houlsby, size: C, bottleneck: 5, seed: 4)
        for (name, p) in m.namedParameters() where name.contains("adapter_up") {
            p.value = try Tensor.normal(p.value.shape, std: 0.3, seed: 5).requiringGradient() // not the no-op start
        }
        let trainable = m.trainableParameters
        #expect(trainable.count > 2)
        let weights = try Tensor.normal([B, 1, C], seed: 6)
        func run(_ firstOnly: Bool) throws -> ([Float], [[Float]]) {
            for p in trainable { p.zeroGradient() }
            let out = try firstOnly ? m.firstHiddenState(ids, attentionMask: mask, tokenTypeIDs: types)
                : m.hiddenStates(ids, attentionMask: mask, tokenTypeIDs: types).slice(axis: 1, 0..<1)
            try (out * weights).sum().backward()
            return (out.scalars, try trainable.map { try #require($0.gradient).scalars })
        }
        let (full, fullGrads) = try run(false), (cls, clsGrads) = try run(true)
        expectClose(cls, full, atol: 1e-6, rtol: 1e-5, "[CLS] states with adapters")
        for (i, (a, b)) in zip(clsGrads, fullGrads).enumerated() { expectClose(a, b, atol: 1e-6, rtol: 1e-4, "gradient of \(trainable[i].name)") }
    }

    @Test func fillMaskRanksTheMaskedPosition() throws {
        guard case let .bertMaskedLM(m) = try PretrainedModel.load(directory: ModelParityTests.directory("bert-mlm")) else { return }
        // A vocabulary for the fixture's 101 ids: the five specials, then w5 ... w100.
        let tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (5..<101).map { "w\($0)" }
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try tokens.joined(separator: "\n").write(to: dir.appendingPathComponent("vocab.txt"), atomically: true, encoding: .utf8)
        let tok = try WordPieceTokenizer(vocabularyFile: dir.appendingPathComponent("vocab.txt").path)
        let predictions = try m.fillMask("w14 [MASK] w16", tokenizer: tok, topK: 3)
        #expect(predictions.count == 1 && predictions[0].count == 3)
        // The same numbers straight from the logits at position 2 of [CLS] w14 [MASK] w16 [SEP].
        let logits = try m.logits(try IntTensor(shape: [1, 5], values: [2, 14, 4, 16, 3]))
        let row = Array(logits.scalars[(2 * 101)..<(3 * 101)])
        let best = row.indices.max { row[$0] < row[$1] }!
        #expect(predictions[0][0].id == Int32(best) && predictions[0][0].token == tokens[best])
        #expect(predictions[0][0].probability >= predictions[0][1].probability)
        #expect(throws: ModelError.badInput("the text has no [MASK]")) { try m.fillMask("w14 w16", tokenizer: tok) }
    }
}
