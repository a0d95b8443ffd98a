import ReinsTensor

/// A piece of a model that owns parameters and sub-modules, each registered explicitly under a stable key.
///
/// Keys match Hugging Face checkpoint names (`h.0.attn.c_attn.weight`), so loading and saving is a lookup, never a
/// rename. Registration is explicit (no reflection): each module lists its own parameters and children in
/// ``visitParameters(_:)`` in a fixed order, which makes parameter order deterministic.
public protocol Module: AnyObject {
    /// Calls `visit` for each parameter and child module, with the key relative to this module.
    func visitParameters(_ visit: inout ParameterVisitor)
}

/// Walks a module tree, building full keys from the path.
public struct ParameterVisitor {
    private var prefix: [String] = []
    fileprivate var found: [(key: String, parameter: Parameter)] = []
    fileprivate var modules: [(key: String, module: any Module)] = []

    /// Visits one parameter under `name`.
    public mutating func parameter(_ name: String, _ parameter: Parameter?) {
        guard let parameter else { return }
        found.append(((prefix + [name]).joined(separator: "."), parameter))
    }

    /// Visits a child module under `name`.
    public mutating func module(_ name: String, _ module: (any Module)?) {
        guard let module else { return }
        prefix.append(name)
        modules.append((prefix.joined(separator: "."), module))
        module.visitParameters(&self)
        prefix.removeLast()
    }

    /// Visits a list of child modules as `name.0`, `name.1`, ...
    public mutating func modules(_ name: String, _ modules: [any Module]) {
        for (i, m) in modules.enumerated() { module("\(name).\(i)", m) }
    }
}

extension Module {
    /// Every parameter with its full key, in registration order. A parameter shared by two paths (tied weights)
    /// appears once, under the first key.
    public func namedParameters() -> [(key: String, parameter: Parameter)] {
        var visitor = ParameterVisitor()
        visitParameters(&visitor)
        var seen = Set<ObjectIdentifier>()
        return visitor.found.filter { seen.insert(ObjectIdentifier($0.parameter)).inserted }
    }

    /// Every key under which a parameter is registered, including the second key of a tied parameter.
    public func allParameterKeys() -> [(key: String, parameter: Parameter)] {
        var visitor = ParameterVisitor()
        visitParameters(&visitor)
        return visitor.found
    }

    /// Every sub-module with its key (`h.0.attn.c_attn`), in registration order.
    public func namedModules() -> [(key: String, module: any Module)] {
        var visitor = ParameterVisitor()
        visitParameters(&visitor)
        return visitor.modules
    }

    /// The parameters in registration order.
    public var parameters: [Parameter] { namedParameters().map(\.parameter) }

    /// The parameters that receive gradients.
    public var trainableParameters: [Parameter] { parameters.filter(\.isTrainable) }

    /// The number of scalars in all parameters (tied weights counted once).
    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.value.count } }

    /// The number of scalars that train.
    public var trainableParameterCount: Int { trainableParameters.reduce(0) { $0 + $1.value.count } }

    /// Freezes the parameters whose key satisfies `predicate` (all by default): they get no gradient and no
    /// optimizer state.
    public func freeze(where predicate: (String) -> Bool = { _ in true }) {
        for (key, p) in namedParameters() where predicate(key) { p.isTrainable = false }
    }

    /// Unfreezes the parameters whose key satisfies `predicate` (all by default).
    public func unfreeze(where predicate: (String) -> Bool = { _ in true }) {
        for (key, p) in namedParameters() where predicate(key) { p.isTrainable = true }
    }

    /// Clears every gradient.
    public func zeroGradients() { for p in parameters { p.zeroGradient() } }
}

// MARK: - Building blocks

/// Initial values for new parameters. While a checkpoint is being loaded the draws are skipped (uninitialised
/// buffers that the loader fills), since every value is about to be overwritten.
enum Initializer {
    @TaskLocal static var skipped = false

    static func normal(_ shape: [Int], std: Float, seed: UInt64) throws -> Tensor {
        skipped ? try Tensor.uninitialized(shape) : try Tensor.normal(shape, std: std, seed: seed)
    }
}

