import Foundation
import ReinsTensor

/// Adapter directories: PEFT's methods in PEFT's format (``PEFTAdapter``), and Reins's block adapters in the same
/// two-file layout.
///
/// Reins's layout (`peft_type` `REINS_BLOCK_ADAPTERS`): `adapter_config.json` names the slots used and their settings;
/// `adapter_model.safetensors` holds each adapter tensor under the model key without the adapter's name, e.g.
/// `transformer.h.0.adapters.output_adapter.adapter_down.weight` (Houlsby/Pfeiffer after the FFN),
/// `...attention_adapter...` (Houlsby after attention), `...adapter_bias.adapter_alpha.weight` and
/// `...adapter_bias.adapter_vector` (AdapterBias), `...parallel_adapter.adapter_up.weight` (parallel adapter).
/// BitFit biases are stored under the model's bias keys (`bert.encoder.layer.0.output.dense.bias`) and the adapter's
/// task head under the head's keys (`classifier.weight`). Sizes come from the tensors' shapes.
public enum AdapterFiles {
    static let blockType = "REINS_BLOCK_ADAPTERS"

    /// Loads any supported adapter directory into `model` under `name` and activates it: PEFT's, Reins's, or the
    /// `adapters` library's (AdapterHub) bottleneck adapters (see ``loadAdapterHub(directory:config:into:name:)``).
    public static func load(directory: URL, into model: any Module, name: String = "default") throws {
        let configURL = directory.appendingPathComponent("adapter_config.json")
        let config = try Checkpoint.readJSON(configURL)
        if config["config"] is [String: Any], config["peft_type"] == nil {
            return try loadAdapterHub(directory: directory, config: config, into: model, name: name)
        }
        guard (config["peft_type"] as? String) == blockType else {
            try PEFTAdapter.load(directory: directory, into: model, name: name)
            // The part of a combined adapter that PEFT's format cannot hold, saved beside it in Reins's layout.
            let companion = directory.appendingPathComponent(companionConfig)
            guard FileManager.default.fileExists(atPath: companion.path) else { return }
            let companionConfigJSON = try Checkpoint.readJSON(companion)
            let (file, weightsPath) = try PEFTAdapter.weightsFile(
                directory, named: companionWeights, pickled: companionWeights)
            return try loadBlockAdapters(
                Dictionary(uniqueKeysWithValues: try file.tensorNames.map { ($0, try file.tensor($0)) }),
                config: companionConfigJSON,
                configPath: companion.path, weightsPath: weightsPath, into: model, name: name)
        }
        let (file, weightsPath) = try PEFTAdapter.weightsFile(directory)
        try loadBlockAdapters(
            Dictionary(uniqueKeysWithValues: try file.tensorNames.map { ($0, try file.tensor($0)) }), config: config,
            configPath: configURL.path, weightsPath: weightsPath, into: model, name: name)
    }

