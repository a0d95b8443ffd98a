import Foundation
import ReinsTensor

extension PEFTAdapter {
    /// PEFT LoRA (and DoRA, rsLoRA, LoRA on embedding tables and tied output layers): `lora_A` / `lora_B` per adapted
    /// layer, heads in `modules_to_save`. AdaLoRA (Zhang et al., arXiv 2303.10512, `adaptive`) computes
    /// W x + α/(r₀ + 1e-5) · B·diag(E)·A·x with the ranks its allocation kept: loaded, it is LoRA with E folded into A
    /// (training continues as plain LoRA, saved as LORA).
    static func loadLoRA(
        directory: URL, config reader: ConfigReader, into model: any Module, name: String, adaptive: Bool
    ) throws {
        let config = reader.json, configPath = reader.path
        let initialRank = adaptive ? try reader.optionalInt("init_r") ?? 12 : 0
        let alpha = Float(try reader.float("lora_alpha", default: 8))
        let rsLoRA = config["use_rslora"] as? Bool ?? false
        let alphaPattern = config["alpha_pattern"] as? [String: Any] ?? [:]
        // Variants that change the computation and that Reins does not implement are refused, never ignored.
        let dora = config["use_dora"] as? Bool ?? false
        if config["lora_bias"] as? Bool == true {
            throw ModelError.badConfig(path: configPath, detail: "a bias on lora_B (lora_bias) is not supported")
        }
        let dropout = try reader.float("lora_dropout", default: 0)
        guard (0..<1).contains(dropout) else {
            throw ModelError.badConfig(path: configPath, detail: "lora_dropout \(dropout) is outside [0, 1)")
        }
        let (file, weightsPath) = try weightsFile(directory)

        let hosts = Dictionary(
            model.namedModules().compactMap { key, m in (m as? any LoRAHost).map { (key, $0) } },
            uniquingKeysWith: { a, _ in a })
        let expectedRank = try checkLoRAConfig(reader, adaptive: adaptive, hostKeys: Array(hosts.keys))
        var pairs: [String: (a: Tensor?, b: Tensor?)] = [:], heads: [(key: String, plain: String, tensor: Tensor)] = []
        var magnitudes: [String: Tensor] = [:], singularValues: [String: Tensor] = [:]  // DoRA; AdaLoRA's E
        // A linear layer's pair is `lora_A.weight` / `lora_B.weight` (AdaLoRA: `lora_A` / `lora_B`, beside `lora_E`); an
        // embedding table's `lora_embedding_A` / `_B`.
        let suffixes =
            adaptive
            ? [(".lora_A", true, false), (".lora_B", false, false)]
            : [
                (".lora_A.weight", true, false), (".lora_B.weight", false, false), (".lora_embedding_A", true, true),
                (".lora_embedding_B", false, true),
            ]
        for key in file.tensorNames.sorted() {
            let path = modelPath(key)
            if adaptive, path.hasSuffix(".lora_E") {
                singularValues[String(path.dropLast(".lora_E".count))] = try file.tensor(key)
                continue
            }
            if path.hasSuffix(".lora_magnitude_vector") {
                guard dora else {
                    throw ModelError.checkpointMismatch(
                        missing: [], unexpected: ["\(key) (a DoRA magnitude, but use_dora is not set)"], misshaped: [])
                }
                magnitudes[String(path.dropLast(".lora_magnitude_vector".count))] = try file.tensor(key)
                continue
            }
            if let (suffix, isA, isTable) = suffixes.first(where: { path.hasSuffix($0.0) }) {
                let module = String(path.dropLast(suffix.count))
                guard let host = hosts[module], (host is Embedding) == isTable else {
                    throw ModelError.checkpointMismatch(
                        missing: [],
                        unexpected: [
                            "\(key) (no \(isTable ? "embedding table" : "linear layer") '\(module)' in the model)"
                        ], misshaped: [])
                }
                var pair = pairs[module] ?? (nil, nil)
                if isA { pair.a = try file.tensor(key) } else { pair.b = try file.tensor(key) }
                pairs[module] = pair
            } else if path.contains(".lora_") {
                throw ModelError.checkpointMismatch(
                    missing: [], unexpected: ["\(key) (a LoRA tensor Reins does not implement)"], misshaped: [])
            } else {
                try collectHead(key, path: path, from: file, adapter: name, into: &heads)
            }
        }
        var built: [(any LoRAHost, LoRA)] = []
        for module in pairs.keys.sorted() {
            // `pairs` only holds modules found in `hosts` (checked when each tensor was read).
            let layer = hosts[module]!,
                (aName, bName) =
                    layer is Embedding ? ("lora_embedding_A", "lora_embedding_B") : ("lora_A.weight", "lora_B.weight")
            guard let a = pairs[module]!.a, let b = pairs[module]!.b else {
                throw ModelError.checkpointMismatch(
                    missing: ["\(module).\(pairs[module]!.a == nil ? aName : bName)"], unexpected: [], misshaped: [])
            }
            let (inputs, outputs) = (layer.loraInputs, layer.loraOutputs)
            let r = a.shape.first ?? 0
            guard a.rank == 2, b.rank == 2, a.shape[1] == inputs, b.shape == [outputs, r], r > 0 else {
                throw ModelError.checkpointMismatch(
                    missing: [], unexpected: [],
                    misshaped: [
                        "\(module): \(aName.replacingOccurrences(of: ".weight", with: "")) \(a.shape) and \(bName.replacingOccurrences(of: ".weight", with: "")) \(b.shape) for a \(inputs) -> \(outputs) \(layer is Embedding ? "table" : "layer") (expected [r, \(inputs)] and [\(outputs), r])"
                    ])
            }
            if let wanted = expectedRank(module), wanted != r {
                throw ModelError.checkpointMismatch(
                    missing: [], unexpected: [],
                    misshaped: [
                        "\(module): rank \(r) in the tensors, \(wanted) in adapter_config.json (r or rank_pattern)"
                    ])
            }
            let moduleAlpha =
                alphaPattern.keys.sorted { $0.count > $1.count }.first { patternMatches($0, module) }
                .flatMap { ConfigReader.number(alphaPattern[$0]!)?.floatValue } ?? alpha
            var scale = rsLoRA ? moduleAlpha / Float(r).squareRoot() : moduleAlpha / Float(r)
            var loraA = a
            if adaptive {
                guard let e = singularValues.removeValue(forKey: module) else {
                    throw ModelError.checkpointMismatch(missing: ["\(module).lora_E"], unexpected: [], misshaped: [])
                }
                guard e.shape == [r, 1] else {
                    throw ModelError.checkpointMismatch(
                        missing: [], unexpected: [],
                        misshaped: ["\(module).lora_E \(e.shape) for rank \(r) (expected [\(r), 1])"])
                }
                let (values, width) = (e.scalars, a.shape[1])
                loraA = try Tensor(
                    shape: a.shape, values: a.scalars.enumerated().map { $0.element * values[$0.offset / width] })
                scale = (alpha > 0 ? alpha : Float(r)) / (Float(initialRank) + 1e-5)
            }
            let magnitude = magnitudes.removeValue(forKey: module)
            if dora {
                guard !(layer is Embedding) else {
                    throw ModelError.badConfig(
                        path: configPath,
                        detail:
                            "use_dora with the embedding table '\(module)' is not supported (DoRA on linear layers only)"
                    )
                }
                guard let magnitude else {
                    throw ModelError.checkpointMismatch(
                        missing: ["\(module).lora_magnitude_vector (use_dora is set)"], unexpected: [], misshaped: [])
                }
                guard magnitude.shape == [outputs] else {
                    throw ModelError.checkpointMismatch(
                        missing: [], unexpected: [],
                        misshaped: [
                            "\(module).lora_magnitude_vector \(magnitude.shape) for a layer with \(outputs) outputs (expected [\(outputs)])"
                        ])
                }
            }
            let lora = LoRA(a: loraA, b: b, scale: scale, magnitude: magnitude)
            if !(layer is Embedding) { lora.dropout = dropout }  // PEFT applies no dropout on embedding tables
            built.append((layer, lora))
        }
        guard !built.isEmpty else {
            throw ModelError.badConfig(
                path: weightsPath, detail: "no lora_A / lora_B (or lora_embedding_A / _B) tensors")
        }
        if let stray = singularValues.keys.sorted().first {
            throw ModelError.checkpointMismatch(
                missing: [], unexpected: ["\(stray).lora_E (no lora_A / lora_B beside it)"], misshaped: [])
        }
        if let stray = magnitudes.keys.sorted().first {
            throw ModelError.checkpointMismatch(
                missing: [], unexpected: ["\(stray).lora_magnitude_vector (no lora_A / lora_B beside it)"],
                misshaped: [])
        }
        let installHeads = try headInstaller(heads, into: model, name: name)
        for (layer, lora) in built { try layer.attachLoRA(name, lora) }
        installHeads()
    }

