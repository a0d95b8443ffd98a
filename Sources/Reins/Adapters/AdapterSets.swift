import Foundation
import ReinsTensor

/// A way to steer a model, by where it inserts trainable parameters (see each case's paper).
public enum AdapterMethod: Sendable, Equatable {
    /// Every weight trains (no adapter).
    case full
    /// Only biases train, as a per-adapter copy of every bias (Ben Zaken et al., arXiv 2106.10199).
    case bitFit
    /// Bottleneck adapters after attention and after the FFN (Houlsby et al., arXiv 1902.00751).
    case houlsby(bottleneck: Int, nonLinearity: BottleneckAdapter.NonLinearity = .relu)
    /// One bottleneck adapter after the FFN (Pfeiffer et al. 2020).
    case pfeiffer(bottleneck: Int, nonLinearity: BottleneckAdapter.NonLinearity = .relu)
    /// A token-dependent shift parallel to the FFN's second layer (Fu et al., arXiv 2205.00305).
    case adapterBias
    /// A scaled bottleneck parallel to the FFN (He et al., arXiv 2110.04366).
    case parallel(bottleneck: Int, scale: Float = 4)
    /// `length` learned keys and values per layer (Li & Liang, arXiv 2101.00190), optionally produced by an MLP of
    /// width `projection` while training (folded into plain prefixes by ``Module/foldPrefixes()``).
    case prefix(length: Int, projection: Int? = nil)
    /// `length` learned input vectors before the tokens (Lester et al., arXiv 2104.08691).
    case promptTuning(length: Int)
    /// Low-rank updates of the targeted linear layers (Hu et al., arXiv 2106.09685).
    case lora(LoRAConfig)
    /// LoRA and BitFit in one adapter.
    case loraBitFit(LoRAConfig)
    /// IA3 (Liu et al., arXiv 2205.05638): learned vectors, starting at ones, that rescale the outputs of the targeted
    /// linear layers, or their inputs for the `feedForward` ones (PEFT's `target_modules` / `feedforward_modules`,
    /// matched as PEFT matches them; each feed-forward name must also be a target). Nil: PEFT's defaults — BERT
    /// `key`, `value`, `output.dense` (feed-forward `output.dense`); GPT-2 `c_attn`, `mlp.c_proj` (feed-forward `mlp.c_proj`).
    case ia3(targets: [String]? = nil, feedForward: [String]? = nil)
    /// LoHa (arXiv 2108.06098): a Hadamard product of two low-rank updates on the targeted linear layers.
    case loha(LoHaConfig)

    /// A short name for tables and directories.
    public var name: String {
        switch self {
        case .full: return "full"
        case .bitFit: return "bitfit"
        case .houlsby: return "houlsby"
        case .pfeiffer: return "pfeiffer"
        case .adapterBias: return "adapterbias"
        case .parallel: return "parallel"
        case .prefix: return "prefix"
        case .promptTuning: return "prompt"
        case .lora: return "lora"
        case .loraBitFit: return "lora+bitfit"
        case .ia3: return "ia3"
        case .loha: return "loha"
        }
    }
}

extension LoRAConfig: Equatable {
    public static func == (a: LoRAConfig, b: LoRAConfig) -> Bool {
        (a.rank, a.alpha, a.rsLoRA, a.targets, a.layers, a.dropout) == (
            b.rank, b.alpha, b.rsLoRA, b.targets, b.layers, b.dropout
        ) && a.dora == b.dora
    }
}

/// The encoder sizes adapters are built from.
struct EncoderShape {
    let hidden: Int, intermediate: Int, layers: Int, heads: Int
    /// Each layer's prefix width and heads (the key/value heads' under grouped-query attention).
    let prefixWidth: Int, prefixHeads: Int
    let prefixes: PrefixSet
    let prompts: PromptSet
}

