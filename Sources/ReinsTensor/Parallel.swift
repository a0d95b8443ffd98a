import COpenBLAS
import CReinsKernels
import Dispatch
import Foundation
import Synchronization

/// How ReinsTensor spreads work over cores.
///
/// Independent pieces (attention heads, row blocks) run on `DispatchQueue.concurrentPerform`. While they run,
/// OpenBLAS is held to one thread so that our threads and its threads never fan out at the same time.
public enum Parallel {
    /// The number of worker threads ReinsTensor uses: the active processor count, or `REINS_THREADS` when that is set
    /// to a smaller positive number (for example one per process when several ranks of a data-parallel run share a
    /// machine; OpenBLAS reads its own `OPENBLAS_NUM_THREADS`).
    public static let threadCount: Int = {
        let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)
        guard let asked = ProcessInfo.processInfo.environment["REINS_THREADS"].flatMap({ Int($0) }), asked > 0 else {
            return cores
        }
        return min(asked, cores)
    }()

    /// For a process that shares its cores with other busy threads (a server's network threads, its clients): a
    /// parallel region's caller then runs the chunks no worker has started within ~50 µs itself, instead of waiting
    /// for a worker that is not running. Off by default: a training or benchmark process owns its cores, and there the
    /// plain hand-off is faster (measured: the demo's full fine-tuning 91 s against 103 s).
    public static var sharesCores: Bool {
        get { SpinPool.shared.stealing.load(ordering: .relaxed) }
        set { SpinPool.shared.stealing.store(newValue, ordering: .relaxed) }
    }

    /// Runs `body(chunk)` for `chunk` in `0..<chunks`, concurrently when there is more than one chunk.
    ///
    /// OpenBLAS calls inside `body` run single-threaded; the previous OpenBLAS thread count is restored afterwards.
    public static func forEach(_ chunks: Int, _ body: (Int) -> Void) { forEach(chunks, eager: false, body) }

    /// `eager`: the chunks are interchangeable (each takes shared work until none is left), so the caller, done with
    /// its own, runs every chunk no worker has started yet at once: a worker that was asleep is not waited for.
    /// `steal: false`: the caller never runs a chunk left to a worker that is slow to start (``sharesCores``), for
    /// chunks so long that a late worker costs less than doing its chunk after one's own.
    static func forEach(_ chunks: Int, eager: Bool, steal: Bool = true, _ body: (Int) -> Void) {
        if chunks <= 1 || threadCount == 1 || rk_thread_serial() != 0 {
            for c in 0..<chunks { body(c) }
            return
        }
        holdBLASToOneThread()
        defer { releaseBLAS() }
        // The kernels' instruction set is chosen per thread (rk_isa_select): the workers use the caller's.
        let isa = rk_isa_active(), best = rk_isa_detected()
        // The chunks touch disjoint memory by contract; Dispatch cannot see that, hence the unchecked box.
        withoutActuallyEscaping(body) { work in
            let run: (Int) -> Void = { c in
                if isa == best { work(c); return }
                let previous = rk_isa_active()
                rk_isa_select(isa)
                work(c)
                rk_isa_select(previous)
            }
            if !SpinPool.shared.run(chunks, eager: eager, steal: steal, run) {
                // Busy (a region inside a region, or regions from several threads at once): Dispatch's pool.
                let box = UncheckedBox(run)
                DispatchQueue.concurrentPerform(iterations: chunks) { c in box.value(c) }
            }
        }
    }

    /// Runs `body` with every parallel region it starts on the calling thread alone, for work that is itself one of
    /// several lanes running side by side (``lanes(_:_:)``): each lane's regions then need no other core.
    public static func serially<R>(_ body: () throws -> R) rethrows -> R {
        rk_thread_serial_enter()
        defer { rk_thread_serial_leave() }
        return try body()
    }

    /// Whether the calling thread is inside ``serially(_:)``.
    public static var isSerial: Bool { rk_thread_serial() != 0 }

    /// Runs `body(lane)` for `lane` in `0..<lanes`, one lane per thread, each lane's own parallel regions on its
    /// thread alone (``serially(_:)``): independent pieces of work (a batch's rows cut in groups) that then never wait
    /// for each other's cores — a region's hand-off between two cores costs 0.4-1.6 µs in this project's VMs, and
    /// each region's outputs cross between the cores' caches. More lanes than ``threadCount`` (or lanes started while
    /// the pool runs another region) run on Dispatch's threads instead, as any such region does.
    public static func lanes(_ lanes: Int, _ body: (Int) -> Void) {
        // A lane is a whole share of the work: a worker slow to start is waited for rather than its lane run after
        // the caller's own.
        forEach(lanes, eager: false, steal: false) { lane in serially { body(lane) } }
    }

    /// Runs `body` with OpenBLAS held to one thread (nesting with the parallel regions' own holds).
    ///
    /// OpenBLAS may pick other kernels, and so round differently, at another thread count; a process whose thread
    /// count changes under it (for example while other work runs parallel regions) can hold it to one thread to get
    /// the same bits every time.
    public static func withSingleThreadedBLAS<R>(_ body: () throws -> R) rethrows -> R {
        holdBLASToOneThread()
        defer { releaseBLAS() }
        return try body()
    }

    /// Parallel regions may overlap (callers on several threads): the first one in saves OpenBLAS's thread count and
    /// sets it to one, the last one out restores it.
    private static let blasHold = Locked<(depth: Int, saved: Int32)>((0, 1))

    private static func holdBLASToOneThread() {
        blasHold.withLock { hold in
            if hold.depth == 0 {
                hold.saved = openblas_get_num_threads()
                openblas_set_num_threads(1)
            }
            hold.depth += 1
        }
    }

    private static func releaseBLAS() {
        blasHold.withLock { hold in
            hold.depth -= 1
            if hold.depth == 0 { openblas_set_num_threads(hold.saved) }
        }
    }

    /// Runs `body` over `0..<count` cut into one contiguous range per thread when there are at least `grain` items per
    /// range (else as one range): for elementwise passes over big buffers, which one core cannot saturate memory with.
    public static func forSpans(_ count: Int, grain: Int = spanGrain, _ body: (Range<Int>) -> Void) {
        forRanges(count, minimum: grain) { range, _ in body(range) }
    }

    /// Elements per thread below which a thread wake-up costs more than it saves (~32K).
    public static let spanGrain = 1 << 15

    /// ``spanGrain`` in rows of `width` elements (at least one row): the grain for passes cut by rows.
    public static func rowGrain(width: Int) -> Int { max(1, spanGrain / max(width, 1)) }

    /// Runs `body` over `0..<count` in pieces of `piece` items that the threads take one after another as they finish
    /// the last, instead of one fixed share each: a thread that starts late (a worker just woken, a core the host
    /// gave to something else for a moment) takes fewer pieces rather than holding up the region, and items of
    /// unequal cost (batch rows with adapters of different sizes) even out.
    /// The number of pieces is rounded up to a multiple of the thread count (each piece a little smaller than
    /// `piece`), so that pieces of equal cost end evenly: 3 pieces on 2 threads would leave one idle for a third.
    public static func forPieces(_ count: Int, piece: Int, _ body: (Range<Int>) -> Void) {
        var pieces = (count + max(1, piece) - 1) / max(1, piece)
        guard pieces > 1, threadCount > 1 else {
            if count > 0 { body(0..<count) }
            return
        }
        pieces = min(count, (pieces + threadCount - 1) / threadCount * threadCount)
        let piece = (count + pieces - 1) / pieces
        pieces = (count + piece - 1) / piece
        let next = Atomic<Int>(0)
        forEach(min(threadCount, pieces), eager: true) { _ in
            while true {
                let p = next.wrappingAdd(1, ordering: .relaxed).oldValue
                guard p < pieces else { return }
                body((p * piece)..<min(count, (p + 1) * piece))
            }
        }
    }

    /// Splits `0..<count` into at most `threadCount` contiguous ranges of at least `minimum` items and runs
    /// `body(range, chunkIndex)` for each, concurrently.
    public static func forRanges(_ count: Int, minimum: Int = 1, _ body: (Range<Int>, Int) -> Void) {
        let chunks = max(1, min(threadCount, count / max(minimum, 1)))
        let base = count / chunks, extra = count % chunks
        forEach(chunks) { c in
            let start = c * base + min(c, extra)
            let end = start + base + (c < extra ? 1 : 0)
            body(start..<end, c)
        }
    }
}

