import Foundation
import ReinsTensor

/// The down- and up-projection of a bottleneck (`size → bottleneck → size`), with the up-projection's weight and bias at
/// zero so that the adapter starts as a no-op. Shared by the sequential and the parallel bottleneck adapters.
func zeroStartBottleneck(size: Int, bottleneck: Int, seed: UInt64) throws -> (down: Linear, up: Linear) {
    guard bottleneck > 0, size > 0 else {
        throw ModelError.badInput("bottleneck adapter sizes must be positive (\(size) -> \(bottleneck))")
    }
    let down = try Linear(inputs: size, outputs: bottleneck, std: 0.01, seed: seed)
    let up = try Linear(inputs: bottleneck, outputs: size, seed: seed + 1)
    up.weight.value = try Tensor.zeros([size, bottleneck]).requiringGradient()
    return (down, up)
}

/// A bottleneck adapter (Houlsby et al., arXiv 1902.00751): `h + W_up · f(W_down · h + b_down) + b_up`.
///
/// `W_up` and `b_up` start at zero, so a new adapter leaves the model unchanged. Houlsby places one after the attention
/// output projection and one after the feed-forward network, each before its residual add; Pfeiffer only the second.
public final class BottleneckAdapter: Module {
    public let down: Linear
    public let up: Linear
    public let nonLinearity: NonLinearity
    /// What the bottleneck reads: the sublayer's output `h` (false, the default: `h + up(f(down(h)))`), or — as the
    /// `adapters` library's `original_ln_before` (its Pfeiffer default) — the block's own layer norm of `h + x`,
    /// `h + up(f(down(LN(h + x))))` (no norm in pre-LN blocks: `h + x`). The residual add and norm after it are the
    /// block's own either way.
    public var readsNormalizedSum = false

    /// `swish` is x·sigmoid(x) (the `adapters` library's Houlsby default).
    public enum NonLinearity: String, Sendable { case relu, gelu, tanh, swish }

    /// - Parameters:
    ///   - size: the model width; `bottleneck`: the reduced width (e.g. size / 16).
    public init(size: Int, bottleneck: Int, nonLinearity: NonLinearity = .relu, seed: UInt64) throws {
        (down, up) = try zeroStartBottleneck(size: size, bottleneck: bottleneck, seed: seed)
        self.nonLinearity = nonLinearity
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("adapter_down", down)
        visit.module("adapter_up", up)
    }

    public func callAsFunction(_ h: Tensor) throws -> Tensor { try h + delta(h) }

    /// `h + up(f(down(input)))` with the input this adapter reads (``readsNormalizedSum``): `h`, or the norm of `h + x`.
    func callAsFunction(_ h: Tensor, residual x: Tensor, norm: LayerNorm?) throws -> Tensor {
        guard readsNormalizedSum else { return try self(h) }
        let sum = try h + x
        return try h + delta(norm.map { try $0(sum) } ?? sum)
    }

    func delta(_ input: Tensor) throws -> Tensor {
        let z = try down(input)
        let a: Tensor
        switch nonLinearity {
        case .relu: a = z.relu()
        case .gelu: a = z.gelu()
        case .tanh: a = z.tanh()
        case .swish: a = try z * z.sigmoid()
        }
        return try up(a)
    }
}

/// A parallel adapter (He et al., arXiv 2110.04366): a bottleneck beside the feed-forward network, reading the FFN's
/// input and adding `scale · W_up · f(W_down · h)` to its output. `W_up` starts at zero.
public final class ParallelAdapter: Module {
    public let down: Linear
    public let up: Linear
    public let scale: Float

    public init(size: Int, bottleneck: Int, scale: Float = 4, seed: UInt64) throws {
        (down, up) = try zeroStartBottleneck(size: size, bottleneck: bottleneck, seed: seed)
        self.scale = scale
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("adapter_down", down)
        visit.module("adapter_up", up)
    }

    func delta(_ h: Tensor) throws -> Tensor { try up(down(h).relu()).scaled(by: scale) }
}
