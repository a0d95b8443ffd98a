import Foundation
import ReinsTensor

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
        guard size > 0, eps.isFinite, eps >= 0 else {
            throw ModelError.badInput("LayerNorm needs a positive size and a finite eps >= 0, got \(size) and \(eps)")
        }
        weight = Parameter("weight", try Tensor.ones([size]))
        biases = ParameterVariants(Parameter("bias", try Tensor.zeros([size])))
        self.eps = eps
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.parameter("weight", weight)
        visit.parameter("bias", bias)
    }

    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        if let routing = AdapterRouting.current, !biases.variants.isEmpty { return try mixedForward(x, routing: routing) }
        return try Tensor.layerNorm(x, weight: weight.value, bias: bias.value, eps: eps)
    }
}