/// Carries a value across a concurrency boundary the compiler cannot verify (disjoint-memory parallel loops).
struct UncheckedBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// Persistent worker threads for parallel regions. Decoding runs hundreds of short regions per token (each layer's
/// products, norms, attention); waking a sleeping thread for each costs tens of microseconds in a VM, more than the
/// work. A worker here spins on the next region for a while (``spinLimit`` relax instructions, ~50 µs) before it
/// sleeps, so back-to-back regions start at once. The caller runs chunk 0 itself; worker `i` runs chunk `i + 1`.
final class SpinPool: @unchecked Sendable {
    static let shared = SpinPool(workers: Parallel.threadCount - 1)
    static let spinLimit = 20_000

    private let workers: Int
    private let generation = Atomic<Int>(0)
    private let pending = Atomic<Int>(0)
    private let sleepers = Atomic<Int>(0)
    private let wake = DispatchSemaphore(value: 0)
    private let busy = Atomic<Bool>(false)
    /// Whether the caller runs chunks no worker has taken (``Parallel/sharesCores``).
    let stealing = Atomic<Bool>(false)
    /// Bit c set: chunk c has been taken (by its worker or by the caller) or does not exist; chunks from 64 on are always their workers'.
    private let takenBits = Atomic<UInt64>(0)
    // Written by the caller before it publishes a generation (release), read by workers after they see it (acquire).
    private var job: ((Int) -> Void)?
    private var chunks = 0

    init(workers: Int) {
        self.workers = max(0, workers)
        for i in 0..<self.workers {
            let thread = Thread { [unowned self] in self.work(index: i) }
            thread.name = "reins-worker-\(i + 1)"
            thread.start()
        }
    }