/// A dense layer `y = x·Wᵀ + b`, with the weight stored `[out, in]` (torch `nn.Linear`) or `[in, out]`
/// (GPT-2's `Conv1D`, `weightTransposed`), so either checkpoint layout loads without a copy.
///
/// A linear layer is also an adapter insertion point: named LoRA adapters can be attached (``attachLoRA(_:_:)``), one
/// of them active, and the active one merged into the weight for inference at no extra cost.
public final class Linear: Module, LoRAHost {
    public let weight: Parameter
    /// The bias in use: the base's, or the active BitFit adapter's copy.
    public var bias: Parameter? { biases?.current }
    /// The base bias and its BitFit variants.
    public let biases: ParameterVariants?
    public let weightTransposed: Bool
    public let inputs: Int
    public let outputs: Int
    public var loraInputs: Int { inputs }
    public var loraOutputs: Int { outputs }
    /// The attached LoRA adapters, the active one and the merged one.
    var slots = LoRASlots()
    /// Attached LoRA adapters by name.
    public var loras: [String: LoRA] { slots.adapters }
    /// The adapter used by the forward pass (`nil`: the base layer alone).
    public var activeLoRA: String? {
        get { slots.active }
        set { slots.active = newValue }
    }
    /// Attached IA3 vectors by name (Liu et al., arXiv 2205.05638).
    public private(set) var ia3: [String: IA3] = [:]
    /// The IA3 vector used by the forward pass.
    public var activeIA3: String?

    /// A layer of N(0, `std`) weights drawn from `seed` and zero biases (``Module/initializeParameters(seed:)`` redraws
    /// a whole model's from its keys).
    public init(inputs: Int, outputs: Int, bias: Bool = true, weightTransposed: Bool = false, std: Float = 0.02, seed: UInt64 = 0) throws {
        self.inputs = inputs
        self.outputs = outputs
        self.weightTransposed = weightTransposed
        weight = Parameter("weight", try Initializer.normal(weightTransposed ? [inputs, outputs] : [outputs, inputs], std: std, seed: seed))
        biases = bias ? ParameterVariants(Parameter("bias", try Tensor.zeros([outputs]))) : nil
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.parameter("weight", weight)
        visit.parameter("bias", bias)
        slots.visit(&visit)
        for name in ia3.keys.sorted() { visit.parameter("ia3_l.\(name)", ia3[name]!.vector) }
    }

    var liveIA3: IA3? { activeIA3.flatMap { ia3[$0] } }

    /// Whether an adapter changes this layer's forward pass (so fused paths that read the weight directly must not be used).
    var hasLiveAdapter: Bool { liveLoRA != nil || liveIA3 != nil }

    /// Attaches an IA3 vector under `name` and activates it: `[out]` rescales the output, `[in]` (a feed-forward layer)
    /// rescales the input.
    public func attachIA3(_ name: String, _ vector: IA3) throws {
        let expected = vector.scalesInput ? inputs : outputs
        guard vector.vector.value.shape == [expected] else {
            throw ModelError.badInput("IA3 '\(name)': vector \(vector.vector.value.shape) does not fit the \(vector.scalesInput ? "input" : "output") of a \(inputs) -> \(outputs) layer (expected [\(expected)])")
        }
        ia3[name] = vector
        activeIA3 = name
    }

    public func detachIA3(_ name: String) {
        ia3[name] = nil
        if activeIA3 == name { activeIA3 = nil }
    }

    /// The adapter that the forward pass applies on top of the (unmerged) weight.
    var liveLoRA: LoRA? { slots.live }

