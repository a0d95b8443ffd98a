import CReinsKernels
import Synchronization

/// The dense products of a linear layer with many rows — a training step's, a long prompt's — on Reins's own AVX-512
/// kernel (`rk_gemm_panels`) instead of OpenBLAS's `sgemm`: the output in panels of 48 columns, a panel of a
/// `[out, in]` weight transposed once per product and read by every 8-row tile, the `[in, out]` ones read in place,
/// the activations read in place, the panels taken by whichever thread is free. OpenBLAS packs both operands in blocks
/// at every call. On a SmolLM2-135M training step's shapes (1024 rows; `reins kernels --only 1024x`) this kernel ran
/// at 173-202 GFLOP/s where `sgemm` ran at 121-183 on a 2-core Zen 4 (Benchmarks/README.md).
///
/// Used for the forward product and the input gradient when a product has at least ``minimumRows`` rows and the
/// kernels run AVX-512; otherwise, and for weight gradients, OpenBLAS. `REINS_GEMM=openblas` keeps every product on
/// OpenBLAS (attention's per-head products too: both ask `rk_own_products`).
enum ManyRowProducts {
    /// Rows below which OpenBLAS keeps the product (a decoding step, a short prompt).
    static let minimumRows = 64

    /// Whether a product with `rows` rows goes to the kernel on the calling thread (its instruction set, and
    /// `REINS_GEMM`).
    static func applies(rows: Int) -> Bool { rows >= minimumRows && rk_own_products() != 0 }

    /// `c (M, N) = [c +] a (M, K) · op(b)`: op(b) is b stored `(K, N)`, or bᵀ with b stored `(N, K)` when
    /// `bTransposed`. Every matrix contiguous; the sizes are the caller's, already checked.
    /// With `bias` (N values), each row of c starts from it instead (`accumulate` is then ignored).
    static func product(
        _ c: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
        M: Int, N: Int, K: Int, bTransposed: Bool, accumulate: Bool, bias: UnsafePointer<Float>? = nil
    ) {
        // A long reduction (an output layer's input gradient, 49152) goes in blocks, each a product of its own over
        // every panel: the rows' block of `a` (at most 4 MB for 256 rows) stays in cache while every panel reads it,
        // where one panel at a time would read all of `a` from memory once per panel.
        let block = K > 2 * reductionBlock ? reductionBlock : max(K, 1)
        var k0 = 0
        repeat {
            let k = min(block, K - k0)
            let bk = bTransposed ? b + k0 : b + k0 * N
            panels(
                c, ldc: N, a + k0, lda: K, bk, ldb: bTransposed ? K : N, M: M, N: N, K: k, bTransposed: bTransposed,
                accumulate: accumulate || k0 > 0, bias: k0 == 0 ? bias : nil)
            k0 += k
        } while k0 < K
    }

    /// The columns of one of `rk_gemm_panels`' panels (`NR` in gemm.c).
    static let panelWidth = 48

    /// The reduction's block in ``product(_:_:_:M:N:K:bTransposed:accumulate:bias:)``.
    static let reductionBlock = 4096

    static func panels(
        _ c: UnsafeMutablePointer<Float>, ldc: Int, _ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>,
        ldb: Int, M: Int, N: Int, K: Int, bTransposed: Bool, accumulate: Bool, bias: UnsafePointer<Float>? = nil
    ) {
        let panels = Int(rk_gemm_panels_count(Int32(N)))
        guard M > 0, panels > 0 else { return }
        // A product with few panels (192 outputs: 4) is cut by rows as well, so that every thread has pieces; the
        // cuts fall on multiples of 8 rows (the kernel's tile).
        let rowBlocks = max(1, min(M / minimumRows, (4 * Parallel.threadCount + panels - 1) / panels))
        let pieces = panels * rowBlocks
        func rowStart(_ block: Int) -> Int { block >= rowBlocks ? M : (M * block / rowBlocks) / 8 * 8 }
        let needsPack = bTransposed || N % panelWidth != 0
        let next = Atomic<Int>(0)
        Parallel.forEach(min(Parallel.threadCount, pieces), eager: true) { _ in
            let pack = needsPack ? UnsafeMutablePointer<Float>.allocate(capacity: panelWidth * max(K, 1)) : nil
            defer { pack?.deallocate() }
            while true {
                let p = next.wrappingAdd(1, ordering: .relaxed).oldValue
                guard p < pieces else { return }
                let (panel, block) = (p / rowBlocks, p % rowBlocks)
                let (r0, r1) = (rowStart(block), rowStart(block + 1))
                if let bias {
                    // The piece's rows of its panel start from the bias: written by the thread that computes them,
                    // while they are in its cache, rather than for the whole output on the calling thread first.
                    let j0 = panel * panelWidth, width = min(panelWidth, N - j0)
                    for i in r0..<r1 { (c + i * ldc + j0).update(from: bias + j0, count: width) }
                }
                _ = rk_gemm_panels(
                    c, Int32(ldc), a, Int32(lda), b, Int32(ldb), Int32(M), Int32(N), Int32(K), bTransposed ? 1 : 0,
                    accumulate || bias != nil ? 1 : 0, Int32(r0), Int32(r1), Int32(panel), Int32(panel + 1), pack)
            }
        }
    }

    /// A linear layer's output `out (N, OC) = x (N, C) · Wᵀ + bias` (W `[OC, C]`, or `[C, OC]` when
    /// `weightTransposed`).
    static func linear(
        _ out: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
        bias: UnsafePointer<Float>?, N: Int, C: Int, OC: Int, weightTransposed: Bool
    ) {
        product(out, x, weight, M: N, N: OC, K: C, bTransposed: !weightTransposed, accumulate: false, bias: bias)
    }

    /// A linear layer's input gradient `dx (N, C) += dout (N, OC) · W`.
    static func inputGradient(
        _ dx: UnsafeMutablePointer<Float>, _ dout: UnsafePointer<Float>, weight: UnsafePointer<Float>,
        N: Int, C: Int, OC: Int, weightTransposed: Bool
    ) {
        product(dx, dout, weight, M: N, N: C, K: OC, bTransposed: weightTransposed, accumulate: true)
    }
}