    /// Runs `body(c)` for `c` in `0..<chunks` on the caller and the workers; false (nothing run) when the pool is
    /// already running a region or has too few workers.
    func run(_ chunks: Int, eager: Bool = false, steal: Bool = true, _ body: (Int) -> Void) -> Bool {
        guard chunks - 1 <= workers, busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged
        else { return false }
        defer { busy.store(false, ordering: .releasing) }
        withoutActuallyEscaping(body) { work in
            job = work
            self.chunks = chunks
            pending.store(chunks - 1, ordering: .relaxed)
            // Chunk c (1...chunks-1) is taken by whoever first finds `taken[c]` false: its worker, or the caller
            // when it steals (``Parallel/sharesCores``).
            // Bits of chunks that do not exist start set, so that a worker decides from the bits alone (it never
            // reads `chunks`, which the caller may be rewriting for the next region when it did not wait for it).
            // Stored releasing: a worker still on the previous generation (its chunk was stolen) can take its chunk of
            // this region from these bits, and its acquiring `take` must then see `job` as written above.
            takenBits.store(chunks >= 64 ? 1 : ~((UInt64(1) << UInt64(chunks)) - 1) | 1, ordering: .releasing)
            generation.add(1, ordering: .releasing)
            for _ in 0..<sleepers.load(ordering: .acquiring) { wake.signal() }
            work(0)
            if eager {
                // Interchangeable chunks: the ones no worker has taken yet are run here now (they find the shared
                // work done and return at once) rather than waited for.
                while let c = claim() {
                    work(c)
                    pending.subtract(1, ordering: .releasing)
                }
            }
            if stealing.load(ordering: .relaxed) {
                // A chunk not taken ~50 µs after the region started belongs to a worker that is not running: run it
                // (unless the region's chunks are too long for that); after ~5 ms of waiting, the core is yielded.
                var spins = 0
                while pending.load(ordering: .acquiring) > 0 {
                    spins += 1
                    if steal, spins >= Self.spinLimit, let c = claim() {
                        work(c)
                        pending.subtract(1, ordering: .releasing)
                    } else if spins < 100 * Self.spinLimit {
                        rk_cpu_relax()
                    } else {
                        sched_yield()
                    }
                }
            } else {
                while pending.load(ordering: .acquiring) > 0 { rk_cpu_relax() }
            }
            job = nil
        }
        return true
    }

    /// Takes chunk `c` (below 64); false when someone already has, or it does not exist in this region.
    private func take(_ c: Int) -> Bool {
        let bit = UInt64(1) << UInt64(c)
        return takenBits.bitwiseOr(bit, ordering: .acquiringAndReleasing).oldValue & bit == 0
    }

    /// The first chunk nobody has taken (below 64), or nil.
    private func claim() -> Int? {
        for c in 1..<min(max(chunks, 1), 64) where take(c) { return c }
        return nil
    }

    private func work(index: Int) {
        var seen = 0
        while true {
            var spins = 0
            while generation.load(ordering: .acquiring) == seen {
                spins += 1
                if spins < Self.spinLimit { rk_cpu_relax(); continue }
                // Sleep until the next region; checked again after announcing it, so a region published meanwhile is
                // never missed (an extra signal only makes a later wait return early, and the loop checks again).
                sleepers.add(1, ordering: .sequentiallyConsistent)
                if generation.load(ordering: .sequentiallyConsistent) == seen { wake.wait() }
                sleepers.subtract(1, ordering: .sequentiallyConsistent)
                spins = 0
            }
            seen = generation.load(ordering: .acquiring)
            let c = index + 1
            if c < 64 ? take(c) : c < chunks {
                invoke(c)
                pending.subtract(1, ordering: .releasing)
            }
        }
    }

    /// Runs the current region's chunk `c`. A function of its own so that the worker's reference to the region's
    /// closure ends when it returns, before the caller is told the chunk is done (the caller's
    /// `withoutActuallyEscaping` checks that no reference outlives the region).
    @inline(never)
    private func invoke(_ c: Int) {
        job?(c)
    }
}

/// One optional value per lane of ``Parallel/lanes(_:_:)`` (``Parallel/threadCount`` slots): lanes that run side by
/// side each read and write their own slot only, so a per-object cache needs no lock. Outside lanes, slot 0.
public final class PerLane<Value: AnyObject>: @unchecked Sendable {
    private let slots: UnsafeMutablePointer<Value?>
    public let count = Parallel.threadCount

    public init() {
        slots = .allocate(capacity: count)
        slots.initialize(repeating: nil, count: count)
    }

    deinit {
        slots.deinitialize(count: count)
        slots.deallocate()
    }

    /// The value of lane `lane` (nil for a lane beyond the slots: such a lane keeps nothing).
    public subscript(lane: Int) -> Value? {
        get { lane >= 0 && lane < count ? slots[lane] : nil }
        set { if lane >= 0 && lane < count { slots[lane] = newValue } }
    }

    /// Empties every slot (while no lanes run).
    public func clear() {
        for lane in 0..<count { slots[lane] = nil }
    }
}
