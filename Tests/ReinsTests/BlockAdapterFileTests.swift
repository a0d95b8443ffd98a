import Foundation
import Reins
import ReinsTestSupport
import Testing

struct BlockAdapterFileTests {
    @Test func blockAdaptersRoundTripAndBadFilesAreNamed() throws {
        func load() throws -> GPT2LMHeadModel {
            guard case let .gpt2LMHead(m) = try PretrainedModel.load(directory: Fixtures.model("gpt2-lm")) else {
                throw ModelError.badInput("fixture")
            }
            return m
        }
        let model = try load()
        try model.addBottleneckAdapter("t", placement: .houlsby, size: 30, bottleneck: 4, nonLinearity: .tanh)
        try model.addAdapterBias("t", intermediate: 37, size: 30)
        try model.addParallelAdapter("t", size: 30, bottleneck: 3, scale: 2)
        for (i, (key, p)) in model.namedParameters().enumerated() where key.contains(".adapters.") {
            p.value = try Tensor.normal(p.value.shape, std: 0.3, seed: UInt64(i)).requiringGradient()
        }
        let ids = try IntTensor(shape: [1, 5], values: [5, 17, 42, 3, 8])
        let expected = try model.logits(ids)
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try AdapterFiles.saveBlockAdapters(model, name: "t", to: dir)
        let fresh = try load()
        try AdapterFiles.load(directory: dir, into: fresh, name: "restored")
        expectClose(try fresh.logits(ids), expected, atol: 1e-6, rtol: 1e-6, "block adapters after save and load")
        // Only adapter tensors and JSON: 4 bytes per adapter parameter plus the header.
        let count = model.namedParameters().filter { $0.key.contains(".adapters.") }.map { $0.parameter.value.count }
            .reduce(0, +)
        let bytes =
            try FileManager.default.attributesOfItem(
                atPath: dir.appendingPathComponent("adapter_model.safetensors").path)[.size] as! Int
        #expect(bytes >= 4 * count && bytes < 4 * count + 8192)

        // A missing tensor and an unexpected one are named.
        let file = try SafeTensorsFile(path: dir.appendingPathComponent("adapter_model.safetensors").path)
        var tensors = try Dictionary(uniqueKeysWithValues: file.names.map { ($0, try file.tensor($0)) })
        tensors["transformer.h.1.adapters.output_adapter.adapter_up.bias"] = nil
        try SafeTensorsFile.write(tensors, to: dir.appendingPathComponent("adapter_model.safetensors").path)
        #expect(
            throws: ModelError.checkpointMismatch(
                missing: ["transformer.h.1.adapters.output_adapter.adapter_up.bias"], unexpected: [], misshaped: [])
        ) {
            try AdapterFiles.load(directory: dir, into: try load())
        }
        tensors["transformer.h.1.adapters.output_adapter.adapter_up.bias"] = try Tensor.zeros([30])
        tensors["transformer.h.9.adapters.output_adapter.adapter_up.bias"] = try Tensor.zeros([30])
        try SafeTensorsFile.write(tensors, to: dir.appendingPathComponent("adapter_model.safetensors").path)
        #expect(
            throws: ModelError.checkpointMismatch(
                missing: [],
                unexpected: [
                    "transformer.h.9.adapters.output_adapter.adapter_up.bias (no parameter 'transformer.h.9.adapters.output_adapter.adapter_up.bias' in the model)"
                ], misshaped: [])
        ) {
            try AdapterFiles.load(directory: dir, into: try load())
        }
    }
}
