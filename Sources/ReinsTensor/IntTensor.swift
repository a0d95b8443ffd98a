/// An n-dimensional array of `Int32`: token ids, class targets, attention masks.
///
/// Integer tensors never carry gradients; ops that read them check every value and throw for one out of range.
public struct IntTensor: Sendable, Equatable {
    /// The size of each axis.
    public let shape: [Int]
    /// The values in row-major order.
    public let values: [Int32]

    /// - Throws: ``TensorError/shapeMismatch(operation:detail:)`` if `values.count` is not the product of `shape`.
    public init(shape: [Int], values: [Int32]) throws {
        try Tensor.validate(shape: shape, operation: "IntTensor")
        guard values.count == shape.reduce(1, *) else {
            throw TensorError.shapeMismatch(operation: "IntTensor", detail: "\(values.count) values for shape \(shape)")
        }
        self.shape = shape
        self.values = values
    }

    /// A one-dimensional integer tensor.
    public init(_ values: [Int32]) {
        self.shape = [values.count]
        self.values = values
    }

    public var count: Int { values.count }
}
