import Foundation
import Dispatch
import CReinsKernels
import Testing
@testable import ReinsTensor
import ReinsTestSupport

/// Every kernel against its scalar `_ref` oracle, on awkward shapes, under each instruction set this CPU has.
/// Serialized: the instruction set is process-wide state.
@Suite(.serialized)
struct KernelTests: PerInstructionSet {
    @Test func instructionSetChoiceIsPerThreadAndReachesParallelWorkers() throws {
        let best = rk_isa_detected()
        guard best > 0 else { return }  // only the scalar kernels exist here: nothing to choose between
        with(0) {
            #expect(rk_isa_active() == 0)
            // Another thread keeps the best kernels (tests running meanwhile are not switched under their feet)...
            let seen = Locked<Int32>(-1), done = DispatchSemaphore(value: 0)
            let other = Thread {
                seen.withLock { $0 = rk_isa_active() }; done.signal()
            }
            other.start()
            done.wait()
            #expect(seen.withLock { $0 } == best)
            // ...while the workers of this thread's parallel regions use its choice.
            let chunks = Locked<[Int32]>([])
            Parallel.forEach(8) { _ in
                let isa = rk_isa_active(); chunks.withLock { $0.append(isa) }
            }
            #expect(chunks.withLock { $0 } == [Int32](repeating: 0, count: 8))
        }
        #expect(rk_isa_active() == best)
    }