    /// The `adapters` library's bottleneck adapters (Houlsby `DoubleSeqBnConfig`, Pfeiffer `SeqBnConfig`, or any
    /// bottleneck config with the options Reins has) on BERT models, from a directory saved by `save_adapter`:
    /// `adapter_config.json` + `adapter.safetensors` (or the pickled `pytorch_adapter.bin`, read without running it),
    /// and the task head from `model_head.safetensors` (or `pytorch_model_head.bin`) when present. Its keys
    /// (`bert.encoder.layer.0.output.adapters.NAME.adapter_down.0.weight`) map onto Reins's insertion points.
    /// - Throws: ``ModelError`` naming an unsupported option (layer norms inside the adapter, gating, PHM, parallel
    ///   form, scaling other than 1) or a tensor that fits nowhere; ``TorchCheckpointError`` for a bad pickled file.
    static func loadAdapterHub(directory: URL, config: [String: Any], into model: any Module, name: String) throws {
        let configPath = directory.appendingPathComponent("adapter_config.json").path
        guard let c = config["config"] as? [String: Any] else {
            throw ModelError.badConfig(path: configPath, detail: "'config' is not an object")
        }
        func flag(_ key: String) -> Bool? { c[key] as? Bool }
        var unsupported: [String] = []
        for key in ["ln_before", "ln_after", "use_gating", "phm_layer", "is_parallel", "adapter_residual_before_ln"]
        where flag(key) == true { unsupported.append("\(key)=true") }
        if flag("original_ln_after") == false { unsupported.append("original_ln_after=false") }
        if let r = c["residual_before_ln"], (r as? Bool) != true { unsupported.append("residual_before_ln=\(r)") }
        if let s = ConfigReader.number(c["scaling"])?.doubleValue, s != 1 { unsupported.append("scaling=\(s)") }
        if let a = c["architecture"] as? String, a != "bottleneck" { unsupported.append("architecture=\(a)") }
        guard unsupported.isEmpty else {
            throw ModelError.badConfig(
                path: configPath, detail: "unsupported adapters-library options: \(unsupported.joined(separator: ", "))"
            )
        }
        // adapter.safetensors (use_safetensors=True), else the library's default pickled pytorch_adapter.bin.
        let (file, weightsPath) = try PEFTAdapter.weightsFile(
            directory, named: "adapter.safetensors", pickled: "pytorch_adapter.bin")
        let hubName = config["name"] as? String ?? ""
        var tensors: [String: Tensor] = [:]
        let bareEncoder = !model.namedModules().contains { $0.key.hasPrefix("bert.") }
        for key in file.tensorNames.sorted() {
            // <prefix>encoder.layer.L.{attention.output|output}.adapters.NAME.adapter_{down.0|up}.{weight|bias}
            guard let range = key.range(of: ".adapters.\(hubName).") else {
                throw ModelError.checkpointMismatch(
                    missing: [], unexpected: ["\(key) (not an adapter '\(hubName)' tensor)"], misshaped: [])
            }
            let site = String(key[..<range.lowerBound]),
                part = String(key[range.upperBound...]).replacingOccurrences(
                    of: "adapter_down.0.", with: "adapter_down.")
            let (layer, slot): (String, String)
            if site.hasSuffix(".attention.output") {
                (layer, slot) = (String(site.dropLast(".attention.output".count)), "attention_adapter")
            } else if site.hasSuffix(".output") {
                (layer, slot) = (String(site.dropLast(".output".count)), "output_adapter")
            } else {
                throw ModelError.checkpointMismatch(
                    missing: [], unexpected: ["\(key) (an insertion point Reins does not have)"], misshaped: [])
            }
            // The `adapters` library keys a head model's encoder under `bert.`; a bare encoder's keys have no prefix.
            let plain = bareEncoder && layer.hasPrefix("bert.") ? String(layer.dropFirst("bert.".count)) : layer
            tensors["\(plain).adapters.\(slot).\(part)"] = try file.tensor(key)
        }
        let headFiles = ["model_head.safetensors", "pytorch_model_head.bin"]
        if model is any TaskHeadModel,
            headFiles.contains(where: {
                FileManager.default.fileExists(atPath: directory.appendingPathComponent($0).path)
            })
        {
            let (head, _) = try PEFTAdapter.weightsFile(directory, named: headFiles[0], pickled: headFiles[1])
            for key in head.tensorNames { tensors[key] = try head.tensor(key) }
        }
        let reinsConfig: [String: Any] = [
            "non_linearity": c["non_linearity"] as? String ?? "relu",
            "original_ln_before": flag("original_ln_before") ?? false,
        ]
        try loadBlockAdapters(
            tensors, config: reinsConfig, configPath: configPath, weightsPath: weightsPath, into: model, name: name)
    }

