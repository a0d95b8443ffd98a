import Foundation
import Reins
import ReinsTestSupport
import Testing

struct PrefixReparameterizationTests {
    @Test func theMLPTrainsAndIsFoldedIntoPlainPrefixesWhenSaved() throws {
        func load() throws -> GPT2LMHeadModel {
            guard case let .gpt2LMHead(m) = try PretrainedModel.load(directory: Fixtures.model("gpt2-lm")) else {
                throw ModelError.badInput("fixture")
            }
            return m
        }
        let model = try load()
        model.freeze()
        let prefix = try Prefix(reparameterizedLength: 4, encoderHidden: 7, layers: 2, hidden: 30, heads: 3, seed: 5)
        try model.transformer.attach(prefix)
        let ids = try IntTensor(shape: [1, 5], values: [5, 17, 42, 3, 8])
        try model.loss(ids).backward()
        for (key, p) in model.namedParameters() {
            #expect((p.gradient != nil) == key.contains("prefix_encoder."), "\(key)")
        }
        let encoderCount: Int = 4 * 30 + (30 * 7 + 7) + (7 * 120 + 120)
        #expect(model.trainableParameterCount == encoderCount)
        let logits = try model.logits(ids)
        // Saved folded: plain PEFT prefix tuning, same logits in a fresh model.
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try PEFTAdapter.save(model, to: dir, taskType: "CAUSAL_LM")
        let fresh = try load()
        try AdapterFiles.load(directory: dir, into: fresh)
        expectClose(try fresh.logits(ids), logits, atol: 1e-5, rtol: 1e-5, "folded prefix after save and load")
        // Folding in place gives the same numbers and leaves P · layers · 2 · C parameters.
        try prefix.fold()
        #expect(prefix.encoder == nil)
        expectClose(try model.logits(ids), logits, atol: 1e-6, rtol: 1e-6, "folded in place")
        let adapterCount: Int = model.adapterNames.flatMap { model.parameters(ofAdapter: $0) }.map { $0.value.count }
            .reduce(0, +)
        #expect(adapterCount == 4 * 2 * 2 * 30)
    }
}
