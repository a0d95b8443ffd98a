import Foundation
import ReinsTensor

extension PEFTAdapter {
    /// PEFT LoHa: four tensors per adapted linear layer, `<layer>.hada_w1_a` `[out, r]`, `hada_w1_b` `[r, in]`,
    /// `hada_w2_a`, `hada_w2_b`, scale `alpha / r` (per module with `rank_pattern` / `alpha_pattern`), and heads.
    /// Options that change the computation and that Reins does not implement (rank or module dropout, Tucker cores
    /// for convolutions) are refused by name.
    static func loadLoHa(directory: URL, config reader: ConfigReader, into model: any Module, name: String) throws {
        for key in ["rank_dropout", "module_dropout"] {
            let p = try reader.float(key, default: 0)
            try reader.require(p == 0, "\(key) \(p) is not supported (LoHa without dropout)")
        }
        try reader.require(
            reader.json["use_effective_conv2d"] as? Bool != true, "use_effective_conv2d is not supported")
        let expectedRank = try checkLoRAConfig(
            reader, adaptive: false, hostKeys: model.namedModules().compactMap { $0.module is Linear ? $0.key : nil })
        let alpha = try reader.float("alpha", default: 8)
        let alphaPattern = reader.json["alpha_pattern"] as? [String: Any] ?? [:]
        let (file, weightsPath) = try weightsFile(directory)
        let linears = Dictionary(
            model.namedModules().compactMap { key, m in (m as? Linear).map { (key, $0) } },
            uniquingKeysWith: { a, _ in a })
        let parts = ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"]
        var factors: [String: [String: Tensor]] = [:], heads: [(key: String, plain: String, tensor: Tensor)] = []
        for key in file.tensorNames.sorted() {
            let path = modelPath(key)
            guard let part = parts.first(where: { path.hasSuffix(".\($0)") }) else {
                if path.contains("hada_") {
                    throw ModelError.checkpointMismatch(
                        missing: [], unexpected: ["\(key) (a LoHa tensor Reins does not implement)"], misshaped: [])
                }
                try collectHead(key, path: path, from: file, adapter: name, into: &heads)
                continue
            }
            let module = String(path.dropLast(part.count + 1))
            guard linears[module] != nil else {
                throw ModelError.checkpointMismatch(
                    missing: [], unexpected: ["\(key) (no linear layer '\(module)' in the model)"], misshaped: [])
            }
            factors[module, default: [:]][part] = try file.tensor(key)
        }
        guard !factors.isEmpty else {
            throw ModelError.badConfig(
                path: weightsPath, detail: "no hada_w1_a / hada_w1_b / hada_w2_a / hada_w2_b tensors")
        }
        var built: [(Linear, LoHa)] = []
        for module in factors.keys.sorted() {
            let f = factors[module]!, layer = linears[module]!  // both filled together above
            guard let w1a = f["hada_w1_a"], let w1b = f["hada_w1_b"], let w2a = f["hada_w2_a"], let w2b = f["hada_w2_b"]
            else {
                let absent = parts.filter { f[$0] == nil }.map { "\(module).\($0)" }
                throw ModelError.checkpointMismatch(missing: absent, unexpected: [], misshaped: [])
            }
            let r = w1a.shape.last ?? 0
            if let wanted = expectedRank(module), wanted != r {
                throw ModelError.checkpointMismatch(
                    missing: [], unexpected: [],
                    misshaped: ["\(module): rank \(r) in the tensors, \(wanted) in adapter_config.json"])
            }
            let moduleAlpha =
                try alphaPattern.keys.sorted { $0.count > $1.count }.first { patternMatches($0, module) }
                .map { key -> Float in
                    guard let v = JSONNumber.double(alphaPattern[key]) else {
                        throw ModelError.badConfig(path: reader.path, detail: "alpha_pattern['\(key)'] is not a number")
                    }
                    return Float(v)
                } ?? alpha
            let loha: LoHa
            do { loha = try LoHa(w1a: w1a, w1b: w1b, w2a: w2a, w2b: w2b, scale: moduleAlpha / Float(max(r, 1))) } catch
            {
                throw ModelError.checkpointMismatch(missing: [], unexpected: [], misshaped: ["\(module): \(error)"])
            }
            do { try loha.check(fits: layer) } catch {
                throw ModelError.checkpointMismatch(missing: [], unexpected: [], misshaped: ["\(module): \(error)"])
            }
            built.append((layer, loha))
        }
        let installHeads = try headInstaller(heads, into: model, name: name)
        for (layer, loha) in built { try layer.attach(name, loha) }
        installHeads()
    }

    /// LoHa: nil when the adapter has no LoHa layer.
    static func saveLoHa(_ model: any Module, name: String) throws -> PEFTPart? {
        let layers = model.namedModules().compactMap { key, m -> (String, LoHa)? in
            ((m as? Linear)?.methods.members[name] as? LoHa).map { (key, $0) }
        }
        guard let first = layers.first else { return nil }
        var part = PEFTPart()
        let ranks = layers.map { $0.1.rank }, alphas = layers.map { $0.1.scale * Float($0.1.rank) }
        part.config = [
            "peft_type": "LOHA", "r": first.1.rank, "alpha": alphas[0], "target_modules": layers.map(\.0),
            "rank_pattern": Set(ranks).count > 1
                ? Dictionary(uniqueKeysWithValues: zip(layers.map(\.0), ranks)) : [String: Int](),
            "alpha_pattern": Set(alphas).count > 1
                ? Dictionary(uniqueKeysWithValues: zip(layers.map(\.0), alphas)) : [String: Float](),
            "rank_dropout": 0.0, "module_dropout": 0.0, "use_effective_conv2d": false, "init_weights": true,
        ]
        for (key, loha) in layers {
            for p in loha.parameters {
                part.tensors["base_model.model.\(key).\(p.name)"] = p.value.detached()
                part.written.insert(ObjectIdentifier(p))
            }
        }
        return part
    }
}