    /// `x: [..., in]` to `[..., out]`.
    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        let scaling = liveIA3
        let input = try scaling.flatMap { $0.scalesInput ? try x * $0.vector.value : nil } ?? x
        let y: Tensor
        if let lora = liveLoRA, let magnitude = lora.magnitude {
            y = try doraForward(input, lora: lora, magnitude: magnitude.value)
        } else if let lora = liveLoRA {
            y = try lora.forward(input, weight: weight.value, bias: bias?.value, weightTransposed: weightTransposed)
        } else {
            y = try Tensor.linear(input, weight: weight.value, bias: bias?.value, weightTransposed: weightTransposed)
        }
        if let scaling, !scaling.scalesInput { return try y * scaling.vector.value }
        return y
    }

    /// DoRA's forward pass: `b + f ⊙ (W x + s·B·A·x)` with `f = m / ‖W + s·B·A‖` (the norm without gradient). With
    /// dropout in training, as PEFT: `W x + b + (f - 1) ⊙ W·drop(x) + f ⊙ s·B·A·drop(x)`.
    func doraForward(_ x: Tensor, lora: LoRA, magnitude: Tensor) throws -> Tensor {
        let factor = try magnitude / doraNorm(lora)
        let dropping = lora.dropout > 0 && TrainingMode.isActive
        let dropped = dropping ? try x.trainingDropout(lora.dropout) : x
        let directed = try Tensor.loraLinear(dropped, weight: weight.value, loraA: lora.a.value, loraB: lora.b.value,
                                             scale: lora.scale, weightTransposed: weightTransposed) * factor
        guard dropping else { return try bias.map { try directed + $0.value } ?? directed }
        let base = try Tensor.linear(x, weight: weight.value, bias: bias?.value, weightTransposed: weightTransposed)
        let droppedBase = try Tensor.linear(dropped, weight: weight.value, weightTransposed: weightTransposed)
        return try base + directed - droppedBase
    }

    /// The norm of each output's row of `W + s·B·A` (DoRA's denominator), as a constant. Computed on every call, as
    /// PEFT does by default: merge the adapter for inference at the base layer's cost.
    func doraNorm(_ lora: LoRA) throws -> Tensor {
        try Autograd.withoutGradients {
            let delta = try Tensor.matmul(lora.b.value, lora.a.value).scaled(by: lora.scale) // [out, in]
            let adapted = try (weightTransposed ? weight.value.transposed() : weight.value) + delta
            return try (adapted * adapted).sum(axis: 1).sqrt()
        }
    }

    /// Attaches a LoRA adapter under `name` (replacing one of that name) and makes it active. A new DoRA adapter gets
    /// its magnitude here: the row norms of `W + s·B·A`, so that attaching changes nothing.
    public func attachLoRA(_ name: String, _ lora: LoRA) throws {
        guard lora.a.value.shape == [lora.rank, inputs], lora.b.value.shape == [outputs, lora.rank] else {
            throw ModelError.badInput("LoRA '\(name)': A \(lora.a.value.shape) and B \(lora.b.value.shape) do not fit a \(inputs) -> \(outputs) layer (expected [r, \(inputs)] and [\(outputs), r])")
        }
        if let m = lora.magnitude, m.value.shape != [outputs] {
            throw ModelError.badInput("DoRA '\(name)': magnitude \(m.value.shape) does not fit a layer with \(outputs) outputs (expected [\(outputs)])")
        }
        slots.attach(name, lora, weight: weight) // unmerges a merged adapter of that name first: the norm reads the base
        if lora.usesDoRA && lora.magnitude == nil { lora.magnitude = Parameter("lora_magnitude_vector", try doraNorm(lora)) }
    }

    /// Removes an adapter (unmerging it first if needed).
    public func detachLoRA(_ name: String) throws { slots.detach(name, weight: weight) }

    /// Folds the active adapter into the weight, `W + s·B·A` (transposed for `[in, out]` storage), so that inference
    /// costs what the base layer costs. The base weight is kept and restored exactly by ``unmerge()``.
    public func merge() throws {
        try slots.merge(into: weight) { lora, base in
            let delta = try Tensor.matmul(lora.b.value, lora.a.value).scaled(by: lora.scale) // [out, in]
            let update = weightTransposed ? try delta.transposed() : delta
            guard let m = lora.magnitude else { return try base + update }
            // DoRA: W' = f ⊙ (W + s·B·A), f = m / ‖W + s·B·A‖ per output (a column of the [in, out] layout).
            let factor = try m.value / doraNorm(lora)
            return weightTransposed ? try (base + update) * factor : try ((base + update).transposed() * factor).transposed()
        }
    }

    /// Restores the weight from before ``merge()``, bit for bit.
    public func unmerge() throws { slots.unmerge(weight) }

    /// Whether an adapter is merged into the weight.
    public var isMerged: Bool { slots.merged != nil }
}

