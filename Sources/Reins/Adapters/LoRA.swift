import Foundation
import ReinsTensor

/// One LoRA adapter for one linear layer (Hu et al., arXiv 2106.09685): `y = W x + s·B·A·x` with `A: [r, in]`,
/// `B: [out, r]`, `s = alpha / r` (or `alpha / √r` with rsLoRA). B starts at zero, so attaching changes nothing.
///
/// With DoRA (Liu et al., arXiv 2402.09353; PEFT's `use_dora`) the adapted weight is split into a direction and a
/// learned magnitude per output: `y = m ⊙ (W x + s·B·A·x) / ‖W + s·B·A‖ + b`, the norm taken over each output's row
/// and treated as a constant in backward (the paper's section 4.3, as PEFT does). `m` starts at the base weight's row
/// norms, so attaching still changes nothing.
public final class LoRA {
    public let a: Parameter
    public let b: Parameter
    public let scale: Float
    /// Dropout on the adapter branch's input in training mode (PEFT's `lora_dropout`).
    public var dropout: Float = 0
    public var rank: Int { a.value.shape[0] }
    /// Whether this is a DoRA adapter.
    public let usesDoRA: Bool
    /// DoRA's magnitude `m: [out]` (PEFT's `lora_magnitude_vector`); set from the base weight when a new DoRA adapter
    /// is attached, nil for plain LoRA.
    public internal(set) var magnitude: Parameter? {
        didSet { AdapterChanges.note() }
    }

    /// New weights: A ~ U(-1/√in, 1/√in) as PEFT's default (Kaiming-uniform with a = √5), B = 0.
    public init(
        inputs: Int, outputs: Int, rank: Int, alpha: Float, rsLoRA: Bool = false, dora: Bool = false, seed: UInt64
    ) throws {
        guard rank > 0 else { throw ModelError.badInput("LoRA rank must be positive, got \(rank)") }
        let bound = 1 / Float(inputs).squareRoot()
        a = Parameter("lora_A", try Tensor.uniform([rank, inputs], low: -bound, high: bound, seed: seed))
        b = Parameter("lora_B", try Tensor.zeros([outputs, rank]))
        scale = rsLoRA ? alpha / Float(rank).squareRoot() : alpha / Float(rank)
        usesDoRA = dora
    }

    /// New weights for an embedding table, as PEFT starts them: A = 0, B ~ N(0, 1) (the reverse of a linear layer's).
    public init(embeddingCount count: Int, size: Int, rank: Int, alpha: Float, rsLoRA: Bool = false, seed: UInt64)
        throws
    {
        guard rank > 0 else { throw ModelError.badInput("LoRA rank must be positive, got \(rank)") }
        a = Parameter("lora_embedding_A", try Tensor.zeros([rank, count]))
        b = Parameter("lora_embedding_B", try Tensor.normal([size, rank], std: 1, seed: seed))
        scale = rsLoRA ? alpha / Float(rank).squareRoot() : alpha / Float(rank)
        usesDoRA = false
    }

    /// `x·Wᵀ + b + s·B·A·x` for a layer's weight and bias (not DoRA's). In training with ``dropout``, as PEFT's
    /// lora_dropout, on the low-rank branch's input only: `W·x + b + s·B·A·drop(x)`.
    func forward(_ x: Tensor, weight: Tensor, bias: Tensor?, weightTransposed: Bool = false) throws -> Tensor {
        guard dropout > 0, TrainingMode.isActive else {
            return try Tensor.loraLinear(
                x, weight: weight, bias: bias, loraA: a.value, loraB: b.value, scale: scale,
                weightTransposed: weightTransposed)
        }
        let low = try Tensor.linear(Tensor.linear(x.trainingDropout(dropout), weight: a.value), weight: b.value)
        return try Tensor.linear(x, weight: weight, bias: bias, weightTransposed: weightTransposed)
            + low.scaled(by: scale)
    }

    /// Given weights (loaded from a file); a `magnitude` makes it a DoRA adapter.
    public init(a: Tensor, b: Tensor, scale: Float, magnitude: Tensor? = nil) {
        self.a = Parameter("lora_A", a)
        self.b = Parameter("lora_B", b)
        self.scale = scale
        self.usesDoRA = magnitude != nil
        self.magnitude = magnitude.map { Parameter("lora_magnitude_vector", $0) }
    }
}