    /// Block adapters, BitFit biases and a head from tensors in Reins's layout (keys as ``AdapterFiles`` describes).
    static func loadBlockAdapters(
        _ tensors: [String: Tensor], config: [String: Any], configPath: String, weightsPath: String,
        into model: any Module, name: String
    ) throws {
        let configURL = URL(fileURLWithPath: configPath)
        let nonLinearityName = config["non_linearity"] as? String ?? "relu"
        guard let nonLinearity = BottleneckAdapter.NonLinearity(rawValue: nonLinearityName) else {
            throw ModelError.badConfig(
                path: configURL.path,
                detail: "non_linearity '\(nonLinearityName)' is not supported (relu, gelu, tanh, swish)")
        }
        let readsNormalizedSum = config["original_ln_before"] as? Bool ?? false
        let scale = ConfigReader.number(config["parallel_scale"])?.floatValue ?? 4
        let blocks = model.namedModules().compactMap { key, m in (m as? BlockAdapters).map { (key, $0) } }
        var used = Set<String>()
        func tensor(_ key: String) throws -> Tensor {
            guard let t = tensors[key] else {
                throw ModelError.checkpointMismatch(missing: [key], unexpected: [], misshaped: [])
            }
            used.insert(key)
            return t
        }
        /// A bottleneck's four tensors under `base` (down and up, weight and bias), checked against each other; nil
        /// when the file has none there.
        func bottleneck(_ base: String) throws -> (down: (Tensor, Tensor), up: (Tensor, Tensor))? {
            guard tensors["\(base).adapter_down.weight"] != nil else { return nil }
            let dw = try tensor("\(base).adapter_down.weight"), db = try tensor("\(base).adapter_down.bias")
            let uw = try tensor("\(base).adapter_up.weight"), ub = try tensor("\(base).adapter_up.bias")
            guard dw.rank == 2, uw.shape == [dw.shape[1], dw.shape[0]], db.shape == [dw.shape[0]],
                ub.shape == [dw.shape[1]]
            else {
                throw ModelError.checkpointMismatch(
                    missing: [], unexpected: [], misshaped: ["\(base): down \(dw.shape), up \(uw.shape)"])
            }
            return ((dw, db), (uw, ub))
        }
        func fill(_ layer: Linear, _ values: (Tensor, Tensor)) {
            layer.weight.value = values.0.requiringGradient()
            layer.biases?.base.value = values.1.requiringGradient()
        }
        func sequential(_ base: String) throws -> BottleneckAdapter? {
            guard let t = try bottleneck(base) else { return nil }
            let adapter = try BottleneckAdapter(
                size: t.down.0.shape[1], bottleneck: t.down.0.shape[0], nonLinearity: nonLinearity, seed: 0)
            adapter.readsNormalizedSum = readsNormalizedSum
            fill(adapter.down, t.down)
            fill(adapter.up, t.up)
            return adapter
        }
        // Each block slot of Reins's layout: its key, and what reads its adapter and installs it in a block. One row a
        // slot; a new block adapter kind is one more row.
        let slots: [(key: String, read: (String, BlockAdapters) throws -> (() -> Void)?)] = [
            (
                "attention_adapter",
                { base, block in try sequential(base).map { a in { block.afterAttention.add(name, a) } } }
            ),
            (
                "output_adapter",
                { base, block in try sequential(base).map { a in { block.afterFeedForward.add(name, a) } } }
            ),
            (
                "parallel_adapter",
                { base, block in
                    guard let t = try bottleneck(base) else { return nil }
                    let adapter = try ParallelAdapter(
                        size: t.down.0.shape[1], bottleneck: t.down.0.shape[0], scale: scale, seed: 0)
                    fill(adapter.down, t.down)
                    fill(adapter.up, t.up)
                    return { block.parallelFeedForward.add(name, adapter) }
                }
            ),
            (
                "adapter_bias",
                { base, block in
                    guard tensors["\(base).adapter_vector"] != nil else { return nil }
                    let alphaW = try tensor("\(base).adapter_alpha.weight"),
                        alphaB = try tensor("\(base).adapter_alpha.bias"), v = try tensor("\(base).adapter_vector")
                    guard alphaW.rank == 2, alphaW.shape[0] == 1, alphaB.shape == [1], v.rank == 1 else {
                        throw ModelError.checkpointMismatch(
                            missing: [], unexpected: [],
                            misshaped: ["\(base): alpha \(alphaW.shape), vector \(v.shape)"])
                    }
                    let adapter = try AdapterBias(intermediate: alphaW.shape[1], size: v.shape[0], seed: 0)
                    fill(adapter.alpha, (alphaW, alphaB))
                    adapter.vector.value = v.requiringGradient()
                    return { block.feedForwardBias.add(name, adapter) }
                }
            ),
        ]
        var plans: [() -> Void] = []
        for (prefix, block) in blocks {
            for slot in slots {
                if let install = try slot.read("\(prefix).\(slot.key)", block) { plans.append(install) }
            }
        }
        // The rest: BitFit biases (model keys ending in .bias) and the adapter's task head; anything else is unexpected.
        let rest = Set(tensors.keys).subtracting(used).sorted().map { (key: $0, plain: $0, tensor: tensors[$0]!) }
        let installRest = try PEFTAdapter.headInstaller(rest, into: model, name: name)
        guard !plans.isEmpty || !rest.isEmpty else {
            throw ModelError.badConfig(path: weightsPath, detail: "no adapter tensors")
        }
        // Everything was read and checked for internal consistency before this point, so a failure attaches nothing.
        // (An adapter whose width does not fit the model makes the forward pass throw a shape error naming the sizes.)
        for plan in plans { plan() }
        installRest()
        model.activateAdapter(name)
    }

