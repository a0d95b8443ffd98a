/// Why a tensor operation refused its input.
///
/// Every check that guards a kernel throws one of these instead of trapping, and the message names the operation
/// and the offending shapes or values.
public enum TensorError: Error, Equatable, CustomStringConvertible {
    /// Shapes that do not fit together, e.g. `matmul` of `[2, 3]` and `[4, 5]`.
    case shapeMismatch(operation: String, detail: String)
    /// An argument outside what the operation accepts (a negative size, an axis that does not exist, ...).
    case invalidArgument(operation: String, detail: String)
    /// An integer index (token id, class id) outside `0..<limit` at flat position `position`.
    case indexOutOfRange(operation: String, position: Int, value: Int, limit: Int)
    /// `backward()` was called on a tensor with more than one element.
    case backwardFromNonScalar(shape: [Int])
    /// `backward()` was called on a tensor that is not the result of operations on tensors requiring gradients.
    case noGradientGraph
    /// `backward()` was called a second time through a graph whose saved tensors were already released.
    case graphReleased

    public var description: String {
        switch self {
        case let .shapeMismatch(operation, detail): return "\(operation): shape mismatch: \(detail)"
        case let .invalidArgument(operation, detail): return "\(operation): invalid argument: \(detail)"
        case let .indexOutOfRange(operation, position, value, limit):
            return "\(operation): index \(value) at position \(position) is outside 0..<\(limit)"
        case let .backwardFromNonScalar(shape):
            return "backward: the tensor has shape \(shape); backward starts from a scalar (one element)"
        case .noGradientGraph:
            return "backward: the tensor does not depend on any tensor that requires a gradient"
        case .graphReleased:
            return "backward: this graph was already used by a backward pass and its saved tensors were released"
        }
    }
}