extension Module {
    /// The sizes adapters are built for, from the first module that hosts virtual tokens (an encoder or decoder
    /// stack), whatever the model.
    var encoderShape: EncoderShape? {
        for m in [self as any Module] + namedModules().map(\.module) {
            guard let host = m as? any VirtualTokenHost else { continue }
            let s = host.virtualTokenShape, p = host.prefixShape
            return EncoderShape(
                hidden: s.hidden, intermediate: host.feedForwardSize, layers: s.layers, heads: s.heads,
                prefixWidth: p.width, prefixHeads: p.heads,
                prefixes: host.prefixes, prompts: host.prompts)
        }
        return nil
    }

    /// Adds the adapter `name` of kind `method` to this model (one shared base may carry many), activates it, and
    /// makes exactly its parameters trainable: the base and every other adapter are frozen. On a model with a task
    /// head (``TaskHeadModel``), the adapter gets its own new head with `labels` outputs (default: the model's own
    /// count), which trains with it. `.full` adds nothing and unfreezes everything (the head is the model's own).
    /// - Returns: the number of trainable parameters.
    /// - Throws: ``ModelError/badInput(_:)`` for a model without an encoder, bad sizes or LoRA targets that match nothing.
    @discardableResult
    public func addAdapter(_ name: String, _ method: AdapterMethod, labels: Int? = nil, seed: UInt64 = 0) throws -> Int
    {
        if method == .full {
            activateAdapter(nil)
            unfreeze()
            return trainableParameterCount
        }
        // LoRA, DoRA, IA3 and BitFit go on any model's layers; the block and virtual-token methods need its blocks.
        let blocks = encoderShape
        func shape() throws -> EncoderShape {
            guard let blocks else {
                throw ModelError.badInput(
                    "\(method.name) adapters need a model with transformer blocks (a VirtualTokenHost, such as GPT2Model or BertModel); LoRA, DoRA, IA3 and BitFit work on any model"
                )
            }
            return blocks
        }
        guard !adapterNames.contains(name) else {
            throw ModelError.badInput("the model already has an adapter named '\(name)'; delete it first")
        }
        try trainingOnlyWhatAppears(under: name) {
            switch method {
            case .full: break
            case .bitFit: addBitFit(name)
            case let .houlsby(m, f):
                try addBottleneckAdapter(
                    name, placement: .houlsby, size: shape().hidden, bottleneck: m, nonLinearity: f, seed: seed)
            case let .pfeiffer(m, f):
                try addBottleneckAdapter(
                    name, placement: .pfeiffer, size: shape().hidden, bottleneck: m, nonLinearity: f, seed: seed)
            case .adapterBias:
                try addAdapterBias(name, intermediate: shape().intermediate, size: shape().hidden, seed: seed)
            case let .parallel(m, scale):
                try addParallelAdapter(name, size: shape().hidden, bottleneck: m, scale: scale, seed: seed)
            case let .prefix(length, projection):
                let shape = try shape()
                guard length > 0 else {
                    throw ModelError.badInput("a prefix needs at least one virtual token, got \(length)")
                }
                let prefix: Prefix
                if let m = projection {
                    prefix = try Prefix(
                        reparameterizedLength: length, encoderHidden: m, layers: shape.layers,
                        hidden: shape.prefixWidth, heads: shape.prefixHeads, seed: seed)
                } else {
                    let values = try Tensor.normal(
                        [length, shape.layers * 2 * shape.prefixWidth], std: 0.02, seed: seed)
                    prefix = try Prefix(
                        Parameter("prompt_embeddings", values), layers: shape.layers, hidden: shape.prefixWidth,
                        heads: shape.prefixHeads)
                }
                try shape.prefixes.add(
                    name, prefix, layers: shape.layers, hidden: shape.prefixWidth, heads: shape.prefixHeads)
            case let .promptTuning(length):
                let shape = try shape()
                guard length > 0 else {
                    throw ModelError.badInput("prompt tuning needs at least one virtual token, got \(length)")
                }
                shape.prompts.add(
                    name,
                    Parameter(
                        "prompt_tuning_embeddings", try Tensor.normal([length, shape.hidden], std: 0.02, seed: seed)))
            case let .lora(config): try addLoRA(name, config, seed: seed)
            case let .loraBitFit(config):
                try addLoRA(name, config, seed: seed)
                addBitFit(name)
            case let .loha(config): try addLoHa(name, config, seed: seed)
            case let .ia3(targets, feedForward):
                try addIA3(name, targets: targets, feedForward: feedForward)
            }
            if let headed = self as? any TaskHeadModel {
                headed.heads.add(
                    name, try headed.newHead(labels: labels ?? headed.heads.base.outputs, seed: seed &+ 7919))
            }
        }
        return trainableParameterCount
    }

