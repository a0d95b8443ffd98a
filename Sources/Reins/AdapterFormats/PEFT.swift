import Foundation
import ReinsTensor

/// PEFT's LoRA adapter directory: `adapter_config.json` + `adapter_model.safetensors`, with keys such as
/// `base_model.model.transformer.h.0.attn.c_attn.lora_A.weight` (`[r, in]`) and `...lora_B.weight` (`[out, r]`), and
/// task heads listed in `modules_to_save` stored under their own keys.
public enum PEFTAdapter {
    /// Loads a PEFT LoRA adapter into `model` under `name` and activates it; heads in `modules_to_save` overwrite the
    /// model's. Strict: every tensor must land on a linear layer or head parameter of the right shape.
    /// - Throws: ``ModelError`` naming the unknown module, the mis-shaped or unpaired tensor, or the bad config field.
    public static func load(directory: URL, into model: any Module, name: String = "default") throws {
        let configPath = directory.appendingPathComponent("adapter_config.json").path
        let config = try Checkpoint.readJSON(directory.appendingPathComponent("adapter_config.json"))
        let reader = ConfigReader(json: config, path: configPath)
        let type = try reader.string("peft_type", default: "")
        if type == "PREFIX_TUNING" {
            return try loadPrefix(directory: directory, config: reader, into: model, name: name)
        }
        if type == "IA3" { return try loadIA3(directory: directory, config: reader, into: model, name: name) }
        // P-tuning trains its virtual tokens through an encoder but saves them folded: loaded, it is prompt tuning.
        if type == "PROMPT_TUNING" || type == "P_TUNING" {
            return try loadPrompt(directory: directory, config: reader, into: model, name: name)
        }
        // AdaLoRA (Zhang et al., arXiv 2303.10512) computes W x + α/(r₀ + 1e-5) · B·diag(E)·A·x with the ranks its
        // allocation kept: loaded, it is LoRA with E folded into A (training continues as plain LoRA, saved as LORA).
        let adaptive = type == "ADALORA"
        guard type == "LORA" || adaptive else {
            throw ModelError.badConfig(
                path: configPath,
                detail:
                    "peft_type '\(type)' is not supported (LORA, ADALORA, PREFIX_TUNING, IA3, PROMPT_TUNING, P_TUNING)")
        }
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
            let path = key.hasPrefix("base_model.model.") ? String(key.dropFirst("base_model.model.".count)) : key
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

    /// Checks the task-head tensors saved with an adapter and returns what installs them (so that a bad file attaches
    /// nothing). On a ``TaskHeadModel`` the head becomes the adapter's own head variant (its label count may differ
    /// from the model's); any other saved module overwrites the model's parameter of that key.
    static func headInstaller(
        _ entries: [(key: String, plain: String, tensor: Tensor)], into model: any Module, name: String
    ) throws -> () -> Void {
        guard !entries.isEmpty else { return {} }
        var actions: [() -> Void] = []
        var rest = entries
        if let headed = model as? any TaskHeadModel {
            let own = entries.filter { $0.plain.hasPrefix(headed.headKey + ".") }
            rest = entries.filter { !$0.plain.hasPrefix(headed.headKey + ".") }
            if let weight = own.first(where: { $0.plain == headed.headKey + ".weight" }) {
                guard weight.tensor.rank == 2, weight.tensor.shape[0] > 0 else {
                    throw ModelError.checkpointMismatch(
                        missing: [], unexpected: [],
                        misshaped: ["\(weight.key) is \(weight.tensor.shape), expected [labels, hidden]"])
                }
                let head = try headed.newHead(labels: weight.tensor.shape[0], seed: 0)
                let parameters = Dictionary(
                    uniqueKeysWithValues: head.namedParameters().map { ("\(headed.headKey).\($0.key)", $0.parameter) })
                for e in own {
                    guard let p = parameters[e.plain] else {
                        throw ModelError.checkpointMismatch(
                            missing: [], unexpected: ["\(e.key) (no parameter '\(e.plain)' in the head)"], misshaped: []
                        )
                    }
                    guard e.tensor.shape == p.value.shape else {
                        throw ModelError.checkpointMismatch(
                            missing: [], unexpected: [],
                            misshaped: ["\(e.key) is \(e.tensor.shape), expected \(p.value.shape)"])
                    }
                }
                let missing = parameters.keys.filter { k in !own.contains { $0.plain == k } }.sorted()
                guard missing.isEmpty else {
                    throw ModelError.checkpointMismatch(missing: missing, unexpected: [], misshaped: [])
                }
                actions.append {
                    for e in own { parameters[e.plain]!.value = e.tensor.detached().requiringGradient() }
                    headed.heads.add(name, head)
                }
            } else if let e = own.first {
                throw ModelError.checkpointMismatch(
                    missing: ["\(headed.headKey).weight"], unexpected: [e.key], misshaped: [])
            }
        }
        // Biases (PEFT's bias="all", or BitFit) become the adapter's own bias variants; the base keeps its biases.
        let biasOwners = Dictionary(
            model.namedModules().compactMap { key, m -> (String, ParameterVariants)? in
                if let l = m as? Linear, let b = l.biases { return (key + ".bias", b) }
                if let n = m as? LayerNorm { return (key + ".bias", n.biases) }
                return nil
            }, uniquingKeysWith: { a, _ in a })
        // Every key, a tied weight's second one too (PEFT saves `lm_head.base_layer.weight` beside a LoRA on lm_head).
        let parameters = Dictionary(
            model.allParameterKeys().map { ($0.key, $0.parameter) }, uniquingKeysWith: { a, _ in a })
        for e in rest {
            if let owner = biasOwners[e.plain] {
                guard e.tensor.shape == owner.base.value.shape else {
                    throw ModelError.checkpointMismatch(
                        missing: [], unexpected: [],
                        misshaped: ["\(e.key) is \(e.tensor.shape), expected \(owner.base.value.shape)"])
                }
                actions.append { owner.add(name, Parameter("bias", e.tensor.detached())) }
                continue
            }
            guard let p = parameters[e.plain] else {
                throw ModelError.checkpointMismatch(
                    missing: [], unexpected: ["\(e.key) (no parameter '\(e.plain)' in the model)"], misshaped: [])
            }
            guard e.tensor.shape == p.value.shape else {
                throw ModelError.checkpointMismatch(
                    missing: [], unexpected: [], misshaped: ["\(e.key) is \(e.tensor.shape), expected \(p.value.shape)"]
                )
            }
            actions.append { p.replaceValue(e.tensor) }
        }
        return { for a in actions { a() } }
    }

    /// The adapter's tensors file: `adapter_model.safetensors`, else the pickled `adapter_model.bin` that older PEFT
    /// versions wrote (read by ``TorchCheckpoint``, no code run); ``ModelError/missingFile(path:)`` if neither exists.
    static func weightsFile(
        _ directory: URL, named name: String = "adapter_model.safetensors",
        pickled: String = "adapter_model.bin"
    ) throws -> (any TensorArchive, String) {
        for candidate in [name, pickled] {
            let path = directory.appendingPathComponent(candidate).path
            if FileManager.default.fileExists(atPath: path) { return (try openTensorArchive(path), path) }
        }
        throw ModelError.missingFile(path: directory.appendingPathComponent(name).path)
    }

    /// A prompt-learning adapter's (prefix or prompt tuning) `prompt_embeddings`, and what installs the heads saved
    /// with it (under `base_model.`, without PEFT's `.model`), checked before anything is attached.
    static func promptLearningTensors(directory: URL, into model: any Module, name: String) throws -> (
        Tensor, () -> Void
    ) {
        let (file, _) = try weightsFile(directory)
        guard file.shape("prompt_embeddings") != nil else {
            throw ModelError.checkpointMismatch(
                missing: ["prompt_embeddings"], unexpected: file.tensorNames.sorted(), misshaped: [])
        }
        let heads = try file.tensorNames.sorted().filter { $0 != "prompt_embeddings" }.map { key in
            (
                key: key,
                plain: key.hasPrefix("base_model.model.")
                    ? String(key.dropFirst(17)) : key.hasPrefix("base_model.") ? String(key.dropFirst(11)) : key,
                tensor: try file.tensor(key)
            )
        }
        return (try file.tensor("prompt_embeddings"), try headInstaller(heads, into: model, name: name))
    }

    /// PEFT prefix tuning: one tensor `prompt_embeddings` `[P, layers · 2 · hidden]`.
    static func loadPrefix(directory: URL, config: ConfigReader, into model: any Module, name: String) throws {
        guard let host = model.encoderShape else {
            throw ModelError.badInput("prefix tuning needs a GPT-2 or BERT model")
        }
        let (layers, hidden) = (host.layers, host.hidden)
        // With prefix_projection PEFT trains the prefixes through an MLP but saves what it produces, the same tensor.
        let (embeddings, installHeads) = try promptLearningTensors(directory: directory, into: model, name: name)
        if let n = try config.optionalInt("num_layers"), n != layers {
            throw ModelError.badConfig(
                path: config.path, detail: "num_layers \(n) does not match the model's \(layers)")
        }
        if let dim = try config.optionalInt("token_dim"), dim != hidden {
            throw ModelError.badConfig(
                path: config.path, detail: "token_dim \(dim) does not match the model's hidden size \(hidden)")
        }
        if let virtual = try config.optionalInt("num_virtual_tokens"), virtual != embeddings.shape.first {
            throw ModelError.checkpointMismatch(
                missing: [], unexpected: [],
                misshaped: ["prompt_embeddings is \(embeddings.shape), num_virtual_tokens is \(virtual)"])
        }
        do {
            let prefix = try Prefix(
                Parameter("prompt_embeddings", embeddings), layers: host.layers, hidden: host.hidden, heads: host.heads)
            host.prefixes.add(name, prefix)
        } catch let ModelError.badInput(detail) {
            throw ModelError.checkpointMismatch(missing: [], unexpected: [], misshaped: [detail])
        }
        installHeads()
    }

    /// A saved head (modules_to_save) or, with bias="all", a bias. PEFT may keep its wrappers in the key:
    /// `.modules_to_save[.NAME].` (the trained copy), `.original_module.` (the untouched original, skipped),
    /// `.base_layer.` (the bias of an adapted layer).
    static func collectHead(
        _ key: String, path: String, from file: any TensorArchive, adapter name: String,
        into heads: inout [(key: String, plain: String, tensor: Tensor)]
    ) throws {
        if path.contains(".original_module.") { return }
        let plain = path.replacingOccurrences(of: ".modules_to_save.\(name).", with: ".").replacingOccurrences(
            of: ".modules_to_save.", with: "."
        )
        .replacingOccurrences(of: ".base_layer.", with: ".")
        if heads.contains(where: { $0.plain == plain }) { return }  // the same tensor under two wrapper names
        heads.append((key, plain, try file.tensor(key)))
    }

    /// PEFT IA3: one tensor `<layer>.ia3_l` per adapted linear layer, `[out, 1]` (output scaling) or `[1, in]` (input
    /// scaling, the `feedforward_modules`), and any heads saved with it.
    static func loadIA3(directory: URL, config: ConfigReader, into model: any Module, name: String) throws {
        let (file, weightsPath) = try weightsFile(directory)
        let linears = Dictionary(
            model.namedModules().compactMap { key, m in (m as? Linear).map { (key, $0) } },
            uniquingKeysWith: { a, _ in a })
        var built: [(Linear, IA3)] = [], heads: [(key: String, plain: String, tensor: Tensor)] = []
        for key in file.tensorNames.sorted() {
            let path = key.hasPrefix("base_model.model.") ? String(key.dropFirst(17)) : key
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

    /// PEFT prompt tuning (or P-tuning, saved the same way): one tensor `prompt_embeddings` `[P, hidden]` (GPT-2 and BERT
    /// models), and heads saved with it.
    static func loadPrompt(directory: URL, config: ConfigReader, into model: any Module, name: String) throws {
        guard let shape = model.encoderShape else {
            throw ModelError.badInput("prompt tuning needs a GPT-2 or BERT model")
        }
        let (embeddings, installHeads) = try promptLearningTensors(directory: directory, into: model, name: name)
        guard embeddings.rank == 2, embeddings.shape[0] > 0, embeddings.shape[1] == shape.hidden else {
            throw ModelError.checkpointMismatch(
                missing: [], unexpected: [],
                misshaped: ["prompt_embeddings is \(embeddings.shape), expected [P, \(shape.hidden)]"])
        }
        shape.prompts.add(name, Parameter("prompt_tuning_embeddings", embeddings))
        installHeads()
    }

    /// Writes the adapter `name` of `model` in PEFT's layout: LoRA weights of every linear layer that has it (and the
    /// model's prefix, as a separate PREFIX_TUNING adapter is not combined here), plus the parameters under
    /// `modulesToSave` (task heads). Files are written atomically; the directory holds only adapter tensors and JSON.
    /// - Parameters:
    ///   - taskType: PEFT's `task_type` (`CAUSAL_LM`, `SEQ_CLS`, `TOKEN_CLS`, `QUESTION_ANS`, `FEATURE_EXTRACTION`).
    @discardableResult
    public static func save(
        _ model: any Module, name: String = "default", to directory: URL, taskType: String? = nil,
        modulesToSave: [String] = [], baseModel: String? = nil
    ) throws -> Set<ObjectIdentifier> {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var written = Set<ObjectIdentifier>()  // the parameters whose values went into the file
        var tensors: [String: Tensor] = [:],
            config: [String: Any] = [
                "peft_version": "0.21.2", "base_model_name_or_path": baseModel ?? NSNull(),
                "task_type": taskType ?? NSNull(),
                "inference_mode": true, "revision": NSNull(),
            ]
        let layers = model.namedModules().compactMap { key, m -> (String, any LoRAHost, LoRA)? in
            guard let l = m as? any LoRAHost, let lora = l.loras[name] else { return nil }
            return (key, l, lora)
        }
        let ia3Layers = model.namedModules().compactMap { key, m -> (String, IA3, Bool)? in
            guard let l = m as? Linear, let v = l.ia3[name] else { return nil }
            return (key, v, l.weightTransposed)
        }
        let prefixOwner = model.encoderShape.flatMap {
            host -> (prefix: Prefix, layers: Int, hidden: Int, heads: Int)? in
            guard let p = host.prefixes.members[name] ?? host.prefixes.current else { return nil }
            return (p, host.layers, host.hidden, host.heads)
        }
        var headPrefix = "base_model.model."
        if !layers.isEmpty {
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
            config.merge([
                "peft_type": "LORA", "r": rank, "lora_alpha": alphas[0], "use_rslora": false,
                "lora_dropout": layers[0].2.dropout, "bias": "none",
                "use_dora": layers.contains { $0.2.magnitude != nil },
                "target_modules": layers.map { $0.0 },
                "fan_in_fan_out": layers.contains { ($0.1 as? Linear)?.weightTransposed == true },
                "rank_pattern": ranks.count > 1
                    ? Dictionary(uniqueKeysWithValues: layers.map { ($0.0, $0.2.rank) }) : [String: Int](),
                "alpha_pattern": Set(alphas).count > 1
                    ? Dictionary(uniqueKeysWithValues: zip(layers.map { $0.0 }, alphas)) : [String: Float](),
                "init_lora_weights": true, "modules_to_save": modulesToSave.isEmpty ? NSNull() : modulesToSave,
            ]) { _, new in new }
            for (key, layer, lora) in layers {
                let (a, b) =
                    layer is Embedding ? ("lora_embedding_A", "lora_embedding_B") : ("lora_A.weight", "lora_B.weight")
                tensors["base_model.model.\(key).\(a)"] = lora.a.value.detached()
                tensors["base_model.model.\(key).\(b)"] = lora.b.value.detached()
                written.formUnion([ObjectIdentifier(lora.a), ObjectIdentifier(lora.b)])
                if let m = lora.magnitude {
                    tensors["base_model.model.\(key).lora_magnitude_vector"] = m.value.detached();
                    written.insert(ObjectIdentifier(m))
                }
            }
            // LoRA + BitFit: the adapter's own biases, as PEFT's bias="all" saves them (a LoRA-wrapped layer's bias under
            // `.base_layer.bias`).
            for (key, m) in model.namedModules() {
                let variant = (m as? Linear)?.biases?.variants[name] ?? (m as? LayerNorm)?.biases.variants[name]
                let wrapped = (m as? Linear)?.loras[name] != nil
                if let variant {
                    tensors["base_model.model.\(key)\(wrapped ? ".base_layer" : "").bias"] = variant.value.detached()
                    written.insert(ObjectIdentifier(variant))
                }
            }
            if tensors.keys.contains(where: { $0.hasSuffix(".bias") }) { config["bias"] = "all" }
        } else if !ia3Layers.isEmpty {
            config.merge([
                "peft_type": "IA3", "target_modules": ia3Layers.map { $0.0 },
                "feedforward_modules": ia3Layers.filter { $0.1.scalesInput }.map { $0.0 },
                "fan_in_fan_out": ia3Layers.contains { $0.2 }, "init_ia3_weights": true,
                "modules_to_save": modulesToSave.isEmpty ? NSNull() : modulesToSave,
            ]) { _, new in new }
            for (key, v, _) in ia3Layers {
                tensors["base_model.model.\(key).ia3_l"] = try v.vector.value.reshaped(
                    v.scalesInput ? [1, -1] : [-1, 1]
                ).detached()
                written.insert(ObjectIdentifier(v.vector))
            }
        } else if let shape = model.encoderShape, let prompt = shape.prompts.members[name] ?? shape.prompts.current {
            config.merge([
                "peft_type": "PROMPT_TUNING", "num_virtual_tokens": prompt.value.shape[0], "token_dim": shape.hidden,
                "num_layers": shape.layers, "num_attention_heads": shape.heads, "num_transformer_submodules": 1,
                "prompt_tuning_init": "RANDOM", "modules_to_save": modulesToSave.isEmpty ? NSNull() : modulesToSave,
            ]) { _, new in new }
            tensors["prompt_embeddings"] = prompt.value.detached()
            written.insert(ObjectIdentifier(prompt))
            headPrefix = "base_model."
        } else if let owner = prefixOwner {
            config.merge([
                "peft_type": "PREFIX_TUNING", "num_virtual_tokens": owner.prefix.length, "num_layers": owner.layers,
                "token_dim": owner.hidden,
                "num_attention_heads": owner.heads, "num_transformer_submodules": 1, "prefix_projection": false,
                "encoder_hidden_size": owner.hidden,
                "modules_to_save": modulesToSave.isEmpty ? NSNull() : modulesToSave,
            ]) { _, new in new }
            // A reparameterised prefix is saved folded: the plain prefixes its MLP produces.
            tensors["prompt_embeddings"] = try Autograd.withoutGradients { try owner.prefix.current() }.detached()
            written.formUnion(owner.prefix.parameters.map(ObjectIdentifier.init))
            headPrefix = "base_model."  // PEFT's prompt-learning models keep heads under base_model.
        } else {
            throw ModelError.badInput("the model has no adapter named '\(name)' and no prefix")
        }
        for (key, p) in model.namedParameters()
        where modulesToSave.contains(where: { key == $0 || key.hasPrefix($0 + ".") }) {
            tensors[headPrefix + key] = p.value.detached()
            written.insert(ObjectIdentifier(p))
        }
        try SafeTensorsFile.write(
            tensors, metadata: ["format": "pt"], to: directory.appendingPathComponent("adapter_model.safetensors").path)
        let json = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        try AtomicFile.write(json, to: directory.appendingPathComponent("adapter_config.json").path)
        return written
    }
}