    /// Checks what a LoRA `adapter_config.json` says against the model, as PEFT does when it builds the adapter:
    /// `r` is a positive integer, `target_modules` names at least one layer the model has, and every index in
    /// `layers_to_transform` is a layer of the model.
    /// - Returns: the rank the config gives a module (`rank_pattern`, else `r`; nil for AdaLoRA, whose ranks vary).
    /// - Throws: ``ModelError/badConfig(path:detail:)`` naming the field.
    static func checkLoRAConfig(_ config: ConfigReader, adaptive: Bool, hostKeys: [String]) throws -> (String) -> Int? {
        let r = try config.optionalInt("r")
        if let r { try config.require(r > 0, "r is \(r); a LoRA rank must be positive") }
        var rankPattern: [(key: String, rank: Int)] = []
        // AdaLoRA's rank_pattern is its allocation's masks, not ranks: its ranks come from the tensors alone.
        for (key, value) in adaptive ? [:] : config.json["rank_pattern"] as? [String: Any] ?? [:] {
            guard let rank = JSONNumber.exactInt(value), rank > 0 else {
                throw ModelError.badConfig(
                    path: config.path,
                    detail: "rank_pattern['\(key)'] is \(value); a LoRA rank must be a positive integer")
            }
            rankPattern.append((key, rank))
        }
        rankPattern.sort { $0.key.count > $1.key.count }
        let targets = config.json["target_modules"]
        if let pattern = targets as? String, pattern != "all-linear" {
            let regex = try? NSRegularExpression(pattern: "^(?:\(pattern))$")
            let matches = hostKeys.contains { key in
                regex?.firstMatch(in: key, range: NSRange(key.startIndex..., in: key)) != nil || key == pattern
            }
            try config.require(matches, "target_modules '\(pattern)' matches no layer of the model")
        } else if let names = targets as? [String], !names.isEmpty {
            let matches = hostKeys.contains { key in names.contains { key == $0 || key.hasSuffix("." + $0) } }
            try config.require(matches, "target_modules \(names) match no layer of the model")
        }
        let chosen: [Int]
        switch config.json["layers_to_transform"] {
        case nil, is NSNull: chosen = []
        case let list as [Any]:
            chosen = try list.map { v in
                guard let i = JSONNumber.exactInt(v) else {
                    throw ModelError.badConfig(
                        path: config.path, detail: "layers_to_transform holds \(v), not a layer index")
                }
                return i
            }
        default: chosen = [try config.int("layers_to_transform")]
        }
        if !chosen.isEmpty {
            // The model's layer count from its layer paths (`h.3.`, `layer.3.`), as PEFT finds layer indices.
            let layerIndex = try NSRegularExpression(pattern: "\\.(?:h|layer|layers|block|blocks)\\.(\\d+)\\.")
            let count =
                hostKeys.compactMap { key -> Int? in
                    guard let m = layerIndex.firstMatch(in: key, range: NSRange(key.startIndex..., in: key)),
                        let range = Range(m.range(at: 1), in: key)
                    else { return nil }
                    return Int(key[range])
                }.max().map { $0 + 1 } ?? 0
            if let bad = chosen.first(where: { !(0..<count).contains($0) }) {
                throw ModelError.badConfig(
                    path: config.path, detail: "layers_to_transform names layer \(bad); the model has \(count) layers")
            }
        }
        guard !adaptive else { return { _ in nil } }
        return { module in rankPattern.first { patternMatches($0.key, module) }?.rank ?? r }
    }

