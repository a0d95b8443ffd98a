import CReinsKernels
import Foundation
import Testing
@testable import ReinsTensor
import ReinsTestSupport

/// Reins's kernel for products with many rows (`rk_gemm_panels`): against its scalar `_ref` (itself checked against
/// a product in Double) on awkward sizes, strides, row and panel ranges, under each instruction set; and the layers
/// that route to it from ``ManyRowProducts/minimumRows`` rows on — linear, LoRA linear, the fused output layer —
/// against definitions in Double. Serialized: the instruction set is per thread but the suites share the process.
@Suite(.serialized)
struct ManyRowProductTests: PerInstructionSet {
    /// `a (M, K) · op(b)` in Double, op(b) = b `(K, N)` or bᵀ of b `(N, K)`.
    static func product(_ a: [Float], _ b: [Float], M: Int, N: Int, K: Int, bTransposed: Bool) -> [Double] {
        var c = [Double](repeating: 0, count: M * N)
        for i in 0..<M {
            for j in 0..<N {
                var s = 0.0
                for k in 0..<K { s += Double(a[i * K + k]) * Double(bTransposed ? b[j * K + k] : b[k * N + j]) }
                c[i * N + j] = s
            }
        }
        return c
    }

    @Test func referenceIsTheProduct() {
        let (M, N, K) = (5, 50, 7)
        for bt: Int32 in [0, 1] {
            let a = randomFloats(M * K, seed: 1), b = randomFloats(N * K, seed: 2)
            var c = [Float](repeating: 0, count: M * N)
            let panels = rk_gemm_panels_count(Int32(N))
            #expect(rk_gemm_panels_ref(&c, Int32(N), a, Int32(K), b, bt == 1 ? Int32(K) : Int32(N), Int32(M), Int32(N), Int32(K), bt, 0, 0, Int32(M), 0, panels) == RK_OK)
            expectClose(c, Self.product(a, b, M: M, N: N, K: K, bTransposed: bt == 1), atol: 1e-5, rtol: 1e-5, "ref bt=\(bt)")
        }
    }

    @Test(arguments: instructionSets)
    func kernelMatchesReference(isa: Int32) {
        with(isa) {
            // Rows not a multiple of the 8-row tile, widths around the 48-column panel, reductions of 0, 1 and past
            // the kernel's 768-long block.
            for (M, N, K) in [(1, 1, 1), (7, 5, 3), (13, 47, 29), (9, 49, 70), (37, 97, 1), (70, 150, 33), (16, 96, 0), (24, 96, 64), (11, 50, 1700)] {
                for bt: Int32 in [0, 1] {
                    for accumulate: Int32 in [0, 1] {
                        // Rows of C, A and B longer than the matrices (strided views); what lies beyond must stay.
                        let (ldc, lda, ldb) = (N + 3, K + 2, (bt == 1 ? K : N) + 5)
                        let a = randomFloats(M * lda, seed: 1), b = randomFloats((bt == 1 ? N : K) * ldb, seed: 2)
                        let start = randomFloats(M * ldc, seed: 3)
                        var c = start, cr = start
                        let panels = Int(rk_gemm_panels_count(Int32(N)))
                        var pack = [Float](repeating: .nan, count: 48 * max(K, 1))
                        // Pieces as the threads take them: the rows in two ranges (cut at a multiple of 8 when there
                        // are enough), the panels one by one.
                        let cut = M >= 16 ? M / 2 / 8 * 8 : M / 2
                        for (r0, r1) in [(0, cut), (cut, M)] {
                            for p in 0..<panels {
                                #expect(rk_gemm_panels(&c, Int32(ldc), a, Int32(lda), b, Int32(ldb), Int32(M), Int32(N), Int32(K), bt, accumulate, Int32(r0), Int32(r1), Int32(p), Int32(p + 1), &pack) == RK_OK)
                            }
                        }
                        #expect(rk_gemm_panels_ref(&cr, Int32(ldc), a, Int32(lda), b, Int32(ldb), Int32(M), Int32(N), Int32(K), bt, accumulate, 0, Int32(M), 0, Int32(panels)) == RK_OK)
                        expectClose(c, cr, atol: 1e-5, rtol: 1e-4, "gemm \(M)x\(K) -> \(N) bt=\(bt) acc=\(accumulate) isa=\(isa)")
                        for i in 0..<M {
                            for j in N..<ldc where c[i * ldc + j] != start[i * ldc + j] {
                                Issue.record("gemm \(M)x\(K) -> \(N): wrote past its row, [\(i), \(j)]")
                            }
                        }
                    }
                }
            }
        }
    }

