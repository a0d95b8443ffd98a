import Foundation
import ReinsTensor

/// PEFT's LoRA adapter directory: `adapter_config.json` + `adapter_model.safetensors`, with keys such as
/// `base_model.model.transformer.h.0.attn.c_attn.lora_A.weight` (`[r, in]`) and `...lora_B.weight` (`[out, r]`), and
/// task heads listed in `modules_to_save` stored under their own keys.
public enum PEFTAdapter {
    /// Loads a PEFT adapter directory (any method in ``loaders``) into `model` under `name` and activates it; heads in
    /// `modules_to_save` overwrite the model's. Strict: every tensor must land on a layer or head parameter of the
    /// right shape.
    /// - Throws: ``ModelError`` naming the unknown module, the mis-shaped or unpaired tensor, or the bad config field.
    public static func load(directory: URL, into model: any Module, name: String = "default") throws {
        let configPath = directory.appendingPathComponent("adapter_config.json").path
        let config = try Checkpoint.readJSON(directory.appendingPathComponent("adapter_config.json"))
        let reader = ConfigReader(json: config, path: configPath)
        let type = try reader.string("peft_type", default: "")
        guard let loader = loaders[type] else {
            throw ModelError.badConfig(
                path: configPath,
                detail: "peft_type '\(type)' is not supported (\(loaders.keys.sorted().joined(separator: ", ")))")
        }
        try loader(directory, reader, model, name)
    }

    /// Where a PEFT key's module lives in the model: the key without PEFT's `base_model.model.` wrapper, its leading
    /// part renamed by ``pathRenaming`` when one is set.
    static func modelPath(_ key: String) -> String {
        let path = key.hasPrefix("base_model.model.") ? String(key.dropFirst("base_model.model.".count)) : key
        guard let (from, to) = pathRenaming, path.hasPrefix(from) else { return path }
        return to + path.dropFirst(from.count)
    }

    /// While set, module paths starting with `from` are read as starting with `to` (Llama's question-answering model
    /// keeps its decoder under `transformer.`, the causal model under `model.`).
    @TaskLocal static var pathRenaming: (from: String, to: String)?

    /// The task-head tensors a load set aside (``AdapterFiles/loadSettingHeadAside(directory:into:name:)``).
    final class HeadsAside: @unchecked Sendable {
        var entries: [(key: String, plain: String, tensor: Tensor)] = []
    }

    /// While set, saved task heads (`score`, `classifier`, `qa_outputs`) that the model has no module for go here
    /// instead of being refused.
    @TaskLocal static var headsAside: HeadsAside?

    /// The checkpoint keys of the task heads transformers' models use.
    static let headKeys = ["score", "classifier", "qa_outputs"]

    /// Reads one PEFT method's directory into a model under a name.
    typealias Loader = (_ directory: URL, _ config: ConfigReader, _ model: any Module, _ name: String) throws -> Void

    /// How each PEFT method is read, by `peft_type`: one row a method (its reader lives in the method's file).
    static var loaders: [String: Loader] {
        [
            "LORA": { try loadLoRA(directory: $0, config: $1, into: $2, name: $3, adaptive: false) },
            "ADALORA": { try loadLoRA(directory: $0, config: $1, into: $2, name: $3, adaptive: true) },
            "IA3": loadIA3,
        "LOHA": loadLoHa,
            "PREFIX_TUNING": loadPrefix,
            // P-tuning trains its virtual tokens through an encoder but saves them folded: loaded, it is prompt tuning.
            "PROMPT_TUNING": loadPrompt, "P_TUNING": loadPrompt,
        ]
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
        // A head the model has no module for, set aside for the caller when asked (installed last, so that a bad file
        // sets nothing aside).
        if let aside = headsAside {
            let modules = Set(model.namedModules().map(\.key))
            let lacking = headKeys.filter { !modules.contains($0) }
            let set = rest.filter { e in lacking.contains { e.plain.hasPrefix($0 + ".") } }
            if !set.isEmpty {
                rest = rest.filter { e in !lacking.contains { e.plain.hasPrefix($0 + ".") } }
                actions.append { aside.entries = set }
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
        var found: PEFTPart?
        for saver in savers { if let part = try saver.save(model, name) { found = part; break } }
        guard var part = found else {
            throw ModelError.badInput("the model has no adapter named '\(name)' and no prefix")
        }
        part.config.merge([
            "peft_version": "0.21.2", "base_model_name_or_path": baseModel ?? NSNull(),
            "task_type": taskType ?? NSNull(),
            "inference_mode": true, "revision": NSNull(),
            "modules_to_save": modulesToSave.isEmpty ? NSNull() : modulesToSave,
        ]) { own, _ in own }
        for (key, p) in model.namedParameters()
        where modulesToSave.contains(where: { key == $0 || key.hasPrefix($0 + ".") }) {
            part.tensors[part.headPrefix + key] = p.value.detached()
            part.written.insert(ObjectIdentifier(p))
        }
        try SafeTensorsFile.write(
            part.tensors, metadata: ["format": "pt"],
            to: directory.appendingPathComponent("adapter_model.safetensors").path)
        let json = try JSONSerialization.data(withJSONObject: part.config, options: [.prettyPrinted, .sortedKeys])
        try AtomicFile.write(json, to: directory.appendingPathComponent("adapter_config.json").path)
        return part.written
    }

    /// One PEFT method's share of a save: its config fields, its tensors, the parameters they came from, and where
    /// PEFT keeps the task heads beside them (prompt-learning models under `base_model.`, the rest `base_model.model.`).
    struct PEFTPart {
        var config: [String: Any] = [:]
        var tensors: [String: Tensor] = [:]
        var written = Set<ObjectIdentifier>()
        var headPrefix = "base_model.model."
    }

    /// Writes one PEFT method's part of the adapter `name`, or nil when the adapter has none of it.
    typealias Saver = (_ model: any Module, _ name: String) throws -> PEFTPart?

    /// How each PEFT method is written, in the order tried: an adapter is saved as the first method it has (one row
    /// a method; its writer lives in the method's file).
    static var savers: [(peftType: String, save: Saver)] {
        [
            ("LORA", saveLoRA), ("IA3", saveIA3), ("LOHA", saveLoHa), ("PROMPT_TUNING", savePrompt), ("PREFIX_TUNING", savePrefix),
        ]
    }
}
