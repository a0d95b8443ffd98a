import Foundation
import Reins
import ReinsTensor
import ReinsTestSupport
import Testing

/// LoHa, the first method added through the generic linear-adapter site: PEFT's logits and gradients are checked with
/// the other PEFT adapters (LoRATests, AdapterFileTests, fixture bert-loha); here, the method's own guarantees.
struct LoHaTests {
    @Test func aNewLoHaIsANoOpTrainsAloneAndSavesInPEFTsLayout() throws {
        let model = try BottleneckAdapterTests().bert()
        let ids = try IntTensor(shape: [1, 5], values: [2, 14, 15, 16, 3])
        let base = try model.logits(ids).scalars
        let (C, r) = (30, 3)
        let count = try model.addAdapter(
            "task", .loha(LoHaConfig(rank: r, alpha: 6, targets: ["query", "value"])), labels: 2)
        // W2b starts at zero: nothing changes. Trainable: 2 layers × 2 targets × 2r(in + out), plus the new head.
        #expect(try model.logits(ids).shape == [1, 2])
        model.activateAdapter(nil)
        expectClose(try model.logits(ids).scalars, base, atol: 1e-6, rtol: 1e-6, "the base is untouched")
        model.activateAdapter("task")
        #expect(count == 2 * 2 * 2 * r * (C + C) + (2 * C + 2))
        try Tensor.crossEntropy(logits: model.logits(ids), targets: IntTensor([1])).backward()
        for (key, p) in model.namedParameters() {
            #expect((p.gradient != nil) == (key.contains(".hada_") || key.hasPrefix("classifier.")), "\(key)")
        }
        // Only W2b's gradient is non-zero at the start (the others multiply W2b = 0), as in PEFT.
        let w2b = try #require(model.namedParameters().first { $0.key.hasSuffix("query.hada_w2_b.task") }?.parameter)
        #expect(try #require(w2b.gradient).scalars.contains { $0 != 0 })
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        for p in model.trainableParameters {
            p.value = try Tensor.normal(p.value.shape, std: 0.2, seed: 3).requiringGradient()
        }
        let expected = try model.logits(ids)
        try model.saveAdapter("task", to: dir)
        let config = try Checkpoint.readJSON(dir.appendingPathComponent("adapter_config.json"))
        #expect(config["peft_type"] as? String == "LOHA" && config["r"] as? Int == r)
        let fresh = try BottleneckAdapterTests().bert()
        try fresh.loadAdapter("task", from: dir)
        expectClose(try fresh.logits(ids), expected, atol: 1e-6, rtol: 1e-6, "LoHa after save and load")
        #expect(throws: ModelError.self) {
            try model.addAdapter("none", .loha(LoHaConfig(rank: 2, targets: ["nothing"])))
        }
    }

    @Test func peftLoHaOptionsReinsDoesNotImplementAreRefused() throws {
        let source = LoRATests.adapter("bert-loha")
        for (key, value) in [("rank_dropout", 0.1 as Any), ("module_dropout", 0.5), ("use_effective_conv2d", true)] {
            let dir = try temporaryDirectory()
            defer { try? FileManager.default.removeItem(at: dir) }
            try FileManager.default.copyItem(
                at: source.appendingPathComponent("adapter_model.safetensors"),
                to: dir.appendingPathComponent("adapter_model.safetensors"))
            var config = try Checkpoint.readJSON(source.appendingPathComponent("adapter_config.json"))
            config[key] = value
            try JSONSerialization.data(withJSONObject: config).write(
                to: dir.appendingPathComponent("adapter_config.json"))
            let model = try BottleneckAdapterTests().bert()
            #expect(performing: { try model.loadAdapter("x", from: dir) }, throws: { "\($0)".contains(key) })
        }
    }
}
