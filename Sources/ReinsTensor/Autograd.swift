/// A node of the reverse-mode autograd graph.
///
/// A leaf node belongs to a tensor that requires a gradient (a parameter); its ``grad`` accumulates over backward
/// passes until zeroed. An interior node belongs to an op's result: it knows its parents and a backward function that
/// adds this node's gradient, pushed through the op, into each parent's gradient buffer. The buffers are passed as
/// pointers, `nil` for a parent that needs no gradient, so kernels skip the work (a frozen weight costs no dW GEMM).
final class GradNode {
    typealias Backward = (_ gradient: Tensor, _ parentGradients: [UnsafeMutablePointer<Float>?]) -> Void

    let shape: [Int]
    /// The parents, one per op input; `nil` for an input that needs no gradient.
    let parents: [GradNode?]
    /// Consumed (set to `nil`) by the backward pass, which releases what the op saved.
    var backward: Backward?
    let isLeaf: Bool
    /// The accumulated gradient.
    var grad: Tensor?

    init(leafShape shape: [Int]) {
        self.shape = shape
        self.parents = []
        self.backward = nil
        self.isLeaf = true
    }

    init(shape: [Int], parents: [GradNode?], backward: @escaping Backward) {
        self.shape = shape
        self.parents = parents
        self.backward = backward
        self.isLeaf = false
    }

    /// The gradient buffer, created as zeros on first use.
    func gradientPointer() -> UnsafeMutablePointer<Float> {
        if grad == nil {
            grad = Tensor(shape: shape, storage: TensorStorage(count: Tensor.elementCount(shape), repeating: 0))
        }
        return grad!.storage.pointer
    }
}

/// Switches for automatic differentiation.
public enum Autograd {
    @TaskLocal static var isRecording = true

    /// Whether operations currently record the graph (false inside ``withoutGradients(_:)``).
    public static var isEnabled: Bool { isRecording }

    /// Runs `body` without recording any graph: results require no gradient and nothing is saved for backward.
    /// Use it for inference and evaluation.
    public static func withoutGradients<R>(_ body: () throws -> R) rethrows -> R {
        try $isRecording.withValue(false) { try body() }
    }
}

extension Tensor {
    /// Whether this tensor has (or contributes to) a gradient.
    public var requiresGradient: Bool { node != nil }

    /// This tensor as a leaf of the autograd graph: after ``backward()`` its ``gradient`` holds ∂loss/∂self.
    public func requiringGradient() -> Tensor {
        Tensor(shape: shape, storage: storage, node: GradNode(leafShape: shape))
    }

    /// The accumulated gradient of a leaf (`nil` before any backward pass reached it).
    public var gradient: Tensor? { node?.grad }

    /// Clears the accumulated gradient of a leaf.
    public func zeroGradient() { node?.grad = nil }

    /// Records `result` as computed from `inputs` so that a later ``backward()`` runs `backward` for it.
    ///
    /// Nothing is recorded (and `backward` is dropped) when gradients are disabled or no input requires one.
    static func recording(_ result: Tensor, inputs: [Tensor], backward: @escaping GradNode.Backward) -> Tensor {
        guard Autograd.isRecording, inputs.contains(where: { $0.node != nil }) else { return result }
        var r = result
        r.node = GradNode(shape: result.shape, parents: inputs.map(\.node), backward: backward)
        return r
    }

    /// Back-propagates from this scalar: every leaf it depends on gets ∂self/∂leaf added to its ``gradient``.
    ///
    /// Interior gradients and the tensors saved by ops are released as soon as they are used, so a graph supports
    /// one backward pass. Leaf gradients accumulate across passes until ``zeroGradient()``.
    /// - Throws: ``TensorError/backwardFromNonScalar(shape:)``, ``TensorError/noGradientGraph``,
    ///   ``TensorError/graphReleased``.
    public func backward() throws {
        guard count == 1 else { throw TensorError.backwardFromNonScalar(shape: shape) }
        guard let root = node else { throw TensorError.noGradientGraph }
        if !root.isLeaf && root.backward == nil { throw TensorError.graphReleased }
        try Tensor.backward(from: root, seed: Tensor(shape: shape, storage: TensorStorage(count: 1, repeating: 1)))
    }

    /// Back-propagates `seed` (∂loss/∂self, same shape as self) through the graph.
    public func backward(gradient seed: Tensor) throws {
        guard seed.shape == shape else {
            throw TensorError.shapeMismatch(
                operation: "backward(gradient:)", detail: "gradient \(seed.shape) for tensor \(shape)")
        }
        guard let root = node else { throw TensorError.noGradientGraph }
        if !root.isLeaf && root.backward == nil { throw TensorError.graphReleased }
        try Tensor.backward(from: root, seed: seed)
    }

    private static func backward(from root: GradNode, seed: Tensor) throws {
        // Topological order by an iterative depth-first search (graphs can be deep: no recursion).
        var order: [GradNode] = []
        var visited = Set<ObjectIdentifier>()
        var stack: [(GradNode, Int)] = [(root, 0)]
        visited.insert(ObjectIdentifier(root))
        while let (n, next) = stack.last {
            if next < n.parents.count {
                stack[stack.count - 1].1 += 1
                if let p = n.parents[next], !p.isLeaf, visited.insert(ObjectIdentifier(p)).inserted {
                    stack.append((p, 0))
                }
                if let p = n.parents[next], p.isLeaf { visited.insert(ObjectIdentifier(p)) }
            } else {
                order.append(n)
                stack.removeLast()
            }
        }
        // Seed the root: a leaf accumulates; an interior root simply takes the seed (backward functions only read
        // their node's gradient, so sharing the seed's storage is safe and saves a zero-fill and a copy).
        if root.isLeaf || root.grad != nil {
            let rootGrad = root.gradientPointer()
            seed.withUnsafeBufferPointer { s in for i in 0..<s.count { rootGrad[i] += s[i] } }
        } else {
            root.grad = seed.detached()
        }
        for n in order.reversed() where !n.isLeaf {
            guard let fn = n.backward else { throw TensorError.graphReleased }
            n.backward = nil
            if let g = n.grad {
                fn(g, n.parents.map { $0?.gradientPointer() })
            }
            n.grad = nil
        }
    }
}
