import Foundation

/// The processes of a data-parallel run: each holds the same model, computes gradients on its own share of every
/// global batch, and takes the same optimizer step after the gradients are summed across all of them.
///
/// Reins needs no transport of its own: the `ReinsDistributed` product gives one over MPI (`MPIGroup`), and a group of
/// threads in one process (``ThreadGroup``) serves tests. Every process must call the collective operations below in
/// the same order with the same sizes.
public protocol DataParallelGroup: AnyObject {
    /// This process's index, `0..<size`.
    var rank: Int { get }
    /// The number of processes.
    var size: Int { get }
    /// Sums `count` floats at `values` element-wise across the group, in place — now or by ``finishSums()`` (a
    /// transport may return before the sum is done); the caller keeps the memory alive and untouched until then.
    func startSum(_ values: UnsafeMutablePointer<Float>, count: Int) throws
    /// Waits until every sum started since the last call is complete.
    func finishSums() throws
    /// Every process's `values`, in rank order (the arrays may differ in length).
    func gather(_ values: [Double]) throws -> [[Double]]
}

extension DataParallelGroup {
    /// The element-wise sum of every process's `values` (all of one length), on every process.
    public func sum(_ values: [Double]) throws -> [Double] {
        let all = try gather(values)
        guard all.allSatisfy({ $0.count == values.count }) else {
            throw TensorError.shapeMismatch(
                operation: "DataParallelGroup.sum", detail: "lengths \(all.map(\.count)) differ across ranks")
        }
        // Rank order, on every process: the same bits everywhere.
        return values.indices.map { i in all.reduce(0) { $0 + $1[i] } }
    }
}

/// Sums the gradients of a fixed list of trainable parameters across a ``DataParallelGroup``, in place in their
/// gradient buffers, in buckets (consecutive parameters, ~4 MB each, last-registered first since backward reaches them
/// first): a bucket's sums start as soon as backward has finished every gradient in it and every earlier bucket has
/// started, so buckets start in the same order on every process and communication overlaps the rest of the pass.
///
/// The pass must have been seeded with 1 / (micro-batches × processes) so that the sums are the averages. A parameter
/// this process did not reach sums zeros; one that no process reached keeps no gradient (as in a one-process run), told
/// by one more sum of a flag per parameter.
public final class GradientReducer {
    public let group: any DataParallelGroup
    private let parameters: [Parameter]
    /// Parameter indices of each bucket, in starting order.
    private let buckets: [[Int]]
    private var bucketOf: [ObjectIdentifier: Int] = [:]
    private var waiting: [Int] = []
    private var started = 0
    /// Per parameter: 1 when this process's pass reached it (then, summed, how many processes did).
    private let reached: UnsafeMutablePointer<Float>
    private var pendingError: Error?

    /// - Parameter bucketElements: the gradient elements after which a bucket closes.
    public init(parameters: [Parameter], group: any DataParallelGroup, bucketElements: Int = 1 << 20) {
        self.group = group
        self.parameters = parameters
        var buckets: [[Int]] = [], current: [Int] = [], filled = 0
        for i in parameters.indices.reversed() {
            current.append(i)
            filled += parameters[i].value.count
            if filled >= bucketElements {
                buckets.append(current)
                (current, filled) = ([], 0)
            }
        }
        if !current.isEmpty { buckets.append(current) }
        self.buckets = buckets
        reached = .allocate(capacity: max(parameters.count, 1))
        reached.initialize(repeating: 0, count: max(parameters.count, 1))
    }

    deinit { reached.deallocate() }

    /// Runs `body` (the last backward pass before an update) with its finished gradients flowing into the sums, then
    /// completes them.
    public func reduce(during body: () throws -> Void) throws {
        bucketOf = [:]
        waiting = buckets.map(\.count)
        started = 0
        pendingError = nil
        for (b, members) in buckets.enumerated() {
            for i in members { if let id = parameters[i].value.leafIdentity { bucketOf[id] = b } }
        }
        let observer = LeafGradientObserver { [unowned self] leaf in
            guard let b = self.bucketOf.removeValue(forKey: leaf) else { return }
            self.waiting[b] -= 1
            while self.started < self.buckets.count && self.waiting[self.started] == 0 && self.pendingError == nil {
                do { try self.startBucket(self.started) } catch { self.pendingError = error }
            }
        }
        try Autograd.$leafGradients.withValue(observer) { try body() }
        if let error = pendingError { throw error }
        // Parameters the pass did not reach: their buckets start now, in order.
        while started < buckets.count { try startBucket(started) }
        try group.startSum(reached, count: parameters.count)
        try group.finishSums()
        for (i, p) in parameters.enumerated() where reached[i] == 0 { p.zeroGradient() }
    }