    @Test func refusesSizesAndRangesOutOfBounds() {
        var c = [Float](repeating: 0, count: 64), pack = [Float](repeating: 0, count: 48 * 4)
        let a = [Float](repeating: 1, count: 64), b = [Float](repeating: 1, count: 64)
        // (M, N, K, ldc, lda, ldb, rows, panels)
        let bad: [(Int32, Int32, Int32, Int32, Int32, Int32, Range<Int32>, Range<Int32>)] = [
            (-1, 4, 4, 4, 4, 4, 0..<0, 0..<1),  // negative size
            (4, 4, 4, 3, 4, 4, 0..<4, 0..<1),  // ldc < N
            (4, 4, 4, 4, 3, 4, 0..<4, 0..<1),  // lda < K
            (4, 4, 4, 4, 4, 4, 0..<5, 0..<1),  // rows past M
            (4, 4, 4, 4, 4, 4, 0..<4, 0..<2),  // panels past the last
        ]
        for (M, N, K, ldc, lda, ldb, rows, panels) in bad {
            #expect(rk_gemm_panels(&c, ldc, a, lda, b, ldb, M, N, K, 1, 0, rows.lowerBound, rows.upperBound, panels.lowerBound, panels.upperBound, &pack) == RK_ERR_ARG)
            #expect(rk_gemm_panels_ref(&c, ldc, a, lda, b, ldb, M, N, K, 1, 0, rows.lowerBound, rows.upperBound, panels.lowerBound, panels.upperBound) == RK_ERR_ARG)
        }
        if rk_isa_active() >= Int32(RK_ISA_AVX512.rawValue) {
            #expect(rk_gemm_panels(&c, 4, a, 4, b, 4, 4, 4, 4, 1, 0, 0, 4, 0, 1, nil) == RK_ERR_ARG)  // no pack
        }
    }

    /// Over the reduction's block (4096), the product goes block by block, accumulating.
    @Test func longReductionsGoInBlocks() {
        let (M, N, K) = (66, 50, 2 * ManyRowProducts.reductionBlock + 37)
        for bt in [false, true] {
            let a = randomFloats(M * K, seed: 4, scale: 0.1), b = randomFloats(N * K, seed: 5, scale: 0.1)
            var c = [Float](repeating: 0, count: M * N)
            c.withUnsafeMutableBufferPointer { pc in
                ManyRowProducts.product(pc.baseAddress!, a, b, M: M, N: N, K: K, bTransposed: bt, accumulate: false)
            }
            expectClose(c, Self.product(a, b, M: M, N: N, K: K, bTransposed: bt), atol: 1e-5, rtol: 1e-4, "K = \(K) bt=\(bt)")
        }
    }

    /// Linear and LoRA linear layers with many rows (the route to the kernel when it runs AVX-512) against their
    /// definitions: the output, and the input gradient added to what is there. 130 rows over 100 outputs: three panels
    /// (the last 4 wide) cut into two row blocks, each piece starting its rows from the bias.
    @Test(arguments: [(70, 37, 101), (64, 50, 48), (97, 13, 5), (130, 21, 100)])
    func layersWithManyRowsMatchTheirDefinitions(shape: (Int, Int, Int)) throws {
        let (N, C, OC) = shape
        let ownKernels = rk_isa_active() >= Int32(RK_ISA_AVX512.rawValue)
            && ProcessInfo.processInfo.environment["REINS_GEMM"] != "openblas"
        #expect(ManyRowProducts.applies(rows: N) == ownKernels)
        let r = 3, scale: Float = 0.7
        for wt in [false, true] {
            let xs = randomFloats(N * C, seed: 6), ws = randomFloats(OC * C, seed: 7), bs = randomFloats(OC, seed: 8)
            let av = randomFloats(r * C, seed: 9), bv = randomFloats(OC * r, seed: 10), g = randomFloats(N * OC, seed: 11)
            // W as [OC, C] for the definition.
            let w = wt ? (0..<(OC * C)).map { i in ws[(i % C) * OC + i / C] } : ws
            var y = Self.product(xs, w, M: N, N: OC, K: C, bTransposed: true)
            for i in 0..<(N * OC) { y[i] += Double(bs[i % OC]) }
            let xa = Self.product(xs, av, M: N, N: r, K: C, bTransposed: true).map { Float($0) }
            let update = Self.product(xa, bv, M: N, N: OC, K: r, bTransposed: true)
            let dx = Self.product(g, w, M: N, N: C, K: OC, bTransposed: false)
            let gb = Self.product(g, bv, M: N, N: r, K: OC, bTransposed: false).map { Float($0) * scale }
            let dxLoRA = Self.product(gb, av, M: N, N: C, K: r, bTransposed: false)
            for lora in [false, true] {
                let x = try Tensor(shape: [N, C], values: xs).requiringGradient()
                let weight = try Tensor(shape: wt ? [C, OC] : [OC, C], values: ws)
                let bias = try Tensor(shape: [OC], values: bs)
                let out =
                    lora
                    ? try Tensor.loraLinear(
                        x, weight: weight, bias: bias, loraA: Tensor(shape: [r, C], values: av),
                        loraB: Tensor(shape: [OC, r], values: bv), scale: scale, weightTransposed: wt)
                    : try Tensor.linear(x, weight: weight, bias: bias, weightTransposed: wt)
                let expected = lora ? zip(y, update).map { $0 + Double(scale) * $1 } : y
                expectClose(out.scalars, expected, atol: 1e-4, rtol: 1e-4, "\(lora ? "LoRA " : "")linear \(N)x\(C) -> \(OC) wt=\(wt)")
                try out.backward(gradient: Tensor(shape: [N, OC], values: g))
                let expectedDX = lora ? zip(dx, dxLoRA).map { $0 + $1 } : dx
                expectClose(x.gradient?.scalars ?? [], expectedDX, atol: 1e-4, rtol: 1e-4, "\(lora ? "LoRA " : "")linear dx wt=\(wt)")
            }
        }
    }
}