/// A layer that LoRA adapters attach to: a linear layer, an embedding table, or a tied output layer.
/// `A: [r, loraInputs]`, `B: [loraOutputs, r]`; one adapter active, which can be merged into the layer's weight and
/// unmerged exactly (except on a tied output layer, which refuses to merge).
public protocol LoRAHost: AnyObject {
    /// The weight the adapter merges into.
    var weight: Parameter { get }
    var loras: [String: LoRA] { get }
    var activeLoRA: String? { get set }
    var loraInputs: Int { get }
    var loraOutputs: Int { get }
    var isMerged: Bool { get }
    func attachLoRA(_ name: String, _ lora: LoRA) throws
    func detachLoRA(_ name: String) throws
    func merge() throws
    func unmerge() throws
}

/// The LoRA adapters attached to one layer: by name, one active, and the one folded into the layer's weight, if any.
struct LoRASlots {
    /// The adapters by name, one active.
    let named = NamedSet<LoRA>()
    var adapters: [String: LoRA] { named.members }
    var active: String? {
        get { named.active }
        nonmutating set { named.activate(newValue) }
    }
    private(set) var merged: MergedWeight?

    /// The active adapter unless it is merged: what the forward pass adds to the weight's output.
    var live: LoRA? {
        guard let name = active, merged?.name != name else { return nil }
        return adapters[name]
    }

    /// Registers every adapter's tensors under PEFT's names: `lora_A.<name>.weight`, `lora_B.<name>.weight` and DoRA's
    /// `lora_magnitude_vector.<name>`, or on an embedding table `lora_embedding_A.<name>` and `lora_embedding_B.<name>`.
    func visit(_ visit: inout ParameterVisitor, table: Bool = false) {
        guard visit.collectsParameters else { return }
        for name in adapters.keys.sorted() {
            let lora = adapters[name]!
            visit.parameter(table ? "lora_embedding_A.\(name)" : "lora_A.\(name).weight", lora.a)
            visit.parameter(table ? "lora_embedding_B.\(name)" : "lora_B.\(name).weight", lora.b)
            visit.parameter("lora_magnitude_vector.\(name)", lora.magnitude)
        }
    }

    /// Adds (or replaces, unmerging it first) the adapter `name` and activates it.
    mutating func attach(_ name: String, _ lora: LoRA, weight: Parameter) {
        if merged?.name == name { unmerge(weight) }
        named.add(name, lora)
    }

    mutating func detach(_ name: String, weight: Parameter) {
        if merged?.name == name { unmerge(weight) }
        named.remove(name)
    }

    /// Folds the active adapter into `weight` as `fold(adapter, base)`; nothing when none is active or one is merged.
    mutating func merge(into weight: Parameter, _ fold: (LoRA, Tensor) throws -> Tensor) throws {
        guard let name = active, let lora = adapters[name], merged == nil else { return }
        merged = try MergedWeight(name, into: weight) { try fold(lora, $0) }
    }

    mutating func unmerge(_ weight: Parameter) {
        merged?.restore(weight)
        merged = nil
    }
}

/// A weight with a LoRA adapter folded into it: the adapter's name and the base value, restored bit for bit.
struct MergedWeight {
    let name: String
    let base: Tensor

    /// Replaces `weight`'s value by `fold(base)`, computed without gradients; the weight keeps whether it trains.
    init(_ name: String, into weight: Parameter, _ fold: (Tensor) throws -> Tensor) throws {
        let base = weight.value.detached()
        weight.replaceValue(try Autograd.withoutGradients { try fold(base) })
        (self.name, self.base) = (name, base)
    }

    func restore(_ weight: Parameter) { weight.replaceValue(base) }
}

/// What a LoRA adapter targets and how it scales (one documented field each, as PEFT's `LoraConfig`).
public struct LoRAConfig: Sendable {
    /// The rank r.
    public var rank: Int
    /// α: the update is scaled by α / r (or α / √r with ``rsLoRA``).
    public var alpha: Float
    /// Rank-stabilised scaling α / √r (Kalajdzievski, arXiv 2312.03732).
    public var rsLoRA: Bool
    /// Linear layers to adapt, matched as PEFT does: a key equal to a target or ending in `.` + target
    /// (`c_attn`, `query`, `attention.output.dense`).
    public var targets: [String]
    /// Only these layer numbers (the `.N.` in `h.N.` or `layer.N.`); all layers when `nil`.
    public var layers: Set<Int>?
    /// Dropout on the adapter branch's input while training (`lora_dropout`).
    public var dropout: Float
    /// DoRA (Liu et al., arXiv 2402.09353; PEFT's `use_dora`): a learned magnitude per output on top of the low-rank
    /// direction update; see ``LoRA``.
    public var dora: Bool