    /// Whether an `alpha_pattern` key names `module` as PEFT matches it: the key is a regular expression for the module
    /// path's end, after a dot (`(.*\.)?(key)$`); a key that is no valid expression matches as plain text.
    static func patternMatches(_ key: String, _ module: String) -> Bool {
        guard let regex = try? NSRegularExpression(pattern: "^(.*\\.)?(\(key))$") else {
            return module == key || module.hasSuffix("." + key)
        }
        return regex.firstMatch(in: module, range: NSRange(module.startIndex..., in: module)) != nil
    }

    /// LoRA (and DoRA, LoRA + BitFit as `bias: "all"`): nil when the adapter has no LoRA layer.
    static func saveLoRA(_ model: any Module, name: String) throws -> PEFTPart? {
        let layers = model.namedModules().compactMap { key, m -> (String, any LoRAHost, LoRA)? in
            guard let l = m as? any LoRAHost, let lora = l.loras[name] else { return nil }
            return (key, l, lora)
        }
        guard !layers.isEmpty else { return nil }
        var part = PEFTPart()
        // PEFT's config has one use_dora for every layer of an adapter.
        if let plain = layers.first(where: { $0.2.magnitude == nil }),
            let dora = layers.first(where: { $0.2.magnitude != nil })
        {
            throw ModelError.badInput(
                "adapter '\(name)' mixes DoRA ('\(dora.0)') and plain LoRA ('\(plain.0)') layers: PEFT's format has one use_dora for all of them"
            )
        }
        let ranks = Set(layers.map { $0.2.rank })
        let rank = layers.map { $0.2.rank }.max()!
        // PEFT's scale is alpha / r; write alpha = scale · r per module so any scale round-trips.
        let alphas = layers.map { $0.2.scale * Float($0.2.rank) }
        part.config.merge([
            "peft_type": "LORA", "r": rank, "lora_alpha": alphas[0], "use_rslora": false,
            "lora_dropout": layers[0].2.dropout, "bias": "none",
            "use_dora": layers.contains { $0.2.magnitude != nil },
            "target_modules": layers.map { $0.0 },
            "fan_in_fan_out": layers.contains { ($0.1 as? Linear)?.weightTransposed == true },
            "rank_pattern": ranks.count > 1
                ? Dictionary(uniqueKeysWithValues: layers.map { ($0.0, $0.2.rank) }) : [String: Int](),
            "alpha_pattern": Set(alphas).count > 1
                ? Dictionary(uniqueKeysWithValues: zip(layers.map { $0.0 }, alphas)) : [String: Float](),
            "init_lora_weights": true,
        ]) { _, new in new }
        for (key, layer, lora) in layers {
            let (a, b) =
                layer is Embedding ? ("lora_embedding_A", "lora_embedding_B") : ("lora_A.weight", "lora_B.weight")
            part.tensors["base_model.model.\(key).\(a)"] = lora.a.value.detached()
            part.tensors["base_model.model.\(key).\(b)"] = lora.b.value.detached()
            part.written.formUnion([ObjectIdentifier(lora.a), ObjectIdentifier(lora.b)])
            if let m = lora.magnitude {
                part.tensors["base_model.model.\(key).lora_magnitude_vector"] = m.value.detached();
                part.written.insert(ObjectIdentifier(m))
            }
        }
        // LoRA + BitFit: the adapter's own biases, as PEFT's bias="all" saves them (a LoRA-wrapped layer's bias under
        // `.base_layer.bias`).
        for (key, m) in model.namedModules() {
            let variant = (m as? Linear)?.biases?.variants[name] ?? (m as? LayerNorm)?.biases.variants[name]
            let wrapped = (m as? Linear)?.loras[name] != nil
            if let variant {
                part.tensors["base_model.model.\(key)\(wrapped ? ".base_layer" : "").bias"] = variant.value.detached()
                part.written.insert(ObjectIdentifier(variant))
            }
        }
        if part.tensors.keys.contains(where: { $0.hasSuffix(".bias") }) { part.config["bias"] = "all" }
        return part
    }
}