    /// The files of the part of an adapter that PEFT's format cannot hold, beside PEFT's own files (an adapter that
    /// combines LoRA with a bottleneck adapter, say): Reins's layout under these names. PEFT ignores them.
    static let companionConfig = "reins_adapter_config.json", companionWeights = "reins_adapter_model.safetensors"

    /// Saves the block adapters named `name` (bottleneck, AdapterBias, parallel), its BitFit biases and its task head in
    /// Reins's layout — or, as a `companion` beside PEFT's files, whatever of them is not in `excluding`.
    /// - Returns: the parameters whose values were written.
    @discardableResult
    public static func saveBlockAdapters(
        _ model: any Module, name: String = "default", to directory: URL, companion: Bool = false,
        excluding: Set<ObjectIdentifier> = []
    ) throws -> Set<ObjectIdentifier> {
        var tensors: [String: Tensor] = [:], slots = Set<String>(), nonLinearity: String?, scale: Float?,
            normalizedSum = false
        var written = Set<ObjectIdentifier>()
        for block in model.blockAdapters {
            for (slot, a) in [
                ("attention_adapter", block.afterAttention.adapters[name]),
                ("output_adapter", block.afterFeedForward.adapters[name]),
            ] {
                guard let a else { continue }
                slots.insert(slot)
                nonLinearity = a.nonLinearity.rawValue
                normalizedSum = normalizedSum || a.readsNormalizedSum
            }
            if let a = block.parallelFeedForward.adapters[name] { slots.insert("parallel_adapter"); scale = a.scale }
            if block.feedForwardBias.adapters[name] != nil { slots.insert("adapter_bias") }
        }
        // A block slot registers its adapters as `<block>.adapters.<slot>.<name>.<part>`: the name is the component
        // after the slot, matched whole (an adapter named `1` is not the `1` of `h.1`), and found by identity.
        let blockParameters = Set(
            model.blockAdapters.flatMap { b in b.ownAdapterSites.flatMap { $0.parameters(of: name) } }.map(
                ObjectIdentifier.init))
        for (key, p) in model.namedParameters() where blockParameters.contains(ObjectIdentifier(p)) {
            var parts = key.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            guard let at = parts.lastIndex(of: "adapters"), at + 2 < parts.count, parts[at + 2] == name else {
                continue
            }
            parts.remove(at: at + 2)
            tensors[parts.joined(separator: ".")] = p.value.detached()
            written.insert(ObjectIdentifier(p))
        }
        var bitFit = false
        for (key, m) in model.namedModules() {
            if let variant = (m as? Linear)?.biases?.variants[name] ?? (m as? LayerNorm)?.biases.variants[name],
                !excluding.contains(ObjectIdentifier(variant))
            {
                tensors[key + ".bias"] = variant.value.detached()
                written.insert(ObjectIdentifier(variant))
                bitFit = true
            }
        }
        var head: String?
        if let headed = model as? any TaskHeadModel, let h = headed.heads.variants[name],
            !h.parameters.contains(where: { excluding.contains(ObjectIdentifier($0)) })
        {
            for (key, p) in h.namedParameters() {
                tensors["\(headed.headKey).\(key)"] = p.value.detached(); written.insert(ObjectIdentifier(p))
            }
            head = headed.headKey
        }
        guard !tensors.isEmpty else {
            if companion { return [] }
            throw ModelError.badInput("the model has no block adapter, BitFit biases or head named '\(name)'")
        }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try SafeTensorsFile.write(
            tensors, metadata: ["format": "pt"],
            to: directory.appendingPathComponent(companion ? companionWeights : "adapter_model.safetensors").path)
        var config: [String: Any] = [
            "peft_type": blockType, "slots": slots.sorted(), "bitfit": bitFit, "reins_version": Reins.version,
        ]
        if let head { config["head"] = head }
        if let nonLinearity { config["non_linearity"] = nonLinearity; config["original_ln_before"] = normalizedSum }
        if let scale { config["parallel_scale"] = scale }
        try AtomicFile.write(
            try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys]),
            to: directory.appendingPathComponent(companion ? companionConfig : "adapter_config.json").path)
        return written
    }
}
