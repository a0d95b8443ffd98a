import Foundation

/// Memory handed out in order from blocks of whole 2 MB pages, asked to be backed by huge pages (`MADV_HUGEPAGE`,
/// granted where transparent huge pages are enabled for it): for data a decoding step streams through once per step —
/// a quantized model's weights, a server's adapter copies — with the rest of the step evicting the caches and the
/// page-table entries in between. In 4 KB pages each such pass walks the page tables again every 4 KB (in a VM, in
/// two levels) and the hardware prefetchers stop at every page boundary. Measured (Benchmarks/README.md, stop 48):
/// SmolLM2-135M Q4_1's one-row decoding step 6-22% faster with its interleaved weights in these blocks. A block is
/// freed when the last piece taken from it is released.
public final class PageBlocks: @unchecked Sendable {
    /// One block: `capacity` bytes from `base`, 2 MB-aligned, whole 2 MB pages.
    public final class Block: @unchecked Sendable {
        public static let page = 2 << 20
        public let base: UnsafeMutableRawPointer
        public let capacity: Int
        public private(set) var used = 0

        /// A block of at least `minimum` bytes (whole pages) whose first `bytes` are taken (at `base`).
        init(first bytes: Int, minimum: Int) {
            capacity = (max(bytes, minimum) + Self.page - 1) / Self.page * Self.page
            used = bytes
            var raw: UnsafeMutableRawPointer?
            if posix_memalign(&raw, Self.page, capacity) == 0, let raw {
                base = raw
                #if os(Linux)
                    _ = madvise(raw, capacity, MADV_HUGEPAGE)
                #endif
            } else {
                // No aligned block: an ordinary allocation (which stops the process, as any, when memory is out).
                base = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
            }
        }

        /// `bytes` more of this block (64-byte aligned), or nil when it has no room.
        func take(_ bytes: Int) -> UnsafeMutableRawPointer? {
            let start = (used + 63) / 64 * 64
            guard bytes <= capacity - start else { return nil }
            used = start + bytes
            return base + start
        }

        deinit { free(base) }
    }

    /// The smallest block.
    public let blockSize: Int
    /// The block the next piece comes from, while a piece taken from it lives (the allocator keeps no block alive).
    private weak var current: Block?
    private let lock = NSLock()

    /// Blocks of at least `blockSize` bytes (rounded up to whole 2 MB pages).
    public init(blockSize: Int) {
        self.blockSize = max(blockSize, 1)
    }

    /// `bytes` of memory (64-byte aligned) and the block that holds it: the memory lives as long as the block does.
    public func take(_ bytes: Int) -> (UnsafeMutableRawPointer, Block) {
        lock.withLock {
            let bytes = max(bytes, 1)
            if let current, let p = current.take(bytes) { return (p, current) }
            let fresh = Block(first: bytes, minimum: blockSize)
            current = fresh
            return (fresh.base, fresh)
        }
    }

    /// Starts a new block for the next piece (the old one is freed when its pieces are).
    public func startAfresh() {
        lock.withLock { current = nil }
    }

    /// The quantized weights' blocks (32 MB at least: a small model's layers share a few).
    static let weights = PageBlocks(blockSize: 32 << 20)
}