    /// Runs `attach` (which adds the adapter `name`) with the bare base showing, then activates `name`, freezes
    /// everything and unfreezes exactly the parameters that appeared: the adapter's own, as registered (a prefix
    /// registers its MLP while it has one), with its head and bias variants.
    func trainingOnlyWhatAppears(under name: String, _ attach: () throws -> Void) throws {
        activateAdapter(name)  // nothing is named `name` yet: the bare base
        let before = Set(namedParameters().map { ObjectIdentifier($0.parameter) })
        try attach()
        activateAdapter(name)
        let added = namedParameters().map(\.parameter).filter { !before.contains(ObjectIdentifier($0)) }
        freeze()
        for p in added { p.isTrainable = true }
    }

    /// Loads an adapter directory (PEFT's or Reins's layout, with its head) under `name`, activates it, and makes
    /// exactly its parameters trainable (the base and other adapters are frozen), ready to train further.
    public func loadAdapter(_ name: String, from directory: URL) throws {
        try? deleteAdapter(name)  // loading replaces an adapter of that name
        try trainingOnlyWhatAppears(under: name) { try AdapterFiles.load(directory: directory, into: self, name: name) }
    }

    /// Gives every bias of the base (linear layers and layer norms, not adapters or heads) a trainable copy named
    /// `name`, and activates it.
    func addBitFit(_ name: String) {
        let headKey = (self as? any TaskHeadModel)?.headKey
        for (key, m) in namedModules()
        where !key.contains(".adapters.") && !key.contains("prefix_encoder") && key != headKey {
            if let l = m as? Linear, let b = l.biases { b.add(name, Parameter("bias", b.base.value.detached())) }
            if let n = m as? LayerNorm { n.biases.add(name, Parameter("bias", n.biases.base.value.detached())) }
        }
    }

    /// Replaces every prefix MLP by the plain prefixes it produces (what is saved and used for inference).
    public func foldPrefixes() throws {
        for prefix in encoderShape?.prefixes.members.values.map({ $0 }) ?? [] { try prefix.fold() }
    }