    public init(
        rank: Int = 8, alpha: Float = 16, rsLoRA: Bool = false, targets: [String], layers: Set<Int>? = nil,
        dropout: Float = 0,
        dora: Bool = false
    ) {
        (self.rank, self.alpha, self.rsLoRA, self.targets, self.layers, self.dropout) = (
            rank, alpha, rsLoRA, targets, layers, dropout
        )
        self.dora = dora
    }

    func matches(_ key: String) -> Bool {
        guard targets.contains(where: { key == $0 || key.hasSuffix("." + $0) }) else { return false }
        guard let layers else { return true }
        let parts = key.split(separator: ".")
        for (i, p) in parts.enumerated() where (p == "h" || p == "layer") && i + 1 < parts.count {
            if let n = Int(parts[i + 1]) { return layers.contains(n) }
        }
        return false
    }
}

extension Module {
    /// Attaches a new LoRA adapter named `name` to every linear layer and embedding table `config` targets (tables as
    /// PEFT's `lora_embedding_A/B`, e.g. targets `wte` or `word_embeddings`), and activates it.
    /// - Returns: the keys of the adapted layers.
    /// - Throws: ``ModelError/badInput(_:)`` if no layer matches (naming the targets), or for DoRA or dropout on a table.
    @discardableResult
    public func addLoRA(_ name: String, _ config: LoRAConfig, seed: UInt64 = 0) throws -> [String] {
        let matched = namedModules().compactMap { key, m -> (String, any LoRAHost)? in
            (m as? any LoRAHost).flatMap { config.matches(key) ? (key, $0) : nil }
        }
        guard !matched.isEmpty else {
            throw ModelError.badInput(
                "no linear layer or embedding matches the LoRA targets \(config.targets)\(config.layers.map { " in layers \($0.sorted())" } ?? "")"
            )
        }
        guard (0..<1).contains(config.dropout) else {
            throw ModelError.badInput("LoRA dropout \(config.dropout) is outside [0, 1)")
        }
        if let table = matched.first(where: { $0.1 is Embedding }), config.dora || config.dropout > 0 {
            throw ModelError.badInput(
                "LoRA target '\(table.0)' is an embedding table: \(config.dora ? "DoRA" : "dropout") is not supported there"
            )
        }
        for (i, (_, layer)) in matched.enumerated() {
            let seed = seed &+ UInt64(i)
            let lora =
                layer is Embedding
                ? try LoRA(
                    embeddingCount: layer.loraInputs, size: layer.loraOutputs, rank: config.rank, alpha: config.alpha,
                    rsLoRA: config.rsLoRA, seed: seed)
                : try LoRA(
                    inputs: layer.loraInputs, outputs: layer.loraOutputs, rank: config.rank, alpha: config.alpha,
                    rsLoRA: config.rsLoRA, dora: config.dora, seed: seed)
            if !(layer is Embedding) { lora.dropout = config.dropout }
            try layer.attachLoRA(name, lora)
        }
        return matched.map(\.0)
    }

    /// Folds the active LoRA adapter into every adapted layer (inference at the base model's cost).
    public func mergeLoRA() throws { for (_, m) in namedModules() { try (m as? any LoRAHost)?.merge() } }

    /// The word-embedding table that this model's output layer also reads (GPT-2's and BERT's tied word predictions),
    /// if any. A LoRA on it changes the lookup only (``Embedding/unadaptedWeight``), so a checkpoint with the adapter
    /// merged into the shared table would not reproduce the adapted model.
    public var tiedOutputEmbedding: Embedding? {
        namedModules().lazy.compactMap { $0.module as? TiedOutput }.first?.table
    }

    /// Undoes ``mergeLoRA()`` exactly.
    public func unmergeLoRA() throws { for (_, m) in namedModules() { try (m as? any LoRAHost)?.unmerge() } }
}
