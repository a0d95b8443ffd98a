import CReinsKernels
import Foundation

/// An n-dimensional array of `Float`s in contiguous row-major order, with optional reverse-mode autograd.
///
/// `Tensor` has value semantics: copies share one ``TensorStorage`` until one of them is written to, and then the
/// writer gets its own copy (copy-on-write). Operations never modify their inputs. A tensor that requires a gradient
/// carries a node of the autograd graph; see ``requiringGradient()`` and ``backward()``.
public struct Tensor: @unchecked Sendable {
    /// The size of each axis, outermost first.
    public private(set) var shape: [Int]
    /// The elements, shared between copies until written.
    public private(set) var storage: TensorStorage
    /// The autograd node: a leaf for a tensor that requires a gradient, an interior node for an op's result.
    var node: GradNode?

    /// The number of elements.
    public var count: Int { storage.count }
    /// The number of axes.
    public var rank: Int { shape.count }

    init(shape: [Int], storage: TensorStorage, node: GradNode? = nil) {
        self.shape = shape
        self.storage = storage
        self.node = node
    }

    /// A tensor of the given shape whose elements are not yet written (for ops that overwrite every element).
    ///
    /// - Throws: ``TensorError/invalidArgument(operation:detail:)`` for a shape whose size overflows or exceeds
    ///   ``Tensor/memoryLimitBytes`` (an op's result, e.g. the outer product of two long vectors, is checked too).
    init(uninitializedShape shape: [Int], operation: String = "tensor") throws {
        let n = try Tensor.checkedElementCount(shape, operation: operation)
        self.init(shape: shape, storage: try TensorStorage(checkedCount: n))
    }

    /// A tensor of `other`'s shape whose elements are not yet written. It needs no size check: `other` exists.
    init(uninitializedLike other: Tensor) {
        self.init(shape: other.shape, storage: TensorStorage(uninitializedCount: other.count))
    }

    /// A tensor holding `values` in row-major order.
    ///
    /// - Throws: ``TensorError/shapeMismatch(operation:detail:)`` if `values.count` is not the product of `shape`,
    ///   ``TensorError/invalidArgument(operation:detail:)`` for a negative size.
    public init(shape: [Int], values: [Float]) throws {
        try Tensor.validate(shape: shape, operation: "Tensor(shape:values:)")
        let n = Tensor.elementCount(shape)
        guard values.count == n else {
            throw TensorError.shapeMismatch(
                operation: "Tensor(shape:values:)",
                detail: "\(values.count) values for shape \(shape) (\(n) elements)")
        }
        try self.init(uninitializedShape: shape)
        values.withUnsafeBufferPointer { if let b = $0.baseAddress { storage.pointer.update(from: b, count: n) } }
    }

    /// A one-dimensional tensor holding `values`.
    public init(_ values: [Float]) {
        // An array that exists already fits in memory, so no size check is needed.
        self.init(shape: [values.count], storage: TensorStorage(uninitializedCount: values.count))
        values.withUnsafeBufferPointer {
            if let b = $0.baseAddress { storage.pointer.update(from: b, count: values.count) }
        }
    }

    /// A tensor with one element and no axes.
    public init(scalar: Float) {
        self.init(shape: [], storage: TensorStorage(count: 1, repeating: scalar))
    }

    // MARK: creation

    /// A tensor whose elements are not initialised: for buffers that are about to be overwritten in full (loading a
    /// checkpoint). Reading it before writing gives unspecified values.
    public static func uninitialized(_ shape: [Int]) throws -> Tensor {
        try Tensor(uninitializedShape: shape, operation: "uninitialized")
    }

    /// A tensor of the given shape with every element equal to `value`.
    public static func full(_ shape: [Int], _ value: Float) throws -> Tensor {
        var t = try Tensor(uninitializedShape: shape, operation: "full")
        t.fill(value)
        return t
    }
    /// Zeros of the given shape.
    public static func zeros(_ shape: [Int]) throws -> Tensor { try full(shape, 0) }
    /// Ones of the given shape.
    public static func ones(_ shape: [Int]) throws -> Tensor { try full(shape, 1) }

    /// Normal samples `mean + std·z` from ``SeededGenerator``: the same seed gives the same tensor on every run.
    public static func normal(_ shape: [Int], mean: Float = 0, std: Float = 1, seed: UInt64) throws -> Tensor {
        var rng = SeededGenerator(seed: seed)
        var t = try Tensor(uninitializedShape: shape, operation: "normal")
        let p = t.storage.pointer
        for i in 0..<t.count { p[i] = mean + std * rng.nextNormal() }
        t.node = nil
        return t
    }

    /// Uniform samples in `[low, high)` from ``SeededGenerator``.
    public static func uniform(_ shape: [Int], low: Float = 0, high: Float = 1, seed: UInt64) throws -> Tensor {
        var rng = SeededGenerator(seed: seed)
        let t = try Tensor(uninitializedShape: shape, operation: "uniform")
        let p = t.storage.pointer
        for i in 0..<t.count { p[i] = low + (high - low) * rng.nextUniform() }
        return t
    }

    // MARK: element access

    /// The elements in row-major order.
    public var scalars: [Float] { Array(UnsafeBufferPointer(start: storage.pointer, count: count)) }

    /// The single element of a one-element tensor.
    public var item: Float {
        get throws {
            guard count == 1 else {
                throw TensorError.invalidArgument(
                    operation: "item", detail: "tensor of shape \(shape) has \(count) elements")
            }
            return storage.pointer[0]
        }
    }