/// An IA3 vector for one linear layer (Liu et al., arXiv 2205.05638): the layer's output (or, for feed-forward layers,
/// its input) multiplied elementwise by a learned vector that starts at ones, so attaching changes nothing.
public final class IA3 {
    public let vector: Parameter
    /// Whether the vector rescales the input (`[in]`, PEFT's feed-forward modules) rather than the output (`[out]`).
    public let scalesInput: Bool

    public init(size: Int, scalesInput: Bool) throws {
        vector = Parameter("ia3_l", try Tensor.ones([size]))
        self.scalesInput = scalesInput
    }

    public init(vector: Tensor, scalesInput: Bool) {
        self.vector = Parameter("ia3_l", vector)
        self.scalesInput = scalesInput
    }
}

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
    public internal(set) var magnitude: Parameter?

    /// New weights: A ~ U(-1/√in, 1/√in) as PEFT's default (Kaiming-uniform with a = √5), B = 0.
    public init(inputs: Int, outputs: Int, rank: Int, alpha: Float, rsLoRA: Bool = false, dora: Bool = false, seed: UInt64) throws {
        guard rank > 0 else { throw ModelError.badInput("LoRA rank must be positive, got \(rank)") }
        let bound = 1 / Float(inputs).squareRoot()
        a = Parameter("lora_A", try Tensor.uniform([rank, inputs], low: -bound, high: bound, seed: seed))
        b = Parameter("lora_B", try Tensor.zeros([outputs, rank]))
        scale = rsLoRA ? alpha / Float(rank).squareRoot() : alpha / Float(rank)
        usesDoRA = dora
    }

    /// New weights for an embedding table, as PEFT starts them: A = 0, B ~ N(0, 1) (the reverse of a linear layer's).
    public init(embeddingCount count: Int, size: Int, rank: Int, alpha: Float, rsLoRA: Bool = false, seed: UInt64) throws {
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
            return try Tensor.loraLinear(x, weight: weight, bias: bias, loraA: a.value, loraB: b.value, scale: scale, weightTransposed: weightTransposed)
        }
        let low = try Tensor.linear(Tensor.linear(x.trainingDropout(dropout), weight: a.value), weight: b.value)
        return try Tensor.linear(x, weight: weight, bias: bias, weightTransposed: weightTransposed) + low.scaled(by: scale)
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

/// Layer normalisation over the last axis (arXiv 1607.06450).
public final class LayerNorm: Module {
    public let weight: Parameter
    /// The bias in use: the base's, or the active BitFit adapter's copy.
    public var bias: Parameter { biases.current }
    /// The base bias and its BitFit variants.
    public let biases: ParameterVariants
    public let eps: Float

    /// `eps` defaults to PyTorch's `nn.LayerNorm` default.
    public init(_ size: Int, eps: Float = 1e-5) throws {
        guard size > 0, eps.isFinite, eps >= 0 else { throw ModelError.badInput("LayerNorm needs a positive size and a finite eps >= 0, got \(size) and \(eps)") }
        weight = Parameter("weight", try Tensor.ones([size]))
        biases = ParameterVariants(Parameter("bias", try Tensor.zeros([size])))
        self.eps = eps
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.parameter("weight", weight)
        visit.parameter("bias", bias)
    }

    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        try Tensor.layerNorm(x, weight: weight.value, bias: bias.value, eps: eps)
    }
}

