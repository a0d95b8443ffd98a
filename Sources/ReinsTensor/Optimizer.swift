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

    /// The accumulated gradient, if a backward pass reached this parameter.
    public var gradient: Tensor? { value.gradient }

    /// Clears the accumulated gradient.
    public func zeroGradient() { value.zeroGradient() }
}

/// AdamW (Loshchilov & Hutter, arXiv 1711.05101) with PyTorch's update order and defaults.
///
/// `p ← p - lr·λ·p;  m ← β₁m + (1-β₁)g;  v ← β₂v + (1-β₂)g²;  p ← p - lr/(1-β₁ᵗ) · m / (√v/√(1-β₂ᵗ) + ε)`.
/// One fused kernel call per parameter over its flat buffer; state exists only for trainable parameters.
public final class AdamW {
    public var learningRate: Float
    public var beta1: Float
    public var beta2: Float
    public var epsilon: Float
    /// Decoupled weight decay λ, applied to parameters for which `decays` returns true.
    public var weightDecay: Float
    /// Which parameters decay (by default: all).
    public var decays: (Parameter) -> Bool
    /// Steps taken so far.
    public private(set) var step = 0
    private var moments: [ObjectIdentifier: (m: TensorStorage, v: TensorStorage)] = [:]

    public init(learningRate: Float = 1e-3, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8,
                weightDecay: Float = 0.01, decays: @escaping (Parameter) -> Bool = { _ in true }) {
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        self.decays = decays
    }

    /// Applies one update to every trainable parameter that has a gradient, with gradients multiplied by
    /// `gradientScale` (the factor from ``clipGradientNorm(_:maxNorm:)``).
    public func update(_ parameters: [Parameter], gradientScale: Float = 1) {
        step += 1
        let bc1 = 1 - Float(pow(Double(beta1), Double(step))), bc2 = 1 - Float(pow(Double(beta2), Double(step)))
        for p in parameters where p.isTrainable {
            guard let g = p.gradient else { continue }
            let n = p.value.count
            let state = moments[ObjectIdentifier(p)] ?? (TensorStorage(count: n, repeating: 0), TensorStorage(count: n, repeating: 0))
            moments[ObjectIdentifier(p)] = state
            let wd = decays(p) ? weightDecay : 0
            let (lr, b1, b2, eps) = (learningRate, beta1, beta2, epsilon)
            p.value.withUnsafeMutableBufferPointer { w in
                let pw = w.baseAddress!, pm = state.m.pointer, pv = state.v.pointer, pg = g.storage.pointer
                // Memory-bound: large buffers are split over the cores, in chunks aligned to 16 floats.
                Parallel.forRanges(n / 16 + 1, minimum: 1 << 14) { r, _ in
                    let start = r.lowerBound * 16, end = Swift.min(r.upperBound * 16, n)
                    guard start < end else { return }
                    rk_adamw_step(pw + start, pm + start, pv + start, pg + start, end - start, lr, b1, b2, eps, wd, bc1, bc2, gradientScale)
                }
            }
        }
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
}
