import Foundation
import ReinsTensor

/// LoHa (Hyeon-Woo et al., FedPara, arXiv 2108.06098, as PEFT implements it): a weight update that is the Hadamard
/// product of two low-rank products, `ΔW = (W1a·W1b) ⊙ (W2a·W2b) · α/r` (`[out, in]`), added to a linear layer's
/// output as `x·ΔWᵀ`. Rank r gives a ΔW of rank up to r², for 2r(in + out) parameters. `W2b` starts at zero (PEFT's
/// initialisation), so a new adapter changes nothing.
///
/// One file and one row in each table it joins — ``AdapterMethod/loha(_:)``, PEFT's `LOHA` loader and writer — is all
/// a linear-layer method takes: it plugs into every ``Linear``'s generic ``Linear/methods`` site.
public final class LoHa: LinearAdapterMethod {
    /// `[out, r]`, `[r, in]`, `[out, r]`, `[r, in]`.
    public let w1a: Parameter, w1b: Parameter, w2a: Parameter, w2b: Parameter
    /// α / r.
    public let scale: Float
    public var rank: Int { w1a.value.shape[1] }

    /// - Throws: ``ModelError/badInput(_:)`` for factors whose shapes do not chain.
    public init(w1a: Tensor, w1b: Tensor, w2a: Tensor, w2b: Tensor, scale: Float) throws {
        guard w1a.rank == 2, w1b.rank == 2, w1a.shape == w2a.shape, w1b.shape == w2b.shape,
            w1a.shape[1] == w1b.shape[0],
            w1a.shape[1] > 0, scale.isFinite
        else {
            throw ModelError.badInput(
                "LoHa factors \(w1a.shape) · \(w1b.shape) and \(w2a.shape) · \(w2b.shape) (scale \(scale)) do not make [out, r] · [r, in] twice"
            )
        }
        (self.w1a, self.w1b) = (Parameter("hada_w1_a", w1a), Parameter("hada_w1_b", w1b))
        (self.w2a, self.w2b) = (Parameter("hada_w2_a", w2a), Parameter("hada_w2_b", w2b))
        self.scale = scale
    }

    /// A new adapter for an `inputs → outputs` layer: the first three factors uniform in ±1/√fan-in (PyTorch's
    /// Kaiming-uniform with a = √5, as PEFT draws them), `W2b` zero.
    public convenience init(inputs: Int, outputs: Int, rank: Int, alpha: Float, seed: UInt64) throws {
        guard rank > 0, inputs > 0, outputs > 0 else { throw ModelError.badInput("LoHa rank \(rank) must be positive") }
        func uniform(_ shape: [Int], fanIn: Int, _ s: UInt64) throws -> Tensor {
            let bound = 1 / Float(fanIn).squareRoot()
            return try Tensor.uniform(shape, low: -bound, high: bound, seed: s)
        }
        try self.init(
            w1a: uniform([outputs, rank], fanIn: rank, seed), w1b: uniform([rank, inputs], fanIn: inputs, seed &+ 1),
            w2a: uniform([outputs, rank], fanIn: rank, seed &+ 2), w2b: Tensor.zeros([rank, inputs]),
            scale: alpha / Float(rank))
    }

    /// `ΔW`, `[out, in]`, differentiable in the four factors.
    public func delta() throws -> Tensor {
        try (Tensor.matmul(w1a.value, w1b.value) * Tensor.matmul(w2a.value, w2b.value)).scaled(by: scale)
    }

    /// The layer's output plus `x·ΔWᵀ` (no bias: the layer's own is in `inner`).
    public func forward(_ x: Tensor, layer: Linear, inner: (Tensor) throws -> Tensor) throws -> Tensor {
        try inner(x) + Tensor.linear(x, weight: delta())
    }

    public var parameters: [Parameter] { [w1a, w1b, w2a, w2b] }

    public func visitParameters(_ visit: inout ParameterVisitor, name: String) {
        for p in parameters { visit.parameter("\(p.name).\(name)", p) }
    }

    public func check(fits layer: Linear) throws {
        guard w1a.value.shape[0] == layer.outputs, w1b.value.shape[1] == layer.inputs else {
            throw ModelError.badInput(
                "LoHa \(w1a.value.shape) · \(w1b.value.shape) does not fit a \(layer.inputs) -> \(layer.outputs) layer")
        }
    }
}

/// Where LoHa goes and how large it is (PEFT's `LoHaConfig`: `r`, `alpha`, `target_modules`).
public struct LoHaConfig: Sendable, Equatable {
    public var rank: Int
    public var alpha: Float
    /// Linear layers, matched as PEFT matches `target_modules` (a key equal to a target or ending in `.target`).
    public var targets: [String]

    public init(rank: Int = 8, alpha: Float = 8, targets: [String]) {
        (self.rank, self.alpha, self.targets) = (rank, alpha, targets)
    }
}

extension Module {
    /// Attaches a new LoHa adapter named `name` to every linear layer `config` targets, and activates it.
    /// - Returns: the keys of the adapted layers.
    /// - Throws: ``ModelError/badInput(_:)`` if no layer matches or the rank is not positive.
    @discardableResult
    public func addLoHa(_ name: String, _ config: LoHaConfig, seed: UInt64 = 0) throws -> [String] {
        let isTarget = LoRAConfig(targets: config.targets)
        let matched = namedModules().compactMap { key, m in
            (m as? Linear).flatMap { isTarget.matches(key) ? (key, $0) : nil }
        }
        guard !matched.isEmpty else {
            throw ModelError.badInput("no linear layer matches the LoHa targets \(config.targets)")
        }
        for (i, (_, layer)) in matched.enumerated() {
            try layer.attach(
                name,
                LoHa(
                    inputs: layer.inputs, outputs: layer.outputs, rank: config.rank, alpha: config.alpha,
                    seed: seed &+ UInt64(3 * i)))
        }
        return matched.map(\.0)
    }
}