/// A lookup table `[count, size]`; the row of `paddingIndex`, if any, gets no gradient (torch's `padding_idx`).
///
/// An embedding table is also a LoRA insertion point, as PEFT's `lora_embedding_A` / `lora_embedding_B`: the looked-up
/// row gets `s·B·A[:, id]` added, with `A: [r, count]` and `B: [size, r]` (the shapes of a LoRA on a `count -> size`
/// linear layer applied to one-hot inputs). No dropout and no DoRA on tables.
public final class Embedding: Module, LoRAHost {
    public let weight: Parameter
    public let paddingIndex: Int?
    public let count: Int
    public let size: Int
    var slots = LoRASlots()
    public var loras: [String: LoRA] { slots.adapters }
    public var activeLoRA: String? {
        get { slots.active }
        set { slots.active = newValue }
    }

    public init(count: Int, size: Int, paddingIndex: Int? = nil, std: Float = 0.02, seed: UInt64 = 0) throws {
        weight = Parameter("weight", try Initializer.normal([count, size], std: std, seed: seed))
        self.paddingIndex = paddingIndex
        self.count = count
        self.size = size
    }

    public var loraInputs: Int { count }
    public var loraOutputs: Int { size }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.parameter("weight", weight)
        slots.visit(&visit, table: true)
    }

    /// The table without the active adapter: what a tied output layer (GPT-2's and BERT's word predictions) reads, as
    /// in PEFT, where LoRA changes the lookup only. Equal to ``weight`` unless an adapter is merged.
    public var unadaptedWeight: Tensor { slots.merged?.base ?? weight.value }

    /// `ids: [...]` to `[..., size]`; throws for an id outside the table.
    public func callAsFunction(_ ids: IntTensor) throws -> Tensor {
        let rows = try Tensor.embedding(ids, table: weight.value, paddingIndex: paddingIndex)
        guard let lora = slots.live else { return rows }
        let low = try Tensor.embedding(ids, table: lora.a.value.transposed(), paddingIndex: paddingIndex) // [..., r]
        return try rows + Tensor.linear(low, weight: lora.b.value).scaled(by: lora.scale)
    }

    /// Attaches a LoRA adapter under `name` (replacing one of that name) and makes it active.
    public func attachLoRA(_ name: String, _ lora: LoRA) throws {
        guard lora.a.value.shape == [lora.rank, count], lora.b.value.shape == [size, lora.rank] else {
            throw ModelError.badInput("LoRA '\(name)': lora_embedding_A \(lora.a.value.shape) and lora_embedding_B \(lora.b.value.shape) do not fit a \(count) x \(size) embedding table (expected [r, \(count)] and [\(size), r])")
        }
        guard !lora.usesDoRA else { throw ModelError.badInput("LoRA '\(name)': DoRA on an embedding table is not supported") }
        guard lora.dropout == 0 else { throw ModelError.badInput("LoRA '\(name)': dropout on an embedding table is not supported (PEFT applies none)") }
        slots.attach(name, lora, weight: weight)
    }

    public func detachLoRA(_ name: String) throws { slots.detach(name, weight: weight) }

    /// Folds the active adapter into the table, `W + s·(B·A)ᵀ`; ``unadaptedWeight`` keeps the base for tied outputs.
    public func merge() throws {
        try slots.merge(into: weight) { lora, base in
            try base + Tensor.matmul(lora.a.value, lora.b.value, transposeA: true, transposeB: true).scaled(by: lora.scale)
        }
    }

    public func unmerge() throws { slots.unmerge(weight) }

    public var isMerged: Bool { slots.merged != nil }
}

/// An output layer whose weight is a word-embedding table (GPT-2's `lm_head`, BERT's masked-LM decoder): `y = h·Wᵀ + b`
/// with `W` the table's ``Embedding/unadaptedWeight``. A LoRA insertion point of its own, as PEFT's targets `lm_head`
/// and `decoder` are (`A: [r, hidden]`, `B: [vocabulary, r]`). Such an adapter cannot be merged: the merged weight would
/// also change the input lookups that share the table.
public final class TiedOutput: Module, LoRAHost {
    public let table: Embedding
    public let bias: Parameter?
    public var weight: Parameter { table.weight }
    var slots = LoRASlots()
    public var loras: [String: LoRA] { slots.adapters }
    public var activeLoRA: String? {
        get { slots.active }
        set { slots.active = newValue }
    }
    public var loraInputs: Int { table.size }
    public var loraOutputs: Int { table.count }
    public var isMerged: Bool { false }

