import Foundation
import ReinsTensor

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
    /// The adapters of the last routed batch's groups here (``routedAdapters(_:)``), one per lane of batches that run
    /// side by side.
    let routedCaches = PerLane<RoutedAdapterCache>()
    /// The adapter used by the forward pass (`nil`: the base layer alone).
    public var activeLoRA: String? {
        get { slots.active }
        set { slots.active = newValue }
    }
    /// Attached IA3 vectors by name (Liu et al., arXiv 2205.05638), one active.
    let ia3Vectors = NamedSet<IA3>()
    public var ia3: [String: IA3] { ia3Vectors.members }
    /// Other linear-adapter methods by name (LoHa, ...), one active: the generic site a new method plugs into.
    public let methods = NamedSet<any LinearAdapterMethod>()
    /// The IA3 vector used by the forward pass.
    public var activeIA3: String? {
        get { ia3Vectors.active }
        set { ia3Vectors.activate(newValue) }
    }

    /// A layer of N(0, `std`) weights drawn from `seed` and zero biases (``Module/initializeParameters(seed:)`` redraws
    /// a whole model's from its keys).
    public init(
        inputs: Int, outputs: Int, bias: Bool = true, weightTransposed: Bool = false, std: Float = 0.02,
        seed: UInt64 = 0
    ) throws {
        self.inputs = inputs
        self.outputs = outputs
        self.weightTransposed = weightTransposed
        weight = Parameter(
            "weight",
            try Initializer.normal(weightTransposed ? [inputs, outputs] : [outputs, inputs], std: std, seed: seed))
        biases = bias ? ParameterVariants(Parameter("bias", try Tensor.zeros([outputs]))) : nil
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.parameter("weight", weight)
        visit.parameter("bias", bias)
        slots.visit(&visit)
        guard visit.collectsParameters else { return }
        for name in ia3.keys.sorted() { visit.parameter("ia3_l.\(name)", ia3[name]!.vector) }
        for name in methods.members.keys.sorted() { methods.members[name]!.visitParameters(&visit, name: name) }
    }

    var liveIA3: IA3? { ia3Vectors.current }

    /// The adapters the forward pass applies, innermost first: a LoRA (or DoRA) computes the product itself, IA3
    /// scales around whatever is inside it. Each adapter's computation is its own (``LinearAdapter``).
    var liveAdapters: [any LinearAdapter] {
        [liveLoRA as (any LinearAdapter)?, methods.current, liveIA3].compactMap { $0 }
    }

    /// Attaches a linear-adapter method under `name` (replacing one of that name) and activates it.
    /// - Throws: the method's own error when it does not fit this layer.
    public func attach(_ name: String, _ adapter: any LinearAdapterMethod) throws {
        try adapter.check(fits: self)
        methods.add(name, adapter)
    }

    /// Whether an adapter changes this layer's forward pass (so fused paths that read the weight directly must not be used).
    /// In a batch routed to many adapters: whether any of them is at this layer (its BitFit bias included).
    var hasLiveAdapter: Bool {
        guard let routing = AdapterRouting.current else { return !liveAdapters.isEmpty }
        return routedAdapters(routing).any
    }

    /// Attaches an IA3 vector under `name` and activates it: `[out]` rescales the output, `[in]` (a feed-forward layer)
    /// rescales the input.
    public func attachIA3(_ name: String, _ vector: IA3) throws {
        let expected = vector.scalesInput ? inputs : outputs
        guard vector.vector.value.shape == [expected] else {
            throw ModelError.badInput(
                "IA3 '\(name)': vector \(vector.vector.value.shape) does not fit the \(vector.scalesInput ? "input" : "output") of a \(inputs) -> \(outputs) layer (expected [\(expected)])"
            )
        }
        ia3Vectors.add(name, vector)
    }

    public func detachIA3(_ name: String) {
        ia3Vectors.remove(name)
    }

    /// The adapter that the forward pass applies on top of the (unmerged) weight.
    var liveLoRA: LoRA? { slots.live }

    /// The frozen base weight kept in its quantized blocks (a GGUF base, QLoRA), or nil; ``weight`` then holds no
    /// values. Adapters train beside it in float32.
    public private(set) var quantizedWeight: QuantizedMatrix?
    /// How products with ``quantizedWeight`` are computed (``QuantizedRoute/exact``: float32 from the dequantized
    /// weight).
    public var quantizedRoute: QuantizedRoute = .automatic

    /// Keeps the base weight as `matrix` (`[out, in]` in blocks, whatever layout the float weight has) instead of
    /// float32, frozen: the float32 values are released. The blocks are kept interleaved by 8 rows where they can be
    /// (``QuantizedMatrix/interleavedByRows()``), the layout of the fast integer products.
    /// - Throws: ``ModelError/badInput(_:)`` when the matrix does not fit the layer.
    public func quantize(_ matrix: QuantizedMatrix) throws {
        guard matrix.rows == outputs, matrix.columns == inputs else {
            throw ModelError.badInput(
                "a \(matrix.type) matrix [\(matrix.rows), \(matrix.columns)] does not fit a \(inputs) -> \(outputs) layer")
        }
        guard !isMerged else { throw ModelError.badInput("a layer with a merged adapter cannot be quantized") }
        quantizedWeight = matrix.interleavedByRows()
        weight.replaceValue(try Tensor.zeros([0]))
    }

    /// The base product `x·Wᵀ (+ bias)`, through the quantized weight when there is one. `precomputed`: `x·Wᵀ`
    /// already computed for the input `of` (``products(of:_:)``), used when `x` is that very input.
    func baseProduct(_ x: Tensor, bias: Tensor?, precomputed: (of: Tensor, product: Tensor)? = nil) throws -> Tensor {
        if let p = precomputed, p.of.storage === x.storage, p.of.shape == x.shape {
            return try bias.map { try p.product + $0 } ?? p.product
        }
        if let q = quantizedWeight { return try Tensor.quantizedLinear(x, weight: q, bias: bias, route: quantizedRoute) }
        return try Tensor.linear(x, weight: weight.value, bias: bias, weightTransposed: weightTransposed)
    }

    /// The base weight as float32 in the layer's layout (`[in, out]` when ``weightTransposed``), dequantized on each
    /// call for a quantized layer.
    func denseWeight() throws -> Tensor {
        guard let q = quantizedWeight else { return weight.value }
        return weightTransposed ? try q.dequantized().transposed() : try q.dequantized()
    }

    /// `x: [..., in]` to `[..., out]`.
    public func callAsFunction(_ x: Tensor) throws -> Tensor { try forward(x, precomputed: nil) }

    /// Several layers applied to the same input (a Llama layer's query, key and value projections): with quantized
    /// base weights and no gradients, the base products are computed together (the input quantized once, one
    /// parallel region); each layer's adapters then apply as in its own forward pass (one that changes the layer's
    /// input, like IA3 on a feed-forward input, computes its own product). Equal to `layers.map { $0(x) }`.
    public static func products(of layers: [Linear], _ x: Tensor) throws -> [Tensor] {
        let weights = layers.compactMap(\.quantizedWeight)
        guard weights.count == layers.count, layers.count > 1, layers.allSatisfy({ $0.quantizedRoute == .automatic }),
            let bases = try Tensor.sharedInputQuantizedProducts(x, weights: weights)
        else { return try layers.map { try $0(x) } }
        return try zip(layers, bases).map { layer, base in try layer.forward(x, precomputed: (x, base)) }
    }

    func forward(_ x: Tensor, precomputed: (of: Tensor, product: Tensor)?) throws -> Tensor {
        if let routing = AdapterRouting.current { return try mixedForward(x, routing: routing, precomputed: precomputed) }
        var forward: (Tensor) throws -> Tensor = { [self] in try baseProduct($0, bias: bias?.value, precomputed: precomputed) }
        for adapter in liveAdapters {
            let inner = forward
            forward = { [self] in try adapter.forward($0, layer: self, inner: inner) }
        }
        return try forward(x)
    }

    /// Attaches a LoRA adapter under `name` (replacing one of that name) and makes it active. A new DoRA adapter gets
    /// its magnitude here: the row norms of `W + s·B·A`, so that attaching changes nothing.
    public func attachLoRA(_ name: String, _ lora: LoRA) throws {
        guard lora.a.value.shape == [lora.rank, inputs], lora.b.value.shape == [outputs, lora.rank] else {
            throw ModelError.badInput(
                "LoRA '\(name)': A \(lora.a.value.shape) and B \(lora.b.value.shape) do not fit a \(inputs) -> \(outputs) layer (expected [r, \(inputs)] and [\(outputs), r])"
            )
        }
        if let m = lora.magnitude, m.value.shape != [outputs] {
            throw ModelError.badInput(
                "DoRA '\(name)': magnitude \(m.value.shape) does not fit a layer with \(outputs) outputs (expected [\(outputs)])"
            )
        }
        slots.attach(name, lora, weight: weight)  // unmerges a merged adapter of that name first: the norm reads the base
        if lora.usesDoRA && lora.magnitude == nil {
            lora.magnitude = Parameter("lora_magnitude_vector", try lora.doraNorm(on: self))
        }
    }

    /// Removes an adapter (unmerging it first if needed).
    public func detachLoRA(_ name: String) throws { slots.detach(name, weight: weight) }

    /// Folds the active adapter into the weight, `W + s·B·A` (transposed for `[in, out]` storage), so that inference
    /// costs what the base layer costs. The base weight is kept and restored exactly by ``unmerge()``.
    public func merge() throws {
        if quantizedWeight != nil, activeLoRA != nil {
            throw ModelError.badInput(
                "merging an adapter into a quantized base weight is refused: it would need re-quantizing, which loses the adapter's precision; keep the adapter separate, or load the base with --exact and merge into float32"
            )
        }
        try slots.merge(into: weight) { lora, base in try lora.folded(into: base, of: self) }
    }

    /// Restores the weight from before ``merge()``, bit for bit.
    public func unmerge() throws { slots.unmerge(weight) }

    /// Whether an adapter is merged into the weight.
    public var isMerged: Bool { slots.merged != nil }
}
