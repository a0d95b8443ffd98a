import CReinsKernels
import Foundation

/// A trainable tensor with a stable name: the unit optimizers update and checkpoints store.
///
/// A parameter has reference semantics on purpose: a model and its optimizer must see the same weights. Its
/// ``value`` is an autograd leaf while ``isTrainable``; freezing drops the leaf, so frozen weights get no gradient
/// and no optimizer state.
public final class Parameter: @unchecked Sendable {
    /// The key, matching the checkpoint name (e.g. `h.0.attn.c_attn.weight`).
    public let name: String
    /// The current value.
    public var value: Tensor

    public init(_ name: String, _ value: Tensor, trainable: Bool = true) {
        self.name = name
        self.value = trainable ? value.requiringGradient() : value.detached()
    }

    /// Whether the parameter receives gradients.
    public var isTrainable: Bool {
        get { value.requiresGradient }
        set {
            guard newValue != isTrainable else { return }
            value = newValue ? value.requiringGradient() : value.detached()
        }
    }

    /// Sets a new value and keeps whether the parameter trains (assigning ``value`` directly takes the new tensor's).
    public func replaceValue(_ newValue: Tensor) {
        let trainable = isTrainable
        value = newValue
        isTrainable = trainable
    }

    /// The accumulated gradient, if a backward pass reached this parameter.
    public var gradient: Tensor? { value.gradient }

    /// Clears the accumulated gradient.
    public func zeroGradient() { value.zeroGradient() }
}

/// What a training loop needs from an optimizer: one update over the trainable parameters, a learning rate that a
/// schedule can set before each step, and a state that checkpoints save and restore exactly.
public protocol Optimizer: AnyObject {
    /// The learning rate of the next update.
    var learningRate: Float { get set }
    /// Updates taken so far.
    var step: Int { get }
    /// Applies one update to every trainable parameter that has a gradient, with gradients multiplied by
    /// `gradientScale` (clipping, gradient accumulation).
    func update(_ parameters: [Parameter], gradientScale: Float)
    /// The state per parameter, keyed `<slot>.<key>` (e.g. `exp_avg.classifier.weight`), and the step.
    func state(_ named: [(key: String, parameter: Parameter)]) -> (tensors: [String: Tensor], step: Int)
    /// Restores ``state(_:)``; throws naming a missing or mis-shaped slot.
    func restore(_ tensors: [String: Tensor], step: Int, _ named: [(key: String, parameter: Parameter)]) throws
}

/// Per-parameter optimizer buffers, created on a parameter's first update (so they exist only for trainable
/// parameters that received a gradient).
struct SlotStore {
    let names: [String]
    var buffers: [ObjectIdentifier: [TensorStorage]] = [:]

    func buffers(for p: Parameter) -> [TensorStorage]? { buffers[ObjectIdentifier(p)] }

    mutating func buffersOrNew(for p: Parameter) -> (buffers: [TensorStorage], isNew: Bool) {
        if let b = buffers[ObjectIdentifier(p)] { return (b, false) }
        let b = names.map { _ in TensorStorage(count: p.value.count, repeating: 0) }
        buffers[ObjectIdentifier(p)] = b
        return (b, true)
    }

    func export(_ named: [(key: String, parameter: Parameter)]) -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for (key, p) in named {
            guard let b = buffers[ObjectIdentifier(p)] else { continue }
            for (slot, storage) in zip(names, b) {
                out["\(slot).\(key)"] = Tensor(shape: p.value.shape, storage: TensorStorage(copying: storage))
            }
        }
        return out
    }

    mutating func restore(_ tensors: [String: Tensor], _ named: [(key: String, parameter: Parameter)]) throws {
        var restored: [ObjectIdentifier: [TensorStorage]] = [:]
        for (key, p) in named {
            let found = names.map { tensors["\($0).\(key)"] }
            if found.allSatisfy({ $0 == nil }) { continue }  // never updated yet
            var b: [TensorStorage] = []
            for (slot, t) in zip(names, found) {
                guard let t else {
                    throw TensorError.invalidArgument(operation: "optimizer state", detail: "missing '\(slot).\(key)'")
                }
                guard t.shape == p.value.shape else {
                    throw TensorError.invalidArgument(
                        operation: "optimizer state",
                        detail: "'\(slot).\(key)' is \(t.shape), the parameter \(p.value.shape)")
                }
                b.append(TensorStorage(copying: t.storage))
            }
            restored[ObjectIdentifier(p)] = b
        }
        buffers = restored
    }
}