    init(table: Embedding, bias: Parameter? = nil) {
        self.table = table
        self.bias = bias
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.parameter("weight", table.weight)
        visit.parameter("bias", bias)
        slots.visit(&visit)
    }

    /// `h: [..., hidden]` to `[..., vocabulary]`.
    public func callAsFunction(_ h: Tensor) throws -> Tensor {
        let w = table.unadaptedWeight
        guard let lora = slots.live else { return try Tensor.linear(h, weight: w, bias: bias?.value) }
        return try lora.forward(h, weight: w, bias: bias?.value)
    }

    public func attachLoRA(_ name: String, _ lora: LoRA) throws {
        guard lora.a.value.shape == [lora.rank, loraInputs], lora.b.value.shape == [loraOutputs, lora.rank] else {
            throw ModelError.badInput("LoRA '\(name)': A \(lora.a.value.shape) and B \(lora.b.value.shape) do not fit the \(loraInputs) -> \(loraOutputs) output layer (expected [r, \(loraInputs)] and [\(loraOutputs), r])")
        }
        guard !lora.usesDoRA else { throw ModelError.badInput("LoRA '\(name)': DoRA on the output layer tied to the word embeddings is not supported") }
        slots.attach(name, lora, weight: weight)
    }

    public func detachLoRA(_ name: String) throws { slots.detach(name, weight: weight) }

    /// - Throws: ``ModelError/badInput(_:)`` while an adapter is active: its merged weight would change the input
    ///   embeddings too.
    public func merge() throws {
        guard let name = activeLoRA else { return }
        throw ModelError.badInput("LoRA '\(name)' on the output layer cannot be merged: its weight is the word-embedding table, which the input lookups share (use the adapter unmerged)")
    }

    public func unmerge() throws {}
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

/// The LoRA adapters attached to one layer: by name, one active, and the one folded into the layer's weight, if any.
struct LoRASlots {
    private(set) var adapters: [String: LoRA] = [:]
    var active: String?
    private(set) var merged: MergedWeight?

    /// The active adapter unless it is merged: what the forward pass adds to the weight's output.
    var live: LoRA? {
        guard let name = active, merged?.name != name else { return nil }
        return adapters[name]
    }

    /// Registers every adapter's tensors under PEFT's names: `lora_A.<name>.weight`, `lora_B.<name>.weight` and DoRA's
    /// `lora_magnitude_vector.<name>`, or on an embedding table `lora_embedding_A.<name>` and `lora_embedding_B.<name>`.
    func visit(_ visit: inout ParameterVisitor, table: Bool = false) {
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
        adapters[name] = lora
        active = name
    }

    mutating func detach(_ name: String, weight: Parameter) {
        if merged?.name == name { unmerge(weight) }
        adapters[name] = nil
        if active == name { active = nil }
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

/// A base value and named variants of it, one active: how adapters give each task its own biases (BitFit) or its own
/// task head on one shared base. The active variant is registered under the base's key, so an adapter's biases and
/// head train, save and load under the model's own keys (`...bias`, `classifier.weight`) while the base's stay
/// untouched.
public final class Variants<Value: AnyObject> {
    public let base: Value
    /// The named variants, one of them (or none: the base) active.
    public let named = NamedSet<Value>()

    init(_ base: Value) { self.base = base }

    public var variants: [String: Value] { named.members }
    public var active: String? {
        get { named.active }
        set { named.active = newValue }
    }

    /// The active variant, or the base.
    public var current: Value { named.current ?? base }

    /// Adds (or replaces) the variant `name` and activates it.
    func add(_ name: String, _ value: Value) { named.add(name, value) }
    func remove(_ name: String) { named.remove(name) }
    /// Activates `name` if there is a variant of that name, else the base.
    public func activate(_ name: String?) { named.activate(name) }
}

/// Biases with BitFit variants.
public typealias ParameterVariants = Variants<Parameter>
