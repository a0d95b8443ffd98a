import Foundation

/// A contiguous buffer of `Float`s that a ``Tensor`` shares until someone writes to it (copy-on-write).
///
/// The memory is 64-byte aligned so that SIMD kernels and OpenBLAS see cache-line aligned rows. Freed buffers go
/// to ``BufferCache`` and are reused by the next allocation of the same size, so a training step in steady state
/// takes its activations and gradients from buffers the previous step released, with no fresh page faults.
public final class TensorStorage: @unchecked Sendable {
    /// The first element.
    public let pointer: UnsafeMutablePointer<Float>
    /// The number of elements.
    public let count: Int

    /// Allocates `count` elements; their values are undefined until written.
    init(uninitializedCount count: Int) {
        self.pointer = BufferCache.shared.take(count: count)
        self.count = count
    }

    /// Allocates `count` elements, throwing rather than trapping when the system refuses the memory (a limit set with
    /// `ulimit -v`, or a machine already full): the path of every tensor whose size comes from a caller.
    init(checkedCount count: Int) throws {
        guard let p = BufferCache.shared.takeIfAvailable(count: count) else {
            throw TensorError.invalidArgument(
                operation: "allocation",
                detail:
                    "the system refused \(ByteCountFormatter.string(fromByteCount: Int64(count) * 4, countStyle: .binary)) for \(count) elements"
            )
        }
        self.pointer = p
        self.count = count
    }

    /// Allocates `count` elements set to `value`.
    convenience init(count: Int, repeating value: Float) {
        self.init(uninitializedCount: count)
        fill(value)
    }

    /// Sets every element to `value`, on every core for large buffers.
    func fill(_ value: Float) {
        let p = pointer
        Parallel.forSpans(count, grain: 1 << 18) { r in
            if value == 0 {
                memset(p + r.lowerBound, 0, r.count * MemoryLayout<Float>.stride)
            } else {
                (p + r.lowerBound).update(repeating: value, count: r.count)
            }
        }
    }

    /// A copy of another storage.
    convenience init(copying other: TensorStorage) {
        self.init(uninitializedCount: other.count)
        pointer.update(from: other.pointer, count: count)
    }

    deinit { BufferCache.shared.give(pointer, count: count) }
}

/// Keeps released tensor buffers, keyed by element count, for reuse.
///
/// The cache holds at most ``limitBytes`` (default 2 GiB); beyond that released buffers are freed. Call ``trim()`` to
/// return everything cached to the system.
public final class BufferCache: Sendable {
    public static let shared = BufferCache()

    private struct State {
        var free: [Int: [UInt]] = [:]  // addresses, by element count
        var cachedBytes = 0
        var limitBytes = 2 << 30
    }
    private let state = Locked(State())

    /// The most bytes kept for reuse.
    public var limitBytes: Int {
        get { state.withLock { $0.limitBytes } }
        set {
            state.withLock { $0.limitBytes = max(0, newValue) }
            if cachedBytes > newValue { trim() }
        }
    }

    /// The bytes currently cached.
    public var cachedBytes: Int { state.withLock { $0.cachedBytes } }

    /// Frees every cached buffer.
    public func trim() {
        let buffers = state.withLock { s -> [UInt] in
            let all = s.free.values.flatMap { $0 }
            s.free = [:]
            s.cachedBytes = 0
            return all
        }
        for b in buffers { UnsafeMutableRawPointer(bitPattern: b)!.deallocate() }
    }

    /// The elements actually allocated for a request of `count`: exact below 16K elements, else rounded up to one of
    /// eight sizes per doubling (at most 12.5% more). Tensors that grow a little at each step — a KV cache during
    /// generation — then reuse the buffers of the steps before, instead of leaving one cached buffer per length.
    static func sizeClass(_ count: Int) -> Int {
        guard count > 1 << 14 else { return max(count, 1) }
        let top = Int.bitWidth - count.leadingZeroBitCount - 1  // 2^top <= count < 2^(top+1)
        let step = 1 << (top - 3)
        let (rounded, overflow) = count.addingReportingOverflow(step - 1)
        return overflow ? count : rounded / step * step
    }

    /// A buffer from the cache or a fresh one, or nil when the system has no memory for it.
    func takeIfAvailable(count: Int) -> UnsafeMutablePointer<Float>? {
        let size = Self.sizeClass(count)
        let bytes = size * MemoryLayout<Float>.stride
        if let reused = state.withLock({ s -> UInt? in
            guard let p = s.free[size]?.popLast() else { return nil }
            s.cachedBytes -= bytes
            return p
        }), let raw = UnsafeMutableRawPointer(bitPattern: reused) {
            return raw.bindMemory(to: Float.self, capacity: size)
        }
        // posix_memalign reports failure where allocate(byteCount:alignment:) would trap; free() (which deallocate()
        // calls on Linux) releases either.
        var raw: UnsafeMutableRawPointer?
        let alignment = bytes >= 4 * (2 << 20) ? 2 << 20 : 64
        guard posix_memalign(&raw, alignment, bytes) == 0, let raw else { return nil }
        #if os(Linux)
            if alignment > 64 { _ = madvise(raw, bytes, MADV_HUGEPAGE) }
        #endif
        return raw.bindMemory(to: Float.self, capacity: size)
    }

    /// A buffer for sizes that follow from tensors that already exist (scratch space, copies): when even that fails the
    /// process is out of memory, and Swift's allocator stops it with a message.
    func take(count: Int) -> UnsafeMutablePointer<Float> {
        if let p = takeIfAvailable(count: count) { return p }
        let size = Self.sizeClass(count)
        let raw = UnsafeMutableRawPointer.allocate(byteCount: size * MemoryLayout<Float>.stride, alignment: 64)
        return raw.bindMemory(to: Float.self, capacity: size)
    }

    func give(_ pointer: UnsafeMutablePointer<Float>, count: Int) {
        let size = Self.sizeClass(count)
        let bytes = size * MemoryLayout<Float>.stride
        let raw = UnsafeMutableRawPointer(pointer), address = UInt(bitPattern: raw)
        // Tiny buffers are cheap to allocate; keep the cache for the ones that fault pages.
        let kept =
            bytes >= 4096
            && state.withLock { s -> Bool in
                guard s.cachedBytes + bytes <= s.limitBytes else { return false }
                s.free[size, default: []].append(address)
                s.cachedBytes += bytes
                return true
            }
        if !kept { raw.deallocate() }
    }
}
