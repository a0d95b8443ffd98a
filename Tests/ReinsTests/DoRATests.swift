import Foundation
import Reins
import ReinsTestSupport
import Testing

/// DoRA (PEFT's `use_dora`): the adapted weight's direction from LoRA, its magnitude per output learned.
struct DoRATests {
    /// A new DoRA adapter: a no-op at attach (the magnitudes are the base's row norms), r·(in + out) + out parameters
    /// per layer, only adapter tensors train, merging gives the same logits and unmerging the base weight bit for bit,
    /// and save -> load into a fresh base reproduces the trained adapter.
    @Test func freshDoRAStartsAsANoOpTrainsMergesAndRoundTrips() throws {
        let model = try LoRATests().gpt2()
        let ids = try IntTensor(shape: [2, 5], values: [5, 17, 42, 3, 8, 9, 1, 77, 30, 2])
        let base = try model.logits(ids).scalars
        model.freeze()
        let keys = try model.addLoRA(
            "task", LoRAConfig(rank: 3, alpha: 6, targets: ["c_attn", "c_fc"], dora: true), seed: 5)
        let layers = model.namedModules().filter { keys.contains($0.key) }.compactMap { $0.module as? Linear }
        #expect(layers.count == 4)
        expectClose(try model.logits(ids).scalars, base, atol: 1e-5, rtol: 1e-5, "attaching DoRA changes nothing")
        #expect(model.trainableParameterCount == layers.map { 3 * ($0.inputs + $0.outputs) + $0.outputs }.reduce(0, +))
        let startMagnitudes = layers.map { $0.loras["task"]!.magnitude!.value.scalars }
        try LoRATests.trainAdapterAlone(model, ids)
        let trained = try model.logits(ids)
        #expect(trained.scalars != base, "the adapter learned something")
        #expect(layers.map { $0.loras["task"]!.magnitude!.value.scalars } != startMagnitudes, "the magnitudes moved")
        // Merged: W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖ per output, the same logits; unmerged: the base weight exactly.
        let weights = layers.map { $0.weight.value.scalars }
        for l in layers { try l.merge() }
        expectClose(try model.logits(ids), trained, atol: 1e-5, rtol: 1e-4, "merged")
        for l in layers { try l.unmerge() }
        #expect(layers.map { $0.weight.value.scalars } == weights)
        // Saved in PEFT's layout (use_dora, one lora_magnitude_vector per layer) and loaded into a fresh base.
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try PEFTAdapter.save(model, name: "task", to: dir, taskType: "CAUSAL_LM")
        #expect(try Checkpoint.readJSON(dir.appendingPathComponent("adapter_config.json"))["use_dora"] as? Bool == true)
        let file = try SafeTensorsFile(path: dir.appendingPathComponent("adapter_model.safetensors").path)
        #expect(file.names.filter { $0.hasSuffix(".lora_magnitude_vector") }.count == 4)
        let fresh = try LoRATests().gpt2()
        try PEFTAdapter.load(directory: dir, into: fresh)
        expectClose(try fresh.logits(ids), trained, atol: 1e-6, rtol: 1e-6, "after save and load")
        // One plain LoRA layer in a DoRA adapter cannot be written in PEFT's layout (one use_dora per adapter).
        let mlp = try #require(fresh.namedModules().first { $0.key == "transformer.h.0.mlp.c_proj" }?.module as? Linear)
        try mlp.attachLoRA("default", LoRA(inputs: mlp.inputs, outputs: mlp.outputs, rank: 2, alpha: 2, seed: 1))
        #expect { try PEFTAdapter.save(fresh, to: dir, taskType: "CAUSAL_LM") } throws: {
            "\($0)".contains(
                "mixes DoRA ('transformer.h.0.attn.c_attn') and plain LoRA ('transformer.h.0.mlp.c_proj') layers")
        }
    }

    /// With lora_dropout in training, PEFT's DoRA reads the dropped input in both terms it adds to the base output:
    /// `W x + b + (f - 1) ⊙ W·drop(x) + f ⊙ s·B·A·drop(x)`, f = m / ‖W + s·B·A‖ (BERT's [out, in] layout here).
    @Test func doraDropoutFollowsPEFTsFormula() throws {
        let layer = try Linear(inputs: 7, outputs: 5, seed: 3)
        layer.bias!.value = try Tensor.uniform([5], low: -1, high: 1, seed: 4)
        let a = try Tensor.uniform([2, 7], low: -0.5, high: 0.5, seed: 5),
            b = try Tensor.uniform([5, 2], low: -0.5, high: 0.5, seed: 6)
        let m = try Tensor.uniform([5], low: 0.5, high: 1.5, seed: 7)
        let lora = LoRA(a: a, b: b, scale: 1.5, magnitude: m)
        lora.dropout = 0.4
        try layer.attachLoRA("d", lora)
        let x = try Tensor.uniform([3, 7], low: -1, high: 1, seed: 8)
        let y = try TrainingMode.run(seed: 11) { try layer(x) }
        // The same mask: the layer's only dropout site draws from offset 0.
        let xd = try x.dropout(0.4, seed: 11, offset: 0)
        #expect(xd.scalars != x.scalars)
        // f from the definition, row by row of W + s·B·A.
        let w = layer.weight.value.scalars, delta = try Tensor.matmul(b, a).scalars
        var f: [Float] = []
        for o in 0..<5 {
            var sum: Float = 0
            for i in 0..<7 { let v = w[o * 7 + i] + 1.5 * delta[o * 7 + i]; sum += v * v }
            f.append(m.scalars[o] / sum.squareRoot())
        }
        let factor = try Tensor(shape: [5], values: f)
        let full = try Tensor.linear(x, weight: layer.weight.value, bias: layer.bias!.value)
        let droppedBase = try Tensor.linear(xd, weight: layer.weight.value)
        let low = try Tensor.linear(Tensor.linear(xd, weight: a), weight: b).scaled(by: 1.5)
        let expected = try full + (droppedBase * factor - droppedBase) + low * factor
        expectClose(y, expected, atol: 1e-5, rtol: 1e-5, "DoRA with dropout")
        // Outside training the dropout is off: b + f ⊙ (W x + s·B·A·x).
        let plain =
            try Tensor.linear(x, weight: layer.weight.value)
            + Tensor.linear(Tensor.linear(x, weight: a), weight: b).scaled(by: 1.5)
        expectClose(try layer(x), try plain * factor + layer.bias!.value, atol: 1e-5, rtol: 1e-5, "DoRA in inference")
    }
}