    /// Saves the adapter `name` with its head: PEFT's layout for LoRA (with BitFit biases as PEFT's `bias: "all"`),
    /// prefix tuning, prompt tuning and IA3; Reins's layout (``AdapterFiles``) for bottleneck adapters, AdapterBias,
    /// parallel adapters and BitFit. An adapter that combines the two kinds (LoRA and a Houlsby adapter under one
    /// name, say) is saved whole: PEFT's files for its PEFT part, Reins's layout beside them
    /// (`reins_adapter_config.json`, `reins_adapter_model.safetensors`, which PEFT ignores) for the rest. A prefix MLP
    /// is folded first. Written atomically, file by file.
    /// - Throws: ``ModelError/badInput(_:)`` when the adapter does not exist, or holds tensors neither format can
    ///   carry (say LoRA and IA3 under one name: PEFT's config has one `peft_type`) — named, and nothing is lost silently.
    public func saveAdapter(_ name: String, to directory: URL, baseModel: String? = nil) throws {
        guard adapterNames.contains(name) else {
            throw ModelError.badInput("the model has no adapter named '\(name)' (it has \(adapterNames))")
        }
        let previous = activeAdapterName
        activateAdapter(name)
        defer { activateAdapter(previous) }
        try encoderShape?.prefixes.members[name]?.fold()
        let owned = parameters(ofAdapter: name)
        let headed = self as? any TaskHeadModel
        let heads = headed.flatMap { $0.heads.variants[name] != nil ? [$0.headKey] : nil } ?? []
        // A PEFT method is present when one of PEFT's writers has a part of this adapter to write.
        let hasPEFT = try PEFTAdapter.savers.contains { try $0.save(self, name) != nil }
        // Everything is written into a staging folder first and moved into `directory` file by file (each rename
        // atomic) only once the whole adapter is known to be in it: a refused save leaves `directory` as it was.
        try FileManager.default.createDirectory(
            at: directory.deletingLastPathComponent(), withIntermediateDirectories: true)
        let staging = try DirectorySwap.freshDirectory(for: directory)
        defer { try? FileManager.default.removeItem(at: staging) }
        var written = Set<ObjectIdentifier>()
        if hasPEFT {
            written = try PEFTAdapter.save(
                self, name: name, to: staging, taskType: taskType, modulesToSave: heads, baseModel: baseModel)
            if owned.contains(where: { !written.contains(ObjectIdentifier($0)) }) {
                written.formUnion(
                    try AdapterFiles.saveBlockAdapters(
                        self, name: name, to: staging, companion: true, excluding: written))
            }
        } else {
            written = try AdapterFiles.saveBlockAdapters(self, name: name, to: staging)
        }
        let keys = Dictionary(
            namedParameters().map { (ObjectIdentifier($0.parameter), $0.key) }, uniquingKeysWith: { a, _ in a })
        let missing = owned.filter { !written.contains(ObjectIdentifier($0)) }.map { keys[ObjectIdentifier($0)] ?? "?" }
            .sorted()
        guard missing.isEmpty else {
            throw ModelError.badInput(
                "adapter '\(name)' was not saved (nothing was written): no adapter file format holds \(missing.joined(separator: ", ")) together with the rest of it (PEFT's format has one method per adapter; save these under their own adapter name)"
            )
        }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let produced = try FileManager.default.contentsOfDirectory(atPath: staging.path)
        // A companion left by an earlier save of another adapter here would be read with this one.
        for stale in [AdapterFiles.companionConfig, AdapterFiles.companionWeights] where !produced.contains(stale) {
            try? FileManager.default.removeItem(at: directory.appendingPathComponent(stale))
        }
        for file in produced.sorted() {
            guard rename(staging.appendingPathComponent(file).path, directory.appendingPathComponent(file).path) == 0
            else {
                throw SafeTensorsError.unwritable(
                    path: directory.appendingPathComponent(file).path, reason: String(cString: strerror(errno)))
            }
        }
    }

    /// PEFT's `task_type` for this model (`FEATURE_EXTRACTION` for a model without a task of its own).
    var taskType: String? { (self as? any PEFTTaskModel)?.peftTaskType ?? "FEATURE_EXTRACTION" }
}

/// A model with a PEFT task type, written into the `adapter_config.json` of its adapters.
public protocol PEFTTaskModel: Module {
    var peftTaskType: String { get }
}

extension GPT2LMHeadModel: PEFTTaskModel { public var peftTaskType: String { "CAUSAL_LM" } }
extension GPT2ForSequenceClassification: PEFTTaskModel { public var peftTaskType: String { "SEQ_CLS" } }
extension LlamaForCausalLM: PEFTTaskModel { public var peftTaskType: String { "CAUSAL_LM" } }
extension LlamaForSequenceClassification: PEFTTaskModel { public var peftTaskType: String { "SEQ_CLS" } }
extension BertForSequenceClassification: PEFTTaskModel { public var peftTaskType: String { "SEQ_CLS" } }
extension BertForTokenClassification: PEFTTaskModel { public var peftTaskType: String { "TOKEN_CLS" } }
extension BertForQuestionAnswering: PEFTTaskModel { public var peftTaskType: String { "QUESTION_ANS" } }