/// Runs `body` over `[start, end)` chunks of a flat buffer of `n` floats, split over the cores when it is large
/// (optimizer steps are memory-bound), in chunks aligned to 16 floats.
func forChunks(_ n: Int, _ body: (Int, Int) -> Void) {
    Parallel.forRanges(n / 16 + 1, minimum: 1 << 14) { r, _ in
        let start = r.lowerBound * 16, end = Swift.min(r.upperBound * 16, n)
        if start < end { body(start, end) }
    }
}

/// Whether a parameter decays by default: matrices do; biases, layer-norm weights and other vectors do not (the
/// usual "no decay for bias and LayerNorm.weight" rule, decided by shape so that it holds for adapters too).
public func decaysByDefault(_ p: Parameter) -> Bool { p.value.rank >= 2 }

/// AdamW (Loshchilov & Hutter, arXiv 1711.05101) with PyTorch's update order and defaults.
///
/// `p ← p - lr·λ·p;  m ← β₁m + (1-β₁)g;  v ← β₂v + (1-β₂)g²;  p ← p - lr/(1-β₁ᵗ) · m / (√v/√(1-β₂ᵗ) + ε)`.
/// One fused kernel call per parameter over its flat buffer; state exists only for trainable parameters.
public final class AdamW: Optimizer {
    public var learningRate: Float
    public var beta1: Float
    public var beta2: Float
    public var epsilon: Float
    /// Decoupled weight decay λ, applied to parameters for which `decays` returns true.
    public var weightDecay: Float
    /// Which parameters decay (by default: all; ``decaysByDefault(_:)`` leaves biases and norms out).
    public var decays: (Parameter) -> Bool
    public private(set) var step = 0
    private var slots = SlotStore(names: ["exp_avg", "exp_avg_sq"])

    public init(
        learningRate: Float = 1e-3, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8,
        weightDecay: Float = 0.01, decays: @escaping (Parameter) -> Bool = { _ in true }
    ) {
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        self.decays = decays
    }

    public func update(_ parameters: [Parameter], gradientScale: Float = 1) {
        step += 1
        let bc1 = 1 - Float(pow(Double(beta1), Double(step))), bc2 = 1 - Float(pow(Double(beta2), Double(step)))
        for p in parameters where p.isTrainable {
            guard let g = p.gradient else { continue }
            let state = slots.buffersOrNew(for: p).buffers
            let wd = decays(p) ? weightDecay : 0
            let (lr, b1, b2, eps) = (learningRate, beta1, beta2, epsilon)
            p.value.withUnsafeMutableBufferPointer { w in
                let pw = w.baseAddress!, pm = state[0].pointer, pv = state[1].pointer, pg = g.storage.pointer
                forChunks(w.count) { start, end in
                    rk_adamw_step(
                        pw + start, pm + start, pv + start, pg + start, end - start, lr, b1, b2, eps, wd, bc1, bc2,
                        gradientScale)
                }
            }
        }
    }

    public func state(_ named: [(key: String, parameter: Parameter)]) -> (tensors: [String: Tensor], step: Int) {
        (slots.export(named), step)
    }

    public func restore(_ tensors: [String: Tensor], step: Int, _ named: [(key: String, parameter: Parameter)]) throws {
        try slots.restore(tensors, named)
        self.step = step
    }
}

/// SGD with momentum as PyTorch's `torch.optim.SGD` (dampening 0): weight decay is added to the gradient,
/// `b ← μb + g` (`b = g` on a parameter's first update), `p ← p - lr·b` (or `p ← p - lr·(g + μb)` with Nesterov).
public final class SGD: Optimizer {
    public var learningRate: Float
    public var momentum: Float
    public var weightDecay: Float
    public var nesterov: Bool
    /// Which parameters decay (by default: all).
    public var decays: (Parameter) -> Bool
    public private(set) var step = 0
    private var slots = SlotStore(names: ["momentum_buffer"])

    public init(
        learningRate: Float = 1e-2, momentum: Float = 0.9, weightDecay: Float = 0, nesterov: Bool = false,
        decays: @escaping (Parameter) -> Bool = { _ in true }
    ) {
        (self.learningRate, self.momentum, self.weightDecay, self.nesterov, self.decays) = (
            learningRate, momentum, weightDecay, nesterov, decays
        )
    }