    /// Reads the elements without copying.
    public func withUnsafeBufferPointer<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        try body(UnsafeBufferPointer(start: storage.pointer, count: count))
    }

    /// Writes the elements in place, first copying the storage if another tensor shares it.
    ///
    /// Writing to a tensor that is part of an autograd graph does not change what backward uses: the graph keeps
    /// its own reference to the old storage.
    public mutating func withUnsafeMutableBufferPointer<R>(_ body: (UnsafeMutableBufferPointer<Float>) throws -> R)
        rethrows -> R
    {
        if !isKnownUniquelyReferenced(&storage) { storage = TensorStorage(copying: storage) }
        return try body(UnsafeMutableBufferPointer(start: storage.pointer, count: count))
    }

    /// The element at a multi-dimensional index (slow; for tests and small tensors).
    ///
    /// This subscript **traps** on an index of the wrong rank or out of range, like `Array`'s; for indices that come
    /// from outside the program use ``element(at:)`` and ``setElement(_:at:)``, which throw instead.
    public subscript(_ index: Int...) -> Float {
        get {
            guard let i = try? flatIndex(index) else {
                preconditionFailure("index \(index) out of range for shape \(shape)")
            }
            return storage.pointer[i]
        }
        set {
            guard let i = try? flatIndex(index) else {
                preconditionFailure("index \(index) out of range for shape \(shape)")
            }
            withUnsafeMutableBufferPointer { $0[i] = newValue }
        }
    }

    /// The element at a multi-dimensional index.
    /// - Throws: ``TensorError/invalidArgument(operation:detail:)`` for an index of the wrong rank or out of range.
    public func element(at index: [Int]) throws -> Float { storage.pointer[try flatIndex(index)] }

    /// Writes the element at a multi-dimensional index (copying the storage first if it is shared).
    /// - Throws: ``TensorError/invalidArgument(operation:detail:)`` for an index of the wrong rank or out of range.
    public mutating func setElement(_ value: Float, at index: [Int]) throws {
        let i = try flatIndex(index)
        withUnsafeMutableBufferPointer { $0[i] = value }
    }

    private func flatIndex(_ index: [Int]) throws -> Int {
        guard index.count == shape.count else {
            throw TensorError.invalidArgument(
                operation: "element", detail: "index \(index) for a tensor of shape \(shape)")
        }
        var flat = 0
        for (i, n) in zip(index, shape) {
            guard i >= 0 && i < n else {
                throw TensorError.invalidArgument(
                    operation: "element", detail: "index \(index) out of range for shape \(shape)")
            }
            flat = flat * n + i
        }
        return flat
    }

    // MARK: helpers

    /// The product of a shape whose sizes are already known to be valid (an existing tensor's).
    static func elementCount(_ shape: [Int]) -> Int { shape.reduce(1, *) }

    /// The most bytes one tensor may take: the machine's physical memory. A shape beyond it (a config or argument
    /// set by hand, a size read from a file) is refused before anything is allocated, with the size named.
    public static let memoryLimitBytes: Int = Int(clamping: ProcessInfo.processInfo.physicalMemory)

    /// The number of elements of `shape`, in checked arithmetic.
    /// - Throws: ``TensorError/invalidArgument(operation:detail:)`` for a negative size, a product that overflows,
    ///   or more float32 elements than ``memoryLimitBytes`` holds.
    package static func checkedElementCount(_ shape: [Int], operation: String) throws -> Int {
        guard shape.allSatisfy({ $0 >= 0 }) else {
            throw TensorError.invalidArgument(operation: operation, detail: "negative size in shape \(shape)")
        }
        var n = 1
        for d in shape {
            let (m, overflow) = n.multipliedReportingOverflow(by: d)
            guard !overflow else {
                throw TensorError.invalidArgument(
                    operation: operation, detail: "shape \(shape) has more elements than an Int can count")
            }
            n = m
        }
        try checkMemory(
            elements: n, bytesPerElement: MemoryLayout<Float>.stride, what: "shape \(shape)", operation: operation)
        return n
    }

    /// Refuses `elements` of `bytesPerElement` bytes beyond ``memoryLimitBytes``, naming the size.
    package static func checkMemory(
        elements: Int, bytesPerElement: Int, what: @autoclosure () -> String, operation: @autoclosure () -> String
    ) throws {
        let (bytes, overflow) = elements.multipliedReportingOverflow(by: bytesPerElement)
        guard !overflow, bytes <= memoryLimitBytes else {
            let size =
                overflow
                ? "more than \(Int.max) bytes"
                : ByteCountFormatter.string(fromByteCount: Int64(bytes), countStyle: .binary)
            throw TensorError.invalidArgument(
                operation: operation(),
                detail:
                    "\(what()) needs \(size), more than this machine's \(ByteCountFormatter.string(fromByteCount: Int64(memoryLimitBytes), countStyle: .binary)) of memory"
            )
        }
    }

    static func validate(shape: [Int], operation: String) throws {
        _ = try checkedElementCount(shape, operation: operation)
    }

    /// Sets every element of a tensor that owns its fresh storage (creation only).
    private mutating func fill(_ value: Float) { storage.fill(value) }

    /// The same values with no autograd history (a new leaf that does not require a gradient).
    public func detached() -> Tensor { Tensor(shape: shape, storage: storage) }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let shown = scalars.prefix(8).map { String(format: "%.5g", $0) }.joined(separator: ", ")
        return
            "Tensor(shape: \(shape), [\(shown)\(count > 8 ? ", ..." : "")]\(requiresGradient ? ", requires gradient" : ""))"
    }
}
