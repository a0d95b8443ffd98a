import Foundation
import ReinsTensor

extension PEFTAdapter {
    /// PEFT IA3: one tensor `<layer>.ia3_l` per adapted linear layer, `[out, 1]` (output scaling) or `[1, in]` (input
    /// scaling, the `feedforward_modules`), and any heads saved with it.
    static func loadIA3(directory: URL, config: ConfigReader, into model: any Module, name: String) throws {
        let (file, weightsPath) = try weightsFile(directory)
        let linears = Dictionary(
            model.namedModules().compactMap { key, m in (m as? Linear).map { (key, $0) } },
            uniquingKeysWith: { a, _ in a })
        var built: [(Linear, IA3)] = [], heads: [(key: String, plain: String, tensor: Tensor)] = []
        for key in file.tensorNames.sorted() {
            let path = modelPath(key)
            guard path.hasSuffix(".ia3_l") else {
                if path.contains("ia3_") {
                    throw ModelError.checkpointMismatch(
                        missing: [], unexpected: ["\(key) (an IA3 tensor Reins does not implement)"], misshaped: [])
                }
                try collectHead(key, path: path, from: file, adapter: name, into: &heads)
                continue
            }
            let module = String(path.dropLast(".ia3_l".count))
            guard let layer = linears[module] else {
                throw ModelError.checkpointMismatch(
                    missing: [], unexpected: ["\(key) (no linear layer '\(module)' in the model)"], misshaped: [])
            }
            let t = try file.tensor(key)
            let scalesInput = t.shape == [1, layer.inputs] && t.shape != [layer.outputs, 1]
            guard t.shape == [layer.outputs, 1] || scalesInput else {
                throw ModelError.checkpointMismatch(
                    missing: [], unexpected: [],
                    misshaped: ["\(key) is \(t.shape), expected [\(layer.outputs), 1] or [1, \(layer.inputs)]"])
            }
            built.append((layer, IA3(vector: try t.reshaped([-1]).detached(), scalesInput: scalesInput)))
        }
        guard !built.isEmpty else { throw ModelError.badConfig(path: weightsPath, detail: "no ia3_l tensors") }
        let installHeads = try headInstaller(heads, into: model, name: name)
        for (layer, v) in built { try layer.attachIA3(name, v) }
        installHeads()
    }

    /// IA3 vectors: nil when the adapter has none.
    static func saveIA3(_ model: any Module, name: String) throws -> PEFTPart? {
        let ia3Layers = model.namedModules().compactMap { key, m -> (String, IA3, Bool)? in
            guard let l = m as? Linear, let v = l.ia3[name] else { return nil }
            return (key, v, l.weightTransposed)
        }
        guard !ia3Layers.isEmpty else { return nil }
        var part = PEFTPart()
        part.config.merge([
            "peft_type": "IA3", "target_modules": ia3Layers.map { $0.0 },
            "feedforward_modules": ia3Layers.filter { $0.1.scalesInput }.map { $0.0 },
            "fan_in_fan_out": ia3Layers.contains { $0.2 }, "init_ia3_weights": true,
        ]) { _, new in new }
        for (key, v, _) in ia3Layers {
            part.tensors["base_model.model.\(key).ia3_l"] = try v.vector.value.reshaped(
                v.scalesInput ? [1, -1] : [-1, 1]
            ).detached()
            part.written.insert(ObjectIdentifier(v.vector))
        }
        return part
    }
}
