import Foundation
import Reins
import ReinsTestSupport
import Testing

struct BertInferenceTests {
    @Test func sentenceEmbeddingsAreMaskedMeansScaledToUnitLength() throws {
        guard case let .bert(m) = try PretrainedModel.load(directory: Fixtures.model("bert-base")) else { return }
        let io = try SafeTensorsFile(path: Fixtures.model("bert-base").appendingPathComponent("io.safetensors").path)
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
            expectClose(
                Array(e.scalars[(b * C)..<((b + 1) * C)]), mean.map { $0 / norm }, atol: 1e-5, rtol: 1e-4,
                "embedding \(b)")
        }
    }

    @Test func firstPositionOnlyEqualsTheFullLastLayer() throws {
        guard case let .bert(m) = try PretrainedModel.load(directory: Fixtures.model("bert-base")) else { return }
        let io = try SafeTensorsFile(path: Fixtures.model("bert-base").appendingPathComponent("io.safetensors").path)
        let ids = try io.intTensor("input_ids"), mask = try io.intTensor("attention_mask"),
            types = try io.intTensor("token_type_ids")
        let (B, T, C) = (3, 9, 30)
        // Against the reference: row 0 of transformers' last hidden state, padded sequences included.
        let first = try m.firstHiddenState(ids, attentionMask: mask, tokenTypeIDs: types)
        #expect(first.shape == [B, 1, C])
        let h = try io.tensor("last_hidden_state").scalars
        expectClose(first.scalars, (0..<B).flatMap { b in h[(b * T * C)..<(b * T * C + C)] }, "[CLS] states")
        // With a prefix and Houlsby adapters in every layer: the same values and the same gradients as slicing the full
        // hidden states (the last layer's keys and values still see every position).
        m.freeze()
        try m.attachPrefix(
            Parameter("prompt_embeddings", try Tensor.normal([4, m.config.layers * 2 * C], std: 0.5, seed: 3)))
        try m.addBottleneckAdapter("a", placement: .houlsby, size: C, bottleneck: 5, seed: 4)
        for (name, p) in m.namedParameters() where name.contains("adapter_up") {
            p.value = try Tensor.normal(p.value.shape, std: 0.3, seed: 5).requiringGradient()  // not the no-op start
        }
        let trainable = m.trainableParameters
        #expect(trainable.count > 2)
        let weights = try Tensor.normal([B, 1, C], seed: 6)
        func run(_ firstOnly: Bool) throws -> ([Float], [[Float]]) {
            for p in trainable { p.zeroGradient() }
            let out =
                try firstOnly
                ? m.firstHiddenState(ids, attentionMask: mask, tokenTypeIDs: types)
                : m.hiddenStates(ids, attentionMask: mask, tokenTypeIDs: types).slice(axis: 1, 0..<1)
            try (out * weights).sum().backward()
            return (out.scalars, try trainable.map { try #require($0.gradient).scalars })
        }
        let (full, fullGrads) = try run(false), (cls, clsGrads) = try run(true)
        expectClose(cls, full, atol: 1e-6, rtol: 1e-5, "[CLS] states with adapters")
        for (i, (a, b)) in zip(clsGrads, fullGrads).enumerated() {
            expectClose(a, b, atol: 1e-6, rtol: 1e-4, "gradient of \(trainable[i].name)")
        }
    }

    @Test func fillMaskRanksTheMaskedPosition() throws {
        guard case let .bertMaskedLM(m) = try PretrainedModel.load(directory: Fixtures.model("bert-mlm")) else {
            return
        }
        // A vocabulary for the fixture's 101 ids: the five specials, then w5 ... w100.
        let tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (5..<101).map { "w\($0)" }
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try tokens.joined(separator: "\n").write(
            to: dir.appendingPathComponent("vocab.txt"), atomically: true, encoding: .utf8)
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
