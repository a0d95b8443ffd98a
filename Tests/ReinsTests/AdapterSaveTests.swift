import Foundation
import Reins
import ReinsTensor
import ReinsTestSupport
import Testing

/// Saving adapters and bases loses nothing silently and mixes nothing in: three defects of the earlier save code, each
/// a test that failed before the insertion-point design (``AdapterSite``).
struct AdapterSaveTests {
    let ids = try! IntTensor(shape: [2, 5], values: [5, 17, 42, 3, 8, 9, 1, 77, 6, 2])

    /// A random but fixed value for every trainable parameter (a fresh adapter starts as a no-op, which would hide
    /// anything a save dropped).
    func randomize(_ model: any Module, seed: UInt64) throws {
        for (i, p) in model.trainableParameters.enumerated() {
            p.value = try Tensor.normal(p.value.shape, std: 0.1, seed: seed &+ UInt64(i)).requiringGradient()
        }
    }

    @Test func anAdapterCombiningLoRAAndHoulsbySavesAndLoadsWhole() throws {
        // Once saved only its LoRA half, without a word.
        let model = try BottleneckAdapterTests().gpt2()
        try model.addAdapter("task", .lora(LoRAConfig(rank: 2, alpha: 4, targets: ["c_attn"])))
        try model.addBottleneckAdapter("task", placement: .houlsby, size: 30, bottleneck: 5, seed: 3)
        model.activateAdapter("task")
        model.unfreeze { _ in true }
        model.freeze { !$0.contains("lora_") && !$0.contains(".adapters.") }
        try randomize(model, seed: 11)
        let expected = try model.logits(ids)
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try model.saveAdapter("task", to: dir)
        #expect(
            FileManager.default.fileExists(atPath: dir.appendingPathComponent("reins_adapter_model.safetensors").path))
        let fresh = try BottleneckAdapterTests().gpt2()
        try fresh.loadAdapter("task", from: dir)
        expectClose(try fresh.logits(ids), expected, atol: 1e-6, rtol: 1e-6, "LoRA + Houlsby after save and load")
        #expect(fresh.parameters(ofAdapter: "task").count == model.parameters(ofAdapter: "task").count)
    }

    @Test func adapterNamesAreMatchedAsWholeKeyComponents() throws {
        // An adapter named `1` once picked up adapter `x`'s layer-1 tensors (`h.1.` contains `.1.`).
        let model = try BottleneckAdapterTests().gpt2()
        try model.addAdapter("x", .houlsby(bottleneck: 4))
        try model.addAdapter("1", .pfeiffer(bottleneck: 3), seed: 9)
        try randomize(model, seed: 5)
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try model.saveAdapter("1", to: dir)
        let file = try SafeTensorsFile(path: dir.appendingPathComponent("adapter_model.safetensors").path)
        // Pfeiffer on 2 layers: down and up, weight and bias each: 8 tensors, all of them its own.
        #expect(file.names.count == 8, "\(file.names)")
        #expect(file.names.allSatisfy { $0.contains(".output_adapter.") && !$0.contains(".x.") })
        model.activateAdapter("1")
        let expected = try model.logits(ids)
        let fresh = try BottleneckAdapterTests().gpt2()
        try fresh.loadAdapter("1", from: dir)
        expectClose(try fresh.logits(ids), expected, atol: 1e-6, rtol: 1e-6, "adapter '1' after save and load")
    }

    @Test func aBaseSavesItsOwnHeadAndBiasesWhileAnAdapterIsActive() throws {
        // Once wrote the active adapter's head and BitFit biases (and a merged LoRA) in place of the base's own.
        let model = try BottleneckAdapterTests().bert()
        let baseLogits = try model.logits(ids)
        try model.addAdapter(
            "task", .loraBitFit(LoRAConfig(rank: 2, alpha: 4, targets: ["query", "value"])), labels: 3)
        try randomize(model, seed: 21)
        for case let layer as any LoRAHost in model.namedModules().map(\.module) where !layer.loras.isEmpty {
            try layer.merge()
        }
        #expect(try model.logits(ids).scalars != baseLogits.scalars)
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try model.save(
            to: dir, config: try Checkpoint.readJSON(Fixtures.model("bert-cls").appendingPathComponent("config.json")))
        guard case let .bertSequenceClassification(reloaded) = try PretrainedModel.load(directory: dir) else {
            throw ModelError.badInput("kind")
        }
        expectClose(
            try reloaded.logits(ids), baseLogits, atol: 1e-6, rtol: 1e-6,
            "the base saved while an adapter is active and merged")
        // The model itself is as it was: the adapter still active and merged.
        #expect(model.activeAdapterName == "task")
        #expect(model.namedModules().contains { ($0.module as? any LoRAHost)?.isMerged == true })
    }

    @Test func anAdapterNoFormatCanHoldWholeIsRefusedByName() throws {
        let model = try BottleneckAdapterTests().gpt2()
        try model.addAdapter("task", .lora(LoRAConfig(rank: 2, alpha: 4, targets: ["c_attn"])))
        try model.addIA3("task")
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(
            performing: { try model.saveAdapter("task", to: dir) },
            throws: { "\($0)".contains("was not saved") && "\($0)".contains("ia3_l.task") })
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty, "a refused save writes nothing")
    }
}