    public func update(_ parameters: [Parameter], gradientScale: Float = 1) {
        step += 1
        for p in parameters where p.isTrainable {
            guard let g = p.gradient else { continue }
            let (buffers, first) = momentum == 0 ? ([], true) : slots.buffersOrNew(for: p)
            let wd = decays(p) ? weightDecay : 0
            let (lr, mu, nest) = (learningRate, momentum, Int32(nesterov ? 1 : 0))
            p.value.withUnsafeMutableBufferPointer { w in
                let pw = w.baseAddress!, pb = buffers.first?.pointer, pg = g.storage.pointer
                forChunks(w.count) { start, end in
                    rk_sgd_step(
                        pw + start, pb.map { $0 + start }, pg + start, end - start, lr, mu, wd, nest, first ? 1 : 0,
                        gradientScale)
                }
            }
        }
    }

    public func state(_ named: [(key: String, parameter: Parameter)]) -> (tensors: [String: Tensor], step: Int) {
        (slots.export(named), step)
    }

    public func restore(_ tensors: [String: Tensor], step: Int, _ named: [(key: String, parameter: Parameter)]) throws {
        try slots.restore(tensors, named)
        self.step = step
    }
}

/// The global L2 norm of the gradients of `parameters`, and the factor that brings it down to `maxNorm`.
///
/// As PyTorch's `clip_grad_norm_`: `factor = min(1, maxNorm / (norm + 1e-6))`. The gradients are scaled in place,
/// so any optimizer sees clipped gradients.
/// - Returns: the norm before clipping.
@discardableResult
public func clipGradientNorm(_ parameters: [Parameter], maxNorm: Float) -> Float {
    var total = 0.0
    for p in parameters { if let g = p.gradient { total += rk_sum_squares(g.storage.pointer, g.count) } }
    let norm = Float(total.squareRoot())
    let factor = min(1, maxNorm / (norm + 1e-6))
    if factor < 1 {
        for p in parameters {
            guard let g = p.gradient else { continue }
            let d = g.storage.pointer
            for i in 0..<g.count { d[i] *= factor }
        }
    }
    return norm
}

/// Information about the compute kernels.
public enum Kernels {
    /// The instruction set the C kernels use now: `scalar`, `avx2` or `avx512`.
    public static var activeInstructionSet: String { String(cString: rk_isa_name(rk_isa_active())) }
    /// The best instruction set this CPU offers the kernels.
    public static var detectedInstructionSet: String { String(cString: rk_isa_name(rk_isa_detected())) }
    /// What computes a linear layer's products with many rows (a training step's, a long prompt's) on the calling
    /// thread: `Reins (AVX-512) from 64 rows`, or `OpenBLAS` on other CPUs or with `REINS_GEMM=openblas`.
    public static var manyRowProducts: String {
        ManyRowProducts.applies(rows: ManyRowProducts.minimumRows)
            ? "Reins (AVX-512) from \(ManyRowProducts.minimumRows) rows" : "OpenBLAS"
    }
    /// The kernel set OpenBLAS runs its matrix products with (its core name: `SkylakeX`, `Haswell`, `Zen`, ...).
    public static var blasCore: String { String(cString: rk_blas_core()) }
    /// The core OpenBLAS had fallen back to when Reins raised its kernel set as the library loaded, or nil. An OpenBLAS
    /// release older than the CPU may not know its model and fall back to SSE3 kernels (0.3.21 on a 2023 Xeon:
    /// `Prescott`, sgemm at a quarter of its AVX-512 speed there); Reins then selects the kernels the CPU's features allow
    /// (`OPENBLAS_CORETYPE`, which a user may set to choose for themselves).
    public static var blasCoreFallback: String? {
        let name = String(cString: rk_blas_core_fallback())
        return name.isEmpty ? nil : name
    }
}

/// How the learning rate changes over a run, as a factor of the base rate at each update (0-based), with Hugging
/// Face's `get_*_schedule_with_warmup` formulas: during `warmup` updates the factor rises linearly from 0 (the first
/// update uses factor 0, as there), then it stays at 1 (constant), falls linearly to 0 at `total`, or follows a half
/// cosine to 0 at `total`.
public enum LearningRateSchedule: Sendable, Equatable {
    case constant(warmup: Int)
    case linear(warmup: Int, total: Int)
    case cosine(warmup: Int, total: Int)

    /// The factor for update number `step` (0-based).
    public func factor(step: Int) -> Float {
        let warmup: Int
        switch self {
        case .constant(let w), .linear(let w, _), .cosine(let w, _): warmup = w
        }
        if step < warmup { return Float(step) / Float(max(1, warmup)) }
        switch self {
        case .constant: return 1
        case .linear(_, let total):
            return max(0, Float(total - step) / Float(max(1, total - warmup)))
        case .cosine(_, let total):
            let progress = Double(step - warmup) / Double(max(1, total - warmup))
            return Float(max(0, 0.5 * (1 + cos(Double.pi * progress))))
        }
    }
}
