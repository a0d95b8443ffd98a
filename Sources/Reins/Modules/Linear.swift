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
    /// The adapter used by the forward pass (`nil`: the base layer alone).
    public var activeLoRA: String? {
        get { slots.active }
        set { slots.active = newValue }
    }
    /// Attached IA3 vectors by name (Liu et al., arXiv 2205.05638), one active.
    let ia3Vectors = NamedSet<IA3>()
    public var ia3: [String: IA3] { ia3Vectors.members }
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
        for name in ia3.keys.sorted() { visit.parameter("ia3_l.\(name)", ia3[name]!.vector) }
    }

    var liveIA3: IA3? { ia3Vectors.current }

    /// Whether an adapter changes this layer's forward pass (so fused paths that read the weight directly must not be used).
    var hasLiveAdapter: Bool { liveLoRA != nil || liveIA3 != nil }

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
        let directed =
            try Tensor.loraLinear(
                dropped, weight: weight.value, loraA: lora.a.value, loraB: lora.b.value,
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
            let delta = try Tensor.matmul(lora.b.value, lora.a.value).scaled(by: lora.scale)  // [out, in]
            let adapted = try (weightTransposed ? weight.value.transposed() : weight.value) + delta
            return try (adapted * adapted).sum(axis: 1).sqrt()
        }
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
            lora.magnitude = Parameter("lora_magnitude_vector", try doraNorm(lora))
        }
    }

    /// Removes an adapter (unmerging it first if needed).
    public func detachLoRA(_ name: String) throws { slots.detach(name, weight: weight) }

    /// Folds the active adapter into the weight, `W + s·B·A` (transposed for `[in, out]` storage), so that inference
    /// costs what the base layer costs. The base weight is kept and restored exactly by ``unmerge()``.
    public func merge() throws {
        try slots.merge(into: weight) { lora, base in
            let delta = try Tensor.matmul(lora.b.value, lora.a.value).scaled(by: lora.scale)  // [out, in]
            let update = weightTransposed ? try delta.transposed() : delta
            guard let m = lora.magnitude else { return try base + update }
            // DoRA: W' = f ⊙ (W + s·B·A), f = m / ‖W + s·B·A‖ per output (a column of the [in, out] layout).
            let factor = try m.value / doraNorm(lora)
            return weightTransposed
                ? try (base + update) * factor : try ((base + update).transposed() * factor).transposed()
        }
    }

    /// Restores the weight from before ``merge()``, bit for bit.
    public func unmerge() throws { slots.unmerge(weight) }

    /// Whether an adapter is merged into the weight.
    public var isMerged: Bool { slots.merged != nil }
}