    /// OpenBLAS runs kernels of the CPU's level: on a CPU with AVX2 (or AVX-512) its core is one with AVX2 kernels,
    /// even when the OpenBLAS release does not know the CPU's model (0.3.21 fell back to SSE3 "Prescott" on a Xeon of
    /// model 207, and sgemm ran at a quarter of its speed). A core the user forced through OPENBLAS_CORETYPE is kept.
    @Test func openBLASRunsKernelsOfThisCPUsLevel() {
        let core = Kernels.blasCore.lowercased()
        let userForced = Kernels.blasCoreFallback == nil && ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] != nil
        #if arch(x86_64)
            if !userForced && rk_isa_detected() >= Int32(RK_ISA_AVX2.rawValue) {
                #expect(["haswell", "zen", "excavator", "skylakex", "cooperlake", "sapphirerapids"].contains(core),
                        "OpenBLAS core \(core)")
            }
        #endif
        if let fallback = Kernels.blasCoreFallback { #expect(fallback.lowercased() != core) }
    }

    /// Pieces taken one after another by the threads: every item is run exactly once, whatever the count and the
    /// piece size, with the workers spinning or asleep (the caller then runs the chunks no worker has started) and
    /// with a region already running on the pool (Dispatch's threads take over).
    @Test func piecesCoverEveryItemOnce() throws {
        for (count, piece) in [(0, 4), (1, 1), (7, 3), (13, 1), (100, 7), (1000, 32), (64, 64), (65, 64)] {
            for pause in [false, true] {
                if pause { usleep(2000) }  // past the workers' spin: they sleep, the region starts without them
                let seen = Locked<[Int]>(Array(repeating: 0, count: count))
                Parallel.forPieces(count, piece: piece) { r in
                    #expect(r.count <= piece && !r.isEmpty)
                    seen.withLock { for i in r { $0[i] += 1 } }
                }
                #expect(seen.withLock { $0 } == Array(repeating: 1, count: count), "count \(count), piece \(piece)")
            }
        }
        // Nested in another region: the pool is busy, so the inner one runs on Dispatch's threads.
        let total = Locked(0)
        Parallel.forEach(2) { _ in
            Parallel.forPieces(50, piece: 3) { r in total.withLock { $0 += r.count } }
        }
        #expect(total.withLock { $0 } == 100)
    }

    /// Lanes: every lane runs once, each on one thread, and every region a lane starts runs on that lane's thread
    /// alone (its pieces all covered); out of the lanes, the thread is no longer serial. More lanes than threads run in
    /// turn. Each lane's slot of a `PerLane` is its own.
    @Test func lanesRunTheirRegionsOnTheirOwnThread() throws {
        for lanes in [1, 2, Parallel.threadCount + 1] {
            let seen = Locked<[Int: (thread: ObjectIdentifier, inner: Set<ObjectIdentifier>, items: Int)]>([:])
            let slots = PerLane<NSNumber>()
            Parallel.lanes(lanes) { lane in
                #expect(Parallel.isSerial)
                slots[lane] = NSNumber(value: lane)
                let me = ObjectIdentifier(Thread.current)
                let inner = Locked<(Set<ObjectIdentifier>, Int)>(([], 0))
                Parallel.forPieces(40, piece: 3) { r in
                    inner.withLock {
                        _ = $0.0.insert(ObjectIdentifier(Thread.current))
                        $0.1 += r.count
                    }
                }
                Parallel.forEach(5) { _ in inner.withLock { _ = $0.0.insert(ObjectIdentifier(Thread.current)) } }
                let (threads, items) = inner.withLock { $0 }
                seen.withLock { $0[lane] = (me, threads, items) }
            }
            let runs = seen.withLock { $0 }
            #expect(runs.keys.sorted() == Array(0..<lanes), "\(lanes) lanes")
            for (lane, run) in runs {
                #expect(run.inner == [run.thread] && run.items == 40, "lane \(lane) of \(lanes)")
                #expect(slots[lane]?.intValue == (lane < slots.count ? lane : nil))
            }
            #expect(!Parallel.isSerial)
        }
        #expect(PerLane<NSNumber>().count == Parallel.threadCount)
        let slots = PerLane<NSNumber>()
        slots[-1] = 1
        slots[slots.count] = 1
        #expect(slots[-1] == nil && slots[slots.count] == nil)
        slots[0] = 7
        slots.clear()
        #expect(slots[0] == nil)
    }

    @Test(arguments: instructionSets)
    func linearMatchesReference(isa: Int32) {
        with(isa) {
            for (N, C, OC) in [(1, 1, 1), (1, 33, 17), (1, 577, 45), (1, 47, 7), (1, 64, 9), (3, 7, 5), (17, 33, 9), (2, 70, 131)] {  // N = 1: a matrix-vector product
                for wt: Int32 in [0, 1] {
                    let x = randomFloats(N * C, seed: 1), w = randomFloats(OC * C, seed: 2),
                        b = randomFloats(OC, seed: 3)
                    let g = randomFloats(N * OC, seed: 4)
                    var y = [Float](repeating: 0, count: N * OC), yr = y
                    rk_linear_forward(&y, x, w, b, Int32(N), Int32(C), Int32(OC), wt)
                    rk_linear_forward_ref(&yr, x, w, b, Int32(N), Int32(C), Int32(OC), wt)
                    expectClose(y, yr, "linear forward \(N)x\(C)->\(OC) wt=\(wt)")
                    // Start from nonzero buffers: backward must add, not overwrite.
                    var dx = randomFloats(N * C, seed: 5), dw = randomFloats(OC * C, seed: 6),
                        db = randomFloats(OC, seed: 7)
                    var dxr = dx, dwr = dw, dbr = db
                    rk_linear_backward(&dx, &dw, &db, g, x, w, Int32(N), Int32(C), Int32(OC), wt)
                    rk_linear_backward_ref(&dxr, &dwr, &dbr, g, x, w, Int32(N), Int32(C), Int32(OC), wt)
                    expectClose(dx, dxr, "linear dx")
                    expectClose(dw, dwr, "linear dw")
                    expectClose(db, dbr, "linear db")
                    // A frozen weight: NULL dW and db, the same dx.
                    var dx2 = [Float](repeating: 0, count: N * C), dx2r = dx2
                    rk_linear_backward(&dx2, nil, nil, g, x, w, Int32(N), Int32(C), Int32(OC), wt)
                    rk_linear_backward_ref(&dx2r, nil, nil, g, x, w, Int32(N), Int32(C), Int32(OC), wt)
                    expectClose(dx2, dx2r, "linear dx with frozen weight")
                }
            }
        }
    }

    @Test(arguments: instructionSets)
    func geluMatchesReference(isa: Int32) {
        with(isa) {
            for n in [1, 7, 8, 9, 31, 1001] {
                for approx: Int32 in [0, 1] {
                    let x = randomFloats(n, seed: UInt64(n), scale: 9), g = randomFloats(n, seed: 99)
                    var y = [Float](repeating: 0, count: n), yr = y
                    rk_gelu_forward(&y, x, n, approx)
                    rk_gelu_forward_ref(&yr, x, n, approx)
                    expectClose(y, yr, atol: 2e-6, rtol: 2e-6, "gelu forward n=\(n) approx=\(approx)")
                    var dx = [Float](repeating: 0.5, count: n), dxr = dx
                    rk_gelu_backward(&dx, g, x, n, approx)
                    rk_gelu_backward_ref(&dxr, g, x, n, approx)
                    expectClose(dx, dxr, atol: 2e-6, rtol: 2e-6, "gelu backward n=\(n) approx=\(approx)")
                }
            }
            for (N, C) in [(1, 1), (3, 7), (4, 37), (2, 131)] {
                for approx: Int32 in [0, 1] {
                    let x = randomFloats(N * C, seed: 11, scale: 4), b = randomFloats(C, seed: 12),
                        g = randomFloats(N * C, seed: 13)
                    var y = [Float](repeating: 0, count: N * C), yr = y
                    rk_bias_gelu_forward(&y, x, b, Int32(N), Int32(C), approx)
                    rk_bias_gelu_forward_ref(&yr, x, b, Int32(N), Int32(C), approx)
                    expectClose(y, yr, atol: 2e-6, rtol: 2e-6, "bias-gelu forward \(N)x\(C)")
                    var dx = [Float](repeating: 0.25, count: N * C), db = [Float](repeating: -1, count: C), dxr = dx,
                        dbr = db
                    rk_bias_gelu_backward(&dx, &db, g, x, b, Int32(N), Int32(C), approx)
                    rk_bias_gelu_backward_ref(&dxr, &dbr, g, x, b, Int32(N), Int32(C), approx)
                    expectClose(dx, dxr, atol: 2e-6, rtol: 2e-6, "bias-gelu dx")
                    expectClose(db, dbr, atol: 1e-5, rtol: 1e-5, "bias-gelu dbias")
                }
            }
        }
    }

    @Test(arguments: instructionSets)
    func layerNormMatchesReference(isa: Int32) {
        with(isa) {
            for (N, C) in [(1, 1), (3, 7), (5, 37), (2, 773)] {
                let x = randomFloats(N * C, seed: 21, scale: 3).map { $0 + 1.5 }, w = randomFloats(C, seed: 22),
                    b = randomFloats(C, seed: 23)
                let g = randomFloats(N * C, seed: 24)
                var y = [Float](repeating: 0, count: N * C), yr = y
                var m = [Float](repeating: 0, count: N), s = m, mr = m, sr = m
                rk_layernorm_forward(&y, &m, &s, x, w, b, Int32(N), Int32(C), 1e-5)
                rk_layernorm_forward_ref(&yr, &mr, &sr, x, w, b, Int32(N), Int32(C), 1e-5)
                expectClose(y, yr, atol: 1e-5, rtol: 1e-5, "layernorm forward \(N)x\(C)")
                expectClose(m, mr, atol: 1e-6, rtol: 1e-5, "layernorm mean")
                expectClose(s, sr, atol: 1e-5, rtol: 1e-5, "layernorm rstd")
                var dx = randomFloats(N * C, seed: 25), dw = randomFloats(C, seed: 26), db = randomFloats(C, seed: 27)
                var dxr = dx, dwr = dw, dbr = db
                rk_layernorm_backward(&dx, &dw, &db, g, x, w, mr, sr, Int32(N), Int32(C))
                rk_layernorm_backward_ref(&dxr, &dwr, &dbr, g, x, w, mr, sr, Int32(N), Int32(C))
                expectClose(dx, dxr, atol: 1e-5, rtol: 1e-4, "layernorm dx")
                expectClose(dw, dwr, atol: 1e-5, rtol: 1e-4, "layernorm dw")
                expectClose(db, dbr, atol: 1e-5, rtol: 1e-4, "layernorm db")
                // Only dx requested.
                var dx2 = [Float](repeating: 0, count: N * C), dx2r = dx2
                rk_layernorm_backward(&dx2, nil, nil, g, x, w, mr, sr, Int32(N), Int32(C))
                rk_layernorm_backward_ref(&dx2r, nil, nil, g, x, w, mr, sr, Int32(N), Int32(C))
                expectClose(dx2, dx2r, atol: 1e-5, rtol: 1e-4, "layernorm dx alone")
            }
        }
    }

    @Test(arguments: instructionSets)
    func softmaxAndCrossEntropyMatchReference(isa: Int32) {
        with(isa) {
            for (N, C) in [(1, 1), (3, 7), (4, 29), (3, 1003), (2, 49)] {
                let x = randomFloats(N * C, seed: 31, scale: 8), g = randomFloats(N * C, seed: 32)
                var y = [Float](repeating: 0, count: N * C), yr = y
                rk_softmax_forward(&y, x, Int32(N), Int32(C))
                rk_softmax_forward_ref(&yr, x, Int32(N), Int32(C))
                expectClose(y, yr, atol: 1e-7, rtol: 1e-5, "softmax forward \(N)x\(C)")
                var dx = [Float](repeating: 1, count: N * C), dxr = dx
                rk_softmax_backward(&dx, g, yr, Int32(N), Int32(C))
                rk_softmax_backward_ref(&dxr, g, yr, Int32(N), Int32(C))
                expectClose(dx, dxr, atol: 1e-6, rtol: 1e-5, "softmax backward")

                let targets: [Int32] = (0..<N).map { $0 % 3 == 1 ? -100 : Int32(($0 * 7919) % C) }
                var loss = [Float](repeating: 0, count: N), lse = loss, lossr = loss, lser = loss
                #expect(rk_crossentropy_forward(&loss, &lse, x, targets, Int32(N), Int32(C), -100, nil) == RK_OK)
                #expect(rk_crossentropy_forward_ref(&lossr, &lser, x, targets, Int32(N), Int32(C), -100, nil) == RK_OK)
                expectClose(loss, lossr, atol: 1e-5, rtol: 1e-5, "cross-entropy losses")
                expectClose(lse, lser, atol: 1e-5, rtol: 1e-6, "cross-entropy lse")
                var dl = [Float](repeating: 0.1, count: N * C), dlr = dl
                rk_crossentropy_backward(&dl, x, lser, targets, 0.7, Int32(N), Int32(C), -100)
                rk_crossentropy_backward_ref(&dlr, x, lser, targets, 0.7, Int32(N), Int32(C), -100)
                expectClose(dl, dlr, atol: 1e-6, rtol: 1e-5, "cross-entropy backward")
                // The written (not accumulated) gradient, into another buffer and in place over the logits; ignored
                // rows come out zero.
                var set = [Float](repeating: 0.3, count: N * C), setr = set
                rk_crossentropy_gradient(&set, x, lser, targets, 0.7, Int32(N), Int32(C), -100)
                rk_crossentropy_gradient_ref(&setr, x, lser, targets, 0.7, Int32(N), Int32(C), -100)
                expectClose(set, setr, atol: 1e-6, rtol: 1e-5, "cross-entropy gradient")
                var inPlace = x
                inPlace.withUnsafeMutableBufferPointer { p in
                    rk_crossentropy_gradient(
                        p.baseAddress, p.baseAddress, lser, targets, 0.7, Int32(N), Int32(C), -100)
                }
                #expect(inPlace == set, "cross-entropy gradient in place \(N)x\(C)")
                var accumulated = [Float](repeating: 0, count: N * C)
                rk_crossentropy_backward_ref(&accumulated, x, lser, targets, 0.7, Int32(N), Int32(C), -100)
                expectClose(setr, accumulated, atol: 1e-7, rtol: 1e-6, "written = accumulated onto zeros")
            }
            // A target out of range is a status, and names its row.
            var loss = [Float](repeating: 0, count: 3), lse = loss, bad: Int32 = -1
            #expect(
                rk_crossentropy_forward(&loss, &lse, [Float](repeating: 0, count: 12), [0, 1, 4], 3, 4, -100, &bad)
                    == RK_ERR_INDEX)
            #expect(bad == 2)
        }
    }

    @Test func embeddingMatchesReference() {
        let (V, C) = (11, 13)
        let table = randomFloats(V * C, seed: 41), ids: [Int32] = [3, 0, 10, 3, 3, 7]
        let N = ids.count, g = randomFloats(N * C, seed: 42)
        var y = [Float](repeating: 0, count: N * C), yr = y
        #expect(rk_embedding_forward(&y, ids, table, Int32(N), Int32(V), Int32(C), nil) == RK_OK)
        #expect(rk_embedding_forward_ref(&yr, ids, table, Int32(N), Int32(V), Int32(C), nil) == RK_OK)
        #expect(y == yr)
        var dt = randomFloats(V * C, seed: 43), dtr = dt
        rk_embedding_backward(&dt, g, ids, Int32(N), Int32(V), Int32(C), -1)
        rk_embedding_backward_ref(&dtr, g, ids, Int32(N), Int32(V), Int32(C), -1)
        expectClose(dt, dtr, atol: 1e-6, rtol: 1e-6, "embedding scatter-add (id 3 three times)")
        // A padding index: its row is left untouched, the others are as before.
        var dp = [Float](repeating: 0, count: V * C), dpr = dp
        rk_embedding_backward(&dp, g, ids, Int32(N), Int32(V), Int32(C), 3)
        rk_embedding_backward_ref(&dpr, g, ids, Int32(N), Int32(V), Int32(C), 3)
        expectClose(dp, dpr, atol: 1e-6, rtol: 1e-6, "embedding scatter-add with padding index")
        #expect(dp[(3 * C)..<(4 * C)].allSatisfy { $0 == 0 } && dp[0..<C].contains { $0 != 0 })
        var bad: Int32 = -1
        #expect(rk_embedding_forward(&y, [1, 11, 2], table, 3, Int32(V), Int32(C), &bad) == RK_ERR_INDEX)
        #expect(bad == 1)
        #expect(rk_embedding_forward(&y, [-1], table, 1, Int32(V), Int32(C), &bad) == RK_ERR_INDEX)
    }

    struct AttentionCase: CustomTestStringConvertible, Sendable {
        let B, NH, T, Tk, hs: Int
        let causal: Bool
        let masked: Bool
        /// Key/value heads (grouped-query attention when below NH) and a sliding window (0: none).
        var NKV = 0, window = 0
        var kvHeads: Int { NKV == 0 ? NH : NKV }
        var testDescription: String {
            "B\(B) NH\(NH) NKV\(kvHeads) T\(T) Tk\(Tk) hs\(hs)\(causal ? " causal" : "")\(masked ? " masked" : "")"
                + (window > 0 ? " window \(window)" : "")
        }
    }
    static let attentionCases = [
        AttentionCase(B: 1, NH: 1, T: 1, Tk: 1, hs: 1, causal: true, masked: false),
        AttentionCase(B: 2, NH: 3, T: 5, Tk: 5, hs: 12, causal: true, masked: false),
        AttentionCase(B: 2, NH: 3, T: 5, Tk: 9, hs: 12, causal: true, masked: true),  // prefix keys + padding
        AttentionCase(B: 3, NH: 2, T: 1, Tk: 17, hs: 20, causal: true, masked: false),  // one decode step on a KV cache
        AttentionCase(B: 2, NH: 5, T: 13, Tk: 13, hs: 6, causal: false, masked: true),  // BERT-style padding mask
        AttentionCase(B: 1, NH: 2, T: 33, Tk: 40, hs: 24, causal: false, masked: false),
        AttentionCase(B: 2, NH: 2, T: 45, Tk: 50, hs: 10, causal: true, masked: true),  // several causal row blocks
        // Grouped-query attention: 9 query heads over 3 key/value heads (SmolLM2's ratio), multi-query, a window.
        AttentionCase(B: 2, NH: 9, T: 37, Tk: 37, hs: 10, causal: true, masked: true, NKV: 3),
        AttentionCase(B: 2, NH: 6, T: 3, Tk: 11, hs: 6, causal: true, masked: false, NKV: 1),  // decode on a cache
        AttentionCase(B: 1, NH: 4, T: 5, Tk: 7, hs: 14, causal: false, masked: true, NKV: 2),
        AttentionCase(B: 2, NH: 6, T: 41, Tk: 45, hs: 6, causal: true, masked: true, NKV: 2, window: 9),
        AttentionCase(B: 1, NH: 2, T: 7, Tk: 7, hs: 4, causal: true, masked: false, window: 1),
        // One-row blocks take their own loops: decoding on a masked cache with grouped heads and a window, a causal
        // block of 32 rows plus one, and hs 35 (two 16-wide steps and a tail).
        AttentionCase(B: 2, NH: 9, T: 1, Tk: 23, hs: 35, causal: true, masked: true, NKV: 3, window: 7),
        // hs 70: the values' 64-column block in registers, then a tail; 10 keys: two groups of four and two alone.
        AttentionCase(B: 1, NH: 3, T: 1, Tk: 10, hs: 70, causal: true, masked: false, NKV: 1),
        AttentionCase(B: 1, NH: 2, T: 33, Tk: 33, hs: 13, causal: true, masked: true),
        // Blocks of many rows on the AVX-512 small products: more than 64 keys and hs 70 (two column blocks of the
        // scores and of the values' products, the second masked), key counts that are not multiples of 16.
        AttentionCase(B: 1, NH: 3, T: 70, Tk: 75, hs: 70, causal: true, masked: true, NKV: 1),
        AttentionCase(B: 2, NH: 2, T: 9, Tk: 67, hs: 17, causal: false, masked: true),
    ]

    @Test(arguments: attentionCases)
    func attentionMatchesReference(_ c: AttentionCase) {
        for isa in Self.instructionSets {
            with(isa) {
                checkAttention(c, dropout: nil)
                checkAttention(c, dropout: rk_attention_dropout(p: 0.25, seed: 9, offset: 1000))
            }
        }
    }

    /// A NaN reaches the output, on every instruction set: a softmax row with a NaN is NaN (the other rows as they
    /// were), so are a cross-entropy row's loss and gradient, SwiGLU and GELU of NaN are NaN, and an attention query row with a NaN gives that
    /// row's output and log-sum-exp NaN and leaves the other rows finite. (A row maximum taken by comparisons alone
    /// skips a NaN, and an exponential that clamps its argument first turns it into a bound: a query row of NaN then
    /// read as a row with no visible key, a zero row.)
    @Test(arguments: instructionSets)
    func nanPropagates(isa: Int32) {
        with(isa) {
            for C in [5, 37, 70] {
                var x = randomFloats(3 * C, seed: 61)
                x[C + C / 2] = .nan
                var y = [Float](repeating: 0, count: x.count)
                rk_softmax_forward(&y, x, 3, Int32(C))
                #expect(y[C..<(2 * C)].allSatisfy { $0.isNaN }, "softmax row with a NaN, C \(C)")
                #expect(!y[0..<C].contains { !$0.isFinite } && !y[(2 * C)...].contains { !$0.isFinite }, "other rows")
            }
            // Cross-entropy: the row's loss, log-sum-exp and whole gradient row NaN (e^(x - NaN) is NaN, not 0).
            let V = 45
            var logits = randomFloats(3 * V, seed: 67)
            logits[V + 7] = .nan
            let targets: [Int32] = [1, 2, 3]
            var losses = [Float](repeating: 0, count: 3), rowLSE = losses, bad: Int32 = -1
            #expect(rk_crossentropy_forward(&losses, &rowLSE, logits, targets, 3, Int32(V), -100, &bad) == 0)
            #expect(losses[1].isNaN && rowLSE[1].isNaN && losses[0].isFinite && losses[2].isFinite, "cross-entropy")
            var dlogits = [Float](repeating: 0, count: logits.count)
            rk_crossentropy_gradient(&dlogits, logits, rowLSE, targets, 0.5, 3, Int32(V), -100)
            #expect(dlogits[V..<(2 * V)].allSatisfy { $0.isNaN }, "the NaN row's gradient")
            #expect(!dlogits[0..<V].contains { !$0.isFinite } && !dlogits[(2 * V)...].contains { !$0.isFinite })
            let n = 37
            var gate = randomFloats(n, seed: 62), up = randomFloats(n, seed: 63)
            gate[3] = .nan
            gate[20] = .nan
            var out = [Float](repeating: 0, count: n), gelu = out
            rk_swiglu_forward(&out, gate, up, n)
            rk_gelu_forward(&gelu, gate, n, 1)
            for (name, values) in [("SwiGLU", out), ("GELU", gelu)] {
                #expect(values[3].isNaN && values[20].isNaN, "\(name) of NaN")
                #expect(values.enumerated().allSatisfy { $0.offset == 3 || $0.offset == 20 || $0.element.isFinite }, "\(name)")
            }
            let (B, NH, T, hs) = (1, 2, 9, 17)
            var q = randomFloats(B * NH * T * hs, seed: 64)
            let k = randomFloats(q.count, seed: 65), v = randomFloats(q.count, seed: 66)
            q[(1 * T + 4) * hs + 5] = .nan  // head 1, query row 4
            var o = [Float](repeating: 0, count: q.count), lse = [Float](repeating: 0, count: B * NH * T)
            var scratch = [Float](repeating: 0, count: 2 * T * T + T)
            rk_attention_forward(
                &o, &lse, q, k, v, nil, Int32(B), Int32(NH), Int32(NH), Int32(T), Int32(T), Int32(hs),
                1 / Float(hs).squareRoot(), 1, 0, 0, nil, 0, Int32(B * NH), &scratch)
            let row = (1 * T + 4) * hs
            #expect(o[row..<(row + hs)].allSatisfy { $0.isNaN } && lse[T + 4].isNaN, "the NaN query's row")
            #expect(o.enumerated().allSatisfy { ($0.offset >= row && $0.offset < row + hs) || $0.element.isFinite }, "other rows")
        }
    }

    func checkAttention(_ c: AttentionCase, dropout: rk_attention_dropout?) {
        withUnsafePointer(to: dropout ?? rk_attention_dropout()) { d in checkAttention(c, dropout.map { _ in d }) }
    }

    func checkAttention(_ c: AttentionCase, _ drop: UnsafePointer<rk_attention_dropout>?) {
        let (B, NH, NKV, T, Tk, hs) = (c.B, c.NH, c.kvHeads, c.T, c.Tk, c.hs)
        let q = randomFloats(B * NH * T * hs, seed: 51, scale: 2),
            k = randomFloats(B * NKV * Tk * hs, seed: 52, scale: 2)
        let v = randomFloats(B * NKV * Tk * hs, seed: 53), g = randomFloats(B * NH * T * hs, seed: 54)
        // Batch 0 sees everything; later batches lose trailing keys; in the last batch every key is masked for
        // short sequences, so some rows see nothing.
        let mask: [Int32]? =
            c.masked ? (0..<(B * Tk)).map { i in Int32((i / Tk == 0 || i % Tk < Tk - 3 * (i / Tk)) ? 1 : 0) } : nil
        let scale = 1 / Float(hs).squareRoot(), off = Int32(Tk - T), causal: Int32 = c.causal ? 1 : 0
        var out = [Float](repeating: 0, count: B * NH * T * hs), outr = out
        var lse = [Float](repeating: 0, count: B * NH * T), lser = lse
        var scratch = [Float](repeating: 0, count: 2 * T * Tk + T)
        let w = Int32(c.window), (nh, nkv) = (Int32(NH), Int32(NKV))
        // Two calls over halves of the heads (backward: at a group boundary): the split must not matter.
        let half = Int32(B * NH / 2), groupHalf = Int32((B * NKV / 2) * (NH / NKV))
        rk_attention_forward(
            &out, &lse, q, k, v, mask, Int32(B), nh, nkv, Int32(T), Int32(Tk), Int32(hs), scale, causal, off, w, drop, 0,
            half, &scratch)
        rk_attention_forward(
            &out, &lse, q, k, v, mask, Int32(B), nh, nkv, Int32(T), Int32(Tk), Int32(hs), scale, causal, off, w, drop,
            half, Int32(B * NH), &scratch)
        rk_attention_forward_ref(
            &outr, &lser, q, k, v, mask, Int32(B), nh, nkv, Int32(T), Int32(Tk), Int32(hs), scale, causal, off, w, drop)
        expectClose(out, outr, atol: 1e-5, rtol: 1e-4, "attention out \(c.testDescription) dropout \(drop != nil)")
        expectClose(lse, lser, atol: 1e-5, rtol: 1e-5, "attention lse")
        var dq = randomFloats(q.count, seed: 55), dk = randomFloats(k.count, seed: 56),
            dv = randomFloats(v.count, seed: 57)
        var dqr = dq, dkr = dk, dvr = dv
        rk_attention_backward(
            &dq, &dk, &dv, g, q, k, v, outr, lser, mask, Int32(B), nh, nkv, Int32(T), Int32(Tk), Int32(hs), scale,
            causal, off, w, drop, 0, groupHalf, &scratch)
        rk_attention_backward(
            &dq, &dk, &dv, g, q, k, v, outr, lser, mask, Int32(B), nh, nkv, Int32(T), Int32(Tk), Int32(hs), scale,
            causal, off, w, drop, groupHalf, Int32(B * NH), &scratch)
        rk_attention_backward_ref(
            &dqr, &dkr, &dvr, g, q, k, v, outr, lser, mask, Int32(B), nh, nkv, Int32(T), Int32(Tk), Int32(hs), scale,
            causal, off, w, drop)
        expectClose(dq, dqr, atol: 2e-5, rtol: 2e-4, "attention dq")
        expectClose(dk, dkr, atol: 2e-5, rtol: 2e-4, "attention dk")
        expectClose(dv, dvr, atol: 2e-5, rtol: 2e-4, "attention dv")
        // Only dv wanted (a frozen query/key path).
        var dv2 = [Float](repeating: 0, count: v.count), dv2r = dv2
        rk_attention_backward(
            nil, nil, &dv2, g, q, k, v, outr, lser, mask, Int32(B), nh, nkv, Int32(T), Int32(Tk), Int32(hs), scale,
            causal, off, w, drop, 0, Int32(B * NH), &scratch)
        rk_attention_backward_ref(
            nil, nil, &dv2r, g, q, k, v, outr, lser, mask, Int32(B), nh, nkv, Int32(T), Int32(Tk), Int32(hs), scale,
            causal, off, w, drop)
        expectClose(dv2, dv2r, atol: 2e-5, rtol: 2e-4, "attention dv alone")
    }

    /// The mixed-adapter LoRA update (each row its own A, B, rank and scale; a row without an adapter untouched), with
    /// float32 weights, half-precision ones with B transposed, 8-bit ones with B transposed and a scale per row of A
    /// and of Bᵀ, and 4-bit ones in groups of 32 with a scale per group (a server's copies): against its scalar
    /// reference and against the products of the weights' values written out in Double; ranks below, at, twice and
    /// above one vector (8), output widths that are not multiples of 8 and inputs not of 16; for 4 bits, A's rows of
    /// three whole groups (an odd count) and a partial one, Bᵀ's of whole groups; for 8 bits, two neighbouring rows of
    /// one rank, which the AVX2 kernel takes in step.
    @Test(arguments: instructionSets, ["float", "half", "int8", "int4"])
    func loraRowsMatchReference(isa: Int32, precision: String) {
        with(isa) {
            let (rows, T, inp, out) = precision == "int4" ? (5, 2, 109, 64) : (5, 2, 45, 23)
            // Row 2 has no adapter; for 8 bits, rows 3 and 4 share a rank (the kernel reads such neighbours in step).
            let ranks: [Int32] = precision == "int8" ? [3, 8, 0, 17, 17] : [3, 8, 0, 17, 16]
            let scales: [Float] = [0.5, 1.5, 0, 2, 0.75]
            let As = ranks.enumerated().map { randomFloats(Int($0.element) * inp, seed: UInt64(170 + $0.offset)) }
            let Bs = ranks.enumerated().map { randomFloats(out * Int($0.element), seed: UInt64(180 + $0.offset)) }
            let (Ah, Bh) = (As.map { $0.map(rk_float_to_half) }, Bs.map { $0.map(rk_float_to_half) })
            // 8-bit: any integers in -127...127 with any positive scales (the kernel applies what it is given); B
            // transposed. Row 3's A row 0 is all zero with a zero scale.
            var generator = SeededGenerator(seed: 195)
            let Aq = ranks.map { r in (0..<(Int(r) * inp)).map { _ in Int8(Int(generator.next() % 255) - 127) } }
            let Bq = ranks.map { r in (0..<(Int(r) * out)).map { _ in Int8(Int(generator.next() % 255) - 127) } }
            var As8 = ranks.map { r in (0..<Int(r)).map { _ in Float(generator.nextUniform()) * 0.02 + 1e-3 } }
            let Bs8 = ranks.map { r in (0..<Int(r)).map { _ in Float(generator.nextUniform()) * 0.02 + 1e-3 } }
            var Aq3 = Aq
            for k in 0..<inp { Aq3[3][k] = 0 }
            As8[3][0] = 0
            // 4-bit: nibbles of 0...15 (-8...7), a scale per group of 32 (4 groups of A's rows, the last of 13; 2 of
            // Bᵀ's), and the value each stands for, row-major.
            let (gin, gout) = ((inp + 31) / 32, (out + 31) / 32)
            let nibbles = { (r: Int32, width: Int) in (0..<(Int(r) * width)).map { _ in Int(generator.next() % 16) } }
            let (An, Bn) = (ranks.map { nibbles($0, inp) }, ranks.map { nibbles($0, out) })
            let As4 = ranks.map { r in (0..<(Int(r) * gin)).map { _ in Float(generator.nextUniform()) * 0.1 + 1e-3 } }
            let Bs4 = ranks.map { r in (0..<(Int(r) * gout)).map { _ in Float(generator.nextUniform()) * 0.1 + 1e-3 } }
            // Packed: groups of 16 bytes, element i of a group in byte i % 16's low (i < 16) or high nibble; A's
            // groups row by row, Bᵀ's group by group (rank row j's group g at g·rank + j), as are their scales.
            func group(_ j: Int, _ g: Int, _ groups: Int, _ rank: Int, isA: Bool) -> Int {
                isA ? j * groups + g : g * rank + j
            }
            func packed(_ n: [Int], _ width: Int, _ groups: Int, isA: Bool) -> [UInt8] {
                let rank = n.count / width
                var bytes = [UInt8](repeating: 0x88, count: rank * groups * 16)
                for (e, v) in n.enumerated() {
                    let (j, k) = (e / width, e % width)
                    let byte = group(j, k / 32, groups, rank, isA: isA) * 16 + k % 16
                    bytes[byte] = k % 32 < 16 ? (bytes[byte] & 0xF0) | UInt8(v) : (bytes[byte] & 0x0F) | UInt8(v) << 4
                }
                return bytes
            }
            let (Ap, Bp) = (An.map { packed($0, inp, gin, isA: true) }, Bn.map { packed($0, out, gout, isA: false) })
            let x = randomFloats(rows * T * inp, seed: 190), y0 = randomFloats(rows * T * out, seed: 191)
            var y = y0, yr = y0, work = [Float](repeating: 0, count: 17), workr = work
            // Double: the values the kernel reads (half-rounded for half, integer times its row's scale for int8), B
            // [out, r] in float32 or, in the copies, [r, out].
            let value = { (row: Int, isA: Bool) -> [Double] in
                switch precision {
                case "half": return (isA ? Ah[row] : Bh[row]).map { Double(rk_half_to_float($0)) }
                case "int8":
                    let (q, s, width) = isA ? (Aq3[row], As8[row], inp) : (Bq[row], Bs8[row], out)
                    return q.indices.map { Double(q[$0]) * Double(s[$0 / width]) }
                case "int4":
                    let (n, s, width, groups) = isA ? (An[row], As4[row], inp, gin) : (Bn[row], Bs4[row], out, gout)
                    let at = { (e: Int) in group(e / width, e % width / 32, groups, n.count / width, isA: isA) }
                    return n.indices.map { Double(n[$0] - 8) * Double(s[at($0)]) }
                default: return (isA ? As[row] : Bs[row]).map(Double.init)
                }
            }
            var expected = y0.map(Double.init)
            for row in 0..<rows where ranks[row] > 0 {
                let r = Int(ranks[row])
                let (a, b) = (value(row, true), value(row, false))
                for t in 0..<T {
                    let base = row * T + t
                    let xa = (0..<r).map { j in (0..<inp).reduce(0.0) { $0 + a[j * inp + $1] * Double(x[base * inp + $1]) } }
                    for o in 0..<out {
                        expected[base * out + o] += Double(scales[row]) * (0..<r).reduce(0.0) {
                            $0 + (precision != "float" ? b[$1 * out + o] : b[o * r + $1]) * xa[$1]
                        }
                    }
                }
            }
            let (n, ti, ci, co) = (Int32(rows), Int32(T), Int32(inp), Int32(out))
            func run<E>(_ A: [[E]], _ B: [[E]], _ body: ([UnsafePointer<E>?], [UnsafePointer<E>?]) -> Void) {
                A.withPointers { a in
                    B.withPointers { b in
                        body((0..<rows).map { ranks[$0] > 0 ? a[$0] : nil }, (0..<rows).map { ranks[$0] > 0 ? b[$0] : nil })
                    }
                }
            }
            switch precision {
            case "half":
                run(Ah, Bh) { ap, bp in
                    rk_lora_rows_f16(&y, x, n, ti, ci, co, ap, bp, ranks, scales, &work)
                    rk_lora_rows_f16_ref(&yr, x, n, ti, ci, co, ap, bp, ranks, scales, &workr)
                }
            case "int8":
                run(Aq3, Bq) { ap, bp in
                    As8.withPointers { sa in
                        Bs8.withPointers { sb in
                            rk_lora_rows_q8(&y, x, n, ti, ci, co, ap, sa, bp, sb, ranks, scales, &work)
                            rk_lora_rows_q8_ref(&yr, x, n, ti, ci, co, ap, sa, bp, sb, ranks, scales, &workr)
                        }
                    }
                }
            case "int4":
                run(Ap, Bp) { ap, bp in
                    As4.withPointers { sa in
                        Bs4.withPointers { sb in
                            rk_lora_rows_q4(&y, x, n, ti, ci, co, ap, sa, bp, sb, ranks, scales, &work)
                            rk_lora_rows_q4_ref(&yr, x, n, ti, ci, co, ap, sa, bp, sb, ranks, scales, &workr)
                        }
                    }
                }
            default:
                run(As, Bs) { ap, bp in
                    rk_lora_rows(&y, x, n, ti, ci, co, ap, bp, ranks, scales, &work)
                    rk_lora_rows_ref(&yr, x, n, ti, ci, co, ap, bp, ranks, scales, &workr)
                }
            }
            expectClose(y, yr, atol: 1e-5, rtol: 1e-5, "lora rows (\(precision)) vs reference")
            expectClose(yr, expected.map(Float.init), atol: 1e-4, rtol: 1e-4, "lora rows (\(precision)) vs Double")
            #expect(Array(y[(2 * T * out)..<(3 * T * out)]) == Array(y0[(2 * T * out)..<(3 * T * out)]), "the row without an adapter")
        }
    }

    @Test(arguments: instructionSets)
    func loraMatchesReference(isa: Int32) {
        with(isa) {
            for (N, C, OC, r) in [(1, 1, 1, 1), (9, 13, 11, 3), (5, 37, 70, 8)] {
                for wt: Int32 in [0, 1] {
                    let x = randomFloats(N * C, seed: 61), w = randomFloats(OC * C, seed: 62),
                        b = randomFloats(OC, seed: 63)
                    let A = randomFloats(r * C, seed: 64), Bm = randomFloats(OC * r, seed: 65),
                        g = randomFloats(N * OC, seed: 66)
                    var y = [Float](repeating: 0, count: N * OC), yr = y, xa = [Float](repeating: 0, count: N * r),
                        xar = xa
                    rk_lora_forward(&y, &xa, x, w, b, A, Bm, Int32(N), Int32(C), Int32(OC), Int32(r), 0.75, wt)
                    rk_lora_forward_ref(&yr, &xar, x, w, b, A, Bm, Int32(N), Int32(C), Int32(OC), Int32(r), 0.75, wt)
                    expectClose(y, yr, "lora forward")
                    expectClose(xa, xar, "lora xa")
                    var dx = randomFloats(N * C, seed: 67), dA = randomFloats(r * C, seed: 68),
                        dB = randomFloats(OC * r, seed: 69)
                    var dxr = dx, dAr = dA, dBr = dB, scratch = [Float](repeating: 0, count: N * r)
                    // The frozen base: no dW, no db.
                    rk_lora_backward(
                        &dx, nil, nil, &dA, &dB, g, x, w, A, Bm, xar, &scratch, Int32(N), Int32(C), Int32(OC), Int32(r),
                        0.75, wt)
                    rk_lora_backward_ref(
                        &dxr, nil, nil, &dAr, &dBr, g, x, w, A, Bm, xar, Int32(N), Int32(C), Int32(OC), Int32(r), 0.75,
                        wt)
                    expectClose(dx, dxr, "lora dx")
                    expectClose(dA, dAr, "lora dA")
                    expectClose(dB, dBr, "lora dB")
                    var dw = [Float](repeating: 0, count: OC * C), db = [Float](repeating: 0, count: OC), dwr = dw,
                        dbr = db
                    rk_lora_backward(
                        nil, &dw, &db, nil, nil, g, x, w, A, Bm, xar, &scratch, Int32(N), Int32(C), Int32(OC), Int32(r),
                        0.75, wt)
                    rk_lora_backward_ref(
                        nil, &dwr, &dbr, nil, nil, g, x, w, A, Bm, xar, Int32(N), Int32(C), Int32(OC), Int32(r), 0.75,
                        wt)
                    expectClose(dw, dwr, "lora dW (full fine-tuning)")
                    expectClose(db, dbr, "lora db")
                }
            }
        }
    }

    @Test(arguments: instructionSets)
    func adamwAndNormMatchReference(isa: Int32) {
        with(isa) {
            for n in [1, 7, 8, 17, 1003] {
                var p = randomFloats(n, seed: 71), m = randomFloats(n, seed: 72, scale: 0.1),
                    v = randomFloats(n, seed: 73).map { $0 * $0 }
                var pr = p, mr = m, vr = v
                let g = randomFloats(n, seed: 74)
                rk_adamw_step(&p, &m, &v, g, n, 1e-2, 0.9, 0.999, 1e-8, 0.1, 0.19, 0.002, 0.5)
                rk_adamw_step_ref(&pr, &mr, &vr, g, n, 1e-2, 0.9, 0.999, 1e-8, 0.1, 0.19, 0.002, 0.5)
                expectClose(p, pr, atol: 1e-6, rtol: 1e-5, "adamw param n=\(n)")
                expectClose(m, mr, atol: 1e-7, rtol: 1e-6, "adamw m")
                expectClose(v, vr, atol: 1e-7, rtol: 1e-6, "adamw v")
                let s = rk_sum_squares(g, n), sr = rk_sum_squares_ref(g, n)
                #expect(abs(s - sr) <= 1e-6 * sr, "sum of squares \(s) vs \(sr)")
            }
        }
    }

    @Test func sgdMatchesReference() {
        for n in [1, 7, 17, 1003] {
            for (momentum, nesterov, decay) in [(Float(0), Int32(0), Float(0)), (0.9, 0, 0.01), (0.9, 1, 0.05)] {
                var p = randomFloats(n, seed: 91), b = randomFloats(n, seed: 92, scale: 0.1)
                var pr = p, br = b
                // Two steps: the first starts the buffer at g, the second uses it.
                for (first, seed) in [(Int32(1), UInt64(93)), (0, 94)] {
                    let g = randomFloats(n, seed: seed)
                    rk_sgd_step(&p, &b, g, n, 0.05, momentum, decay, nesterov, first, 0.7)
                    rk_sgd_step_ref(&pr, &br, g, n, 0.05, momentum, decay, nesterov, first, 0.7)
                }
                expectClose(p, pr, atol: 1e-6, rtol: 1e-5, "sgd param n=\(n) momentum \(momentum) nesterov \(nesterov)")
                if momentum > 0 { expectClose(b, br, atol: 1e-6, rtol: 1e-5, "sgd buffer") }
            }
        }
    }

    @Test func dropoutMatchesReferenceAndKeepsItsRate() {
        let n = 10_007
        let x = randomFloats(n, seed: 81), g = randomFloats(n, seed: 82)
        for p: Float in [0, 0.1, 0.5, 1] {
            var y = [Float](repeating: 0, count: n), yr = y
            rk_dropout_forward(&y, x, n, p, 42, 1000)
            rk_dropout_forward_ref(&yr, x, n, p, 42, 1000)
            expectClose(y, yr, atol: 1e-6, rtol: 1e-6, "dropout forward p=\(p)")
            let kept = zip(y, x).filter { $0.0 != 0 || $0.1 == 0 }.count
            #expect(abs(Double(kept) / Double(n) - Double(1 - p)) < 0.02, "kept \(kept) of \(n) at p=\(p)")
            // Backward routes the gradient through exactly the kept elements with the same scale.
            var dx = [Float](repeating: 0, count: n)
            rk_dropout_backward(&dx, g, n, p, 42, 1000)
            for i in stride(from: 0, to: n, by: 97) {
                let expected: Float = yr[i] == 0 && x[i] != 0 ? 0 : g[i] / (1 - p)
                #expect(abs(dx[i] - expected) <= 1e-5 * max(1, abs(expected)))
            }
        }
        // Splitting the work by offset gives the same mask.
        var whole = [Float](repeating: 0, count: n), parts = whole
        rk_dropout_forward(&whole, x, n, 0.3, 7, 0)
        parts.withUnsafeMutableBufferPointer { out in
            x.withUnsafeBufferPointer { inp in
                rk_dropout_forward(out.baseAddress, inp.baseAddress, 5000, 0.3, 7, 0)
                rk_dropout_forward(out.baseAddress! + 5000, inp.baseAddress! + 5000, n - 5000, 0.3, 7, 5000)
            }
        }
        #expect(whole == parts)
    }
}

extension Array {
    /// Runs `body` with a pointer to each inner array's storage (all kept alive meanwhile).
    func withPointers<E, R>(_ body: ([UnsafePointer<E>?]) -> R) -> R where Element == [E] {
        let buffers = map { inner -> UnsafeMutablePointer<E> in
            let p = UnsafeMutablePointer<E>.allocate(capacity: Swift.max(inner.count, 1))
            p.initialize(from: inner, count: inner.count)
            return p
        }
        defer { buffers.forEach { $0.deallocate() } }
        return body(buffers.map { UnsafePointer($0) })
    }
}
