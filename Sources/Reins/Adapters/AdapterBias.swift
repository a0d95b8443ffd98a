import Foundation
import ReinsTensor

/// AdapterBias (Fu, Chen, Lee, Lee, arXiv 2205.00305): a token-dependent shift `α(z)·v` added to the feed-forward
/// output, parallel to its second layer. `v` is one vector of the model width; `α` is a linear map from the FFN's
/// intermediate activation `z` to one scalar per token (the authors' code reads that activation). `v` starts at zero,
/// so attaching changes nothing.
public final class AdapterBias: Module {
    public let alpha: Linear
    public let vector: Parameter

    public init(intermediate: Int, size: Int, seed: UInt64) throws {
        alpha = try Linear(inputs: intermediate, outputs: 1, std: 0.01, seed: seed)
        vector = Parameter("adapter_vector", try Tensor.zeros([size]))
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("adapter_alpha", alpha)
        visit.parameter("adapter_vector", vector)
    }

    /// The shift `[..., C]` for the intermediate activation `z: [..., I]`: the outer product of α(z) and v.
    func shift(_ z: Tensor) throws -> Tensor {
        let a = try alpha(z)  // [..., 1]
        let rows = a.count, C = vector.value.count
        let outer = try Tensor.matmul(a.reshaped([rows, 1]), vector.value.reshaped([1, C]))
        return try outer.reshaped(Array(a.shape.dropLast()) + [C])
    }
}