    private func startBucket(_ b: Int) throws {
        started += 1
        for i in buckets[b] {
            guard let leaf = parameters[i].value.node else { continue }
            reached[i] = leaf.grad == nil ? 0 : 1
            // A gradient this process did not reach adds zeros (the buffer is made for the sum).
            try group.startSum(leaf.gradientPointer(), count: parameters[i].value.count)
        }
    }
}

/// A ``DataParallelGroup`` of threads in one process, one per rank, for tests and for checking a data-parallel run
/// against a one-process one without a transport: each call blocks until every rank has made it. Sums add the ranks'
/// values in rank order.
public enum ThreadGroup {
    /// The shared state of one group.
    final class Shared: @unchecked Sendable {
        let size: Int
        let condition = NSCondition()
        var arrived = 0
        var generation = 0
        var slots: [[Double]]
        var floatSlots: [[(pointer: UnsafeMutablePointer<Float>, count: Int)]]
        /// Blocks (with `condition` locked) until every rank has called it.
        func arriveAndWait() {
            let mine = generation
            arrived += 1
            if arrived == size {
                arrived = 0
                generation += 1
                condition.broadcast()
            } else {
                while generation == mine { condition.wait() }
            }
        }

        init(size: Int) {
            self.size = size
            slots = Array(repeating: [], count: size)
            floatSlots = Array(repeating: [], count: size)
        }
    }

    /// The ranks of a group of `size`: hand member `r` to the thread that plays rank `r`.
    public static func members(_ size: Int) -> [Member] {
        let shared = Shared(size: size)
        return (0..<size).map { Member(rank: $0, shared: shared) }
    }

    /// One rank of a ``ThreadGroup``.
    public final class Member: DataParallelGroup, @unchecked Sendable {
        public let rank: Int
        public var size: Int { shared.size }
        let shared: Shared
        private var started: [(pointer: UnsafeMutablePointer<Float>, count: Int)] = []

        init(rank: Int, shared: Shared) { (self.rank, self.shared) = (rank, shared) }

        public func startSum(_ values: UnsafeMutablePointer<Float>, count: Int) throws {
            started.append((values, count))
        }

        public func finishSums() throws {
            // Every rank's buffers, summed in rank order into every rank's copy.
            let mine = started
            started = []
            let all = rendezvous { s in s.floatSlots[rank] = mine } read: { s in s.floatSlots }
            guard all.allSatisfy({ $0.map(\.count) == mine.map(\.count) }) else {
                throw TensorError.shapeMismatch(operation: "ThreadGroup.finishSums", detail: "ranks started different sums")
            }
            var sums: [[Float]] = []
            for (k, b) in mine.enumerated() {
                var total = [Float](repeating: 0, count: b.count)
                for r in 0..<size {
                    let src = all[r][k].pointer
                    for j in 0..<b.count { total[j] += src[j] }
                }
                sums.append(total)
            }
            // Everyone has read every buffer before anyone overwrites its own.
            _ = rendezvous { _ in } read: { _ in 0 }
            for (b, total) in zip(mine, sums) { b.pointer.update(from: total, count: b.count) }
        }

        public func gather(_ values: [Double]) throws -> [[Double]] {
            rendezvous { s in s.slots[rank] = values } read: { s in s.slots }
        }

        /// Every rank writes its slot, waits for all, reads, and waits again until all have read (so that no rank
        /// overwrites its slot for the next call while another still reads this one).
        private func rendezvous<R>(write: (Shared) -> Void, read: (Shared) -> R) -> R {
            let s = shared
            s.condition.lock()
            defer { s.condition.unlock() }
            write(s)
            s.arriveAndWait()
            let result = read(s)
            s.arriveAndWait()
            return result
        }
    }
}
