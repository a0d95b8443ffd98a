import Foundation

/// A contiguous buffer of `Float`s that a ``Tensor`` shares until someone writes to it (copy-on-write).
///
/// The memory is 64-byte aligned so that SIMD kernels and OpenBLAS see cache-line aligned rows.
public final class TensorStorage: @unchecked Sendable {
    /// The first element.
    public let pointer: UnsafeMutablePointer<Float>
    /// The number of elements.
    public let count: Int

    /// Allocates `count` elements; their values are undefined until written.
    init(uninitializedCount count: Int) {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * MemoryLayout<Float>.stride, alignment: 64)
        self.pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        self.count = count
    }

    /// Allocates `count` elements set to `value`.
    convenience init(count: Int, repeating value: Float) {
        self.init(uninitializedCount: count)
        pointer.initialize(repeating: value, count: count)
    }

    /// A copy of another storage.
    convenience init(copying other: TensorStorage) {
        self.init(uninitializedCount: other.count)
        pointer.update(from: other.pointer, count: count)
    }

    deinit { UnsafeMutableRawPointer(pointer).deallocate() }
}
