import Foundation

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

/// Told, during a backward pass, of each leaf whose gradient the pass has finished adding to (see
/// ``Autograd/leafGradients``).
public final class LeafGradientObserver: @unchecked Sendable {
    let body: (ObjectIdentifier) -> Void
    /// `body` receives a leaf's ``Tensor/leafIdentity``, on the thread running the backward pass.
    public init(_ body: @escaping (ObjectIdentifier) -> Void) { self.body = body }
}

/// Switches for automatic differentiation.
public enum Autograd {
    /// While set, ``Tensor/backward()`` tells it of each leaf as soon as the last node adding to that leaf's gradient
    /// has run, so that a data-parallel run can start summing those gradients across processes while the rest of the
    /// pass still runs. Leaves the pass does not reach are not announced.
    @TaskLocal public static var leafGradients: LeafGradientObserver?

    @TaskLocal static var isRecording = true
    /// True during the unrecorded forward pass of a checkpointed block: it runs without a graph but is training, so
    /// ops that choose their arithmetic by whether they train (quantized products) choose as when recording.
    @TaskLocal static var isCheckpointForward = false

    /// Whether the current pass trains: recording a graph, or the first pass of a checkpointed block.
    static var isTraining: Bool { isRecording || isCheckpointForward }

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

    /// The identity of this tensor's autograd leaf (what ``Autograd/leafGradients`` reports), nil when it is not a
    /// leaf that requires a gradient.
    public var leafIdentity: ObjectIdentifier? { node.flatMap { $0.isLeaf ? ObjectIdentifier($0) : nil } }

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
        // With an observer, each leaf is announced after the last node that adds to its gradient has run.
        let observer = Autograd.leafGradients
        var finishedAt: [[ObjectIdentifier]] = []
        if let observer {
            let interior = order.reversed().filter { !$0.isLeaf }
            var lastUse: [ObjectIdentifier: Int] = [:]
            for (i, n) in interior.enumerated() {
                for case let p? in n.parents where p.isLeaf { lastUse[ObjectIdentifier(p)] = i }
            }
            finishedAt = Array(repeating: [], count: interior.count)
            for (leaf, i) in lastUse { finishedAt[i].append(leaf) }
            if root.isLeaf { observer.body(ObjectIdentifier(root)) }
        }
        var index = 0
        for n in order.reversed() where !n.isLeaf {
            guard let fn = n.backward else { throw TensorError.graphReleased }
            n.backward = nil
            if let g = n.grad {
                fn(g, n.parents.map { $0?.gradientPointer() })
                // A backward function that runs a pass of its own (a checkpointed block) reports its failure here.
                if let error = Autograd.takeDeferredError() { throw error }
            }
            n.grad = nil
            if let observer {
                for leaf in finishedAt[index] { observer.body(leaf) }
            }
            index += 1
        }
    }

    /// Gradient checkpointing: `body(x)` runs without recording, and only `x` is kept; backward runs `body` again on
    /// a leaf copy of `x` with recording and back-propagates the output's gradient through it, which gives the
    /// parameters used inside their gradients and `x` its own. Memory: one block's activations at a time instead of
    /// every block's, for one more forward pass of the block. `body` must compute the same function both times (a
    /// caller with dropout replays the same masks); `parameters` are the trainable tensors it reads, so that the
    /// block is recorded even when `x` needs no gradient.
    public static func checkpointed(
        _ x: Tensor, parameters: [Tensor], _ body: @escaping (Tensor) throws -> Tensor
    ) throws -> Tensor {
        guard Autograd.isRecording, x.requiresGradient || parameters.contains(where: \.requiresGradient) else {
            return try body(x)
        }
        let y = try Autograd.$isCheckpointForward.withValue(true) { try Autograd.withoutGradients { try body(x) } }
        let saved = x.detached(), needsInput = x.requiresGradient
        return recording(y, inputs: [x] + parameters) { g, grads in
            do {
                let leaf = needsInput ? saved.requiringGradient() : saved
                let again = try body(leaf)
                // The parameters' gradients are complete only when the outer pass has run this node: the inner pass
                // announces nothing.
                try Autograd.$leafGradients.withValue(nil) { try again.backward(gradient: g) }
                if let dx = grads[0], let lg = leaf.gradient {
                    lg.withUnsafeBufferPointer { src in for i in 0..<src.count { dx[i] += src[i] } }
                }
            } catch {
                Autograd.deferError(error)
            }
        }
    }
}

extension Autograd {
    private static let deferred = Locked<[ObjectIdentifier: Error]>([:])
    private static var threadKey: ObjectIdentifier { ObjectIdentifier(Thread.current) }

    /// Keeps an error a backward function met, for the backward pass that called it to throw.
    static func deferError(_ error: Error) { deferred.withLock { $0[threadKey] = error } }
    static func takeDeferredError() -> Error? { deferred.withLock { $0.removeValue(forKey: threadKey) } }
}
