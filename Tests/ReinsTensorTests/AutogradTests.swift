import Foundation
import CReinsKernels
import Testing
@testable import ReinsTensor
import ReinsTestSupport

struct AutogradTests {
    @Test func gradientsAccumulateUntilZeroed() throws {
        let w = try Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5, 6]).requiringGradient()
        let x = try Tensor(shape: [4, 3], values: (0..<12).map { Float($0) / 10 })
        func loss() throws -> Tensor { try Tensor.linear(x, weight: w).sum() }
        try loss().backward()
        let once = try #require(w.gradient).scalars
        try loss().backward()
        // Tight tolerance, not equality: GEMM rounding may change with OpenBLAS's thread count between passes.
        expectClose(
            try #require(w.gradient).scalars, once.map { 2 * $0 }, atol: 1e-6, rtol: 1e-6, "two passes accumulate")
        w.zeroGradient()
        #expect(w.gradient == nil)
        try loss().backward()
        expectClose(try #require(w.gradient).scalars, once, atol: 1e-6, rtol: 1e-6, "after zeroing, one pass")
    }

    /// Big tensors take the multithreaded paths (elementwise ops cut by rows or columns, permuted copies cut by runs,
    /// zero-filled gradient buffers cut in spans): values and gradients equal plain loops exactly.
    @Test func bigElementwiseOpsAndPermutesEqualPlainLoops() throws {
        let (rows, width) = (301, 777)  // 233877 elements: several spans, no multiple of 8
        let a = try Tensor.normal([rows, width], seed: 21).requiringGradient()
        let same = try Tensor.normal([rows, width], seed: 22).requiringGradient()
        let row = try Tensor.uniform([width], low: 0.5, high: 1.5, seed: 23).requiringGradient()
        let weights = try Tensor.normal([rows, width], seed: 24)
        let (x, y, v, w) = (a.scalars, same.scalars, row.scalars, weights.scalars)
        let products = try (a * same) * weights, quotients = try a / row, sums = try a + row,
            scaledUp = a.scaled(by: 3, shift: 1)
        #expect(products.scalars == (0..<x.count).map { (x[$0] * y[$0]) * w[$0] })
        #expect(quotients.scalars == (0..<x.count).map { x[$0] / v[$0 % width] })
        #expect(sums.scalars == (0..<x.count).map { x[$0] + v[$0 % width] })
        #expect(scaledUp.scalars == x.map { $0 * 3 + 1 })
        let squashed = try Tensor.normal([rows, width], seed: 28).requiringGradient()
        let sq = squashed.scalars
        let activated = squashed.tanh()
        #expect(activated.scalars == sq.map { Foundation.tanh($0) })
        try (activated * weights).sum().backward()
        #expect(
            try #require(squashed.gradient).scalars
                == (0..<sq.count).map { w[$0] * (1 - Foundation.tanh(sq[$0]) * Foundation.tanh(sq[$0])) })
        try (products.sum() + (quotients * weights).sum()).backward()
        // d/da = y·w + w/v; d/dsame = x·w; d/drow = -Σ_rows w·x/v² (summed in row order)
        #expect(try #require(a.gradient).scalars == (0..<x.count).map { y[$0] * w[$0] + w[$0] / v[$0 % width] })
        #expect(try #require(same.gradient).scalars == (0..<x.count).map { x[$0] * w[$0] })
        var rowGrad = [Float](repeating: 0, count: width)
        for r in 0..<rows { for c in 0..<width { let i = r * width + c; rowGrad[c] -= w[i] * x[i] / (v[c] * v[c]) } }
        #expect(try #require(row.gradient).scalars == rowGrad)
        // A head split and merge on a [B, T, H·hs] activation, as attention does, and its gradient (the inverse permute).
        let (B, T, H, hs) = (3, 67, 7, 97)
        let act = try Tensor.normal([B, T, H * hs], seed: 25).requiringGradient()
        let heads = try act.reshaped([B, T, H, hs]).permuted([0, 2, 1, 3])
        let hv = heads.scalars, av = act.scalars
        var expected = [Float](repeating: 0, count: hv.count)
        for b in 0..<B {
            for h in 0..<H {
                for t in 0..<T {
                    for c in 0..<hs {
                        expected[((b * H + h) * T + t) * hs + c] = av[((b * T + t) * H + h) * hs + c]
                    }
                }
            }
        }
        #expect(hv == expected)
        let g = try Tensor.normal(heads.shape, seed: 26)
        try (heads * g).sum().backward()
        let gv = g.scalars
        var back = [Float](repeating: 0, count: av.count)
        for b in 0..<B {
            for h in 0..<H {
                for t in 0..<T {
                    for c in 0..<hs {
                        back[((b * T + t) * H + h) * hs + c] = gv[((b * H + h) * T + t) * hs + c]
                    }
                }
            }
        }
        #expect(try #require(act.gradient).scalars == back)
        // An axis order that moves the last axis (element by element) on a big tensor.
        let moved = try Tensor.normal([41, 53, 97], seed: 27)
        let t = try moved.permuted([2, 0, 1]), mv = moved.scalars
        #expect(
            t.scalars
                == (0..<mv.count).map { i in
                    let (k, rest) = (i / (41 * 53), i % (41 * 53)); return mv[(rest / 53 * 53 + rest % 53) * 97 + k]
                })
        // Prefix keys joined to a layer's keys along the time axis, and the gradient split back.
        let prefix = try Tensor.normal([B, H, 5, hs], seed: 29).requiringGradient()
        let joined = try Tensor.concatenate([prefix, Tensor(shape: heads.shape, values: hv)], axis: 2)
        let pv = prefix.scalars
        var expectedJoin = [Float]()
        for bh in 0..<(B * H) {
            let p0 = bh * 5 * hs, h0 = bh * T * hs
            expectedJoin.append(contentsOf: pv[p0..<(p0 + 5 * hs)])
            expectedJoin.append(contentsOf: hv[h0..<(h0 + T * hs)])
        }
        #expect(joined.scalars == expectedJoin)
        let jg = try Tensor.normal(joined.shape, seed: 30), jv = jg.scalars
        try (joined * jg).sum().backward()
        var prefixGrad = [Float]()
        for bh in 0..<(B * H) { let j0 = bh * (5 + T) * hs; prefixGrad.append(contentsOf: jv[j0..<(j0 + 5 * hs)]) }
        #expect(try #require(prefix.gradient).scalars == prefixGrad)
        #expect(try Tensor.zeros([1 << 20]).scalars.allSatisfy { $0 == 0 })
    }

    @Test func frozenInputsGetNoGradient() throws {
        let x = try Tensor.normal([3, 5], seed: 1)
        let frozen = try Tensor.normal([4, 5], seed: 2), bias = try Tensor.normal([4], seed: 3).requiringGradient()
        let y = try Tensor.linear(x, weight: frozen, bias: bias)
        #expect(y.requiresGradient)
        try y.sum().backward()
        #expect(frozen.gradient == nil && x.gradient == nil)
        expectClose(try #require(bias.gradient), try Tensor.full([4], 3), "bias gradient = rows")
    }

    /// One row through a weight large enough to be split between threads (a decoding step's product): the same
    /// outputs as the scalar reference, with and without a bias, for a row count that does not split evenly; and the
    /// gradients of the usual path.
    @Test(arguments: [false, true], [false, true])
    func oneRowSplitBetweenThreadsMatchesReference(withBias: Bool, transposed: Bool) throws {
        let (C, OC) = (301, 389)  // 117 089 weights: above the split's 65 536
        let x = try Tensor.normal([1, C], seed: 11).requiringGradient()
        let w = try Tensor.normal(transposed ? [C, OC] : [OC, C], seed: 12).requiringGradient()
        let bias = withBias ? try Tensor.normal([OC], seed: 13) : nil
        let y = try Tensor.linear(x, weight: w, bias: bias, weightTransposed: transposed)
        let wt: Int32 = transposed ? 1 : 0
        var reference = [Float](repeating: 0, count: OC)
        rk_linear_forward_ref(&reference, x.scalars, w.scalars, bias?.scalars, 1, Int32(C), Int32(OC), wt)
        expectClose(y.scalars, reference, "one row, \(C) -> \(OC), transposed \(transposed)")
        let g = try Tensor.normal([1, OC], seed: 14)
        try (y * g).sum().backward()
        var dx = [Float](repeating: 0, count: C), dw = [Float](repeating: 0, count: OC * C)
        rk_linear_backward_ref(&dx, &dw, nil, g.scalars, x.scalars, w.scalars, 1, Int32(C), Int32(OC), wt)
        expectClose(try #require(x.gradient).scalars, dx, "dx")
        expectClose(try #require(w.gradient).scalars, dw, "dW")
    }

    @Test func noGradientModeRecordsNothing() throws {
        let w = try Tensor.normal([3, 3], seed: 4).requiringGradient()
        let y = try Autograd.withoutGradients { try Tensor.matmul(w, w).gelu().sum() }
        #expect(!y.requiresGradient)
        #expect(throws: TensorError.noGradientGraph) { try y.backward() }
        #expect(Autograd.isEnabled)
    }

    @Test func misuseThrowsClearErrors() throws {
        let w = try Tensor.normal([2, 2], seed: 5).requiringGradient()
        let y = try Tensor.matmul(w, w)
        #expect(throws: TensorError.backwardFromNonScalar(shape: [2, 2])) { try y.backward() }
        let s = y.sum()
        try s.backward()
        #expect(throws: TensorError.graphReleased) { try s.backward() }
        #expect(throws: TensorError.self) { try Tensor.matmul(w, try Tensor.zeros([3, 2])) }
        #expect(throws: TensorError.self) {
            try Tensor.linear(try Tensor.zeros([2, 3]), weight: try Tensor.zeros([4, 2]))
        }
        #expect(throws: TensorError.self) {
            try Tensor.layerNorm(try Tensor.zeros([2, 3]), weight: try Tensor.ones([4]), bias: try Tensor.zeros([3]))
        }
        #expect(throws: TensorError.self) { try Tensor.zeros([2, 3]) + Tensor.zeros([2]) }
        #expect(throws: TensorError.self) {
            try Tensor.attention(
                query: try Tensor.zeros([1, 2, 3, 4]), key: try Tensor.zeros([1, 2, 3, 5]),
                value: try Tensor.zeros([1, 2, 3, 5]))
        }
        #expect(throws: TensorError.self) {
            try Tensor.attention(
                query: try Tensor.zeros([1, 1, 2, 4]), key: try Tensor.zeros([1, 1, 3, 4]),
                value: try Tensor.zeros([1, 1, 3, 4]), keyMask: IntTensor([1, 1]))
        }
        #expect(throws: TensorError.indexOutOfRange(operation: "embedding", position: 1, value: 7, limit: 7)) {
            try Tensor.embedding(IntTensor([0, 7]), table: try Tensor.zeros([7, 3]))
        }
        #expect(throws: TensorError.indexOutOfRange(operation: "crossEntropy", position: 0, value: -2, limit: 3)) {
            try Tensor.crossEntropy(logits: try Tensor.zeros([1, 3]), targets: IntTensor([-2]))
        }
        #expect(throws: TensorError.self) {
            try Tensor.crossEntropy(logits: try Tensor.zeros([2, 3]), targets: IntTensor([1]))
        }
        #expect(throws: TensorError.self) { try Tensor.zeros([2, 3]).reshaped([4, 2]) }
        #expect(throws: TensorError.self) { try Tensor(shape: [2, 2], values: [1, 2, 3]) }
        #expect(throws: TensorError.self) { try Tensor.zeros([-1]) }
        #expect(throws: TensorError.self) { try Tensor.zeros([2]).dropout(1.5, seed: 0) }
    }

    /// Shape ops and elementwise math: analytic gradients against float central differences on smooth functions.
    @Test func shapeAndElementwiseGradients() throws {
        let x0 = try Tensor.uniform([2, 3, 4], low: 0.5, high: 1.5, seed: 6)
        let w = try Tensor.normal([4], seed: 7), other = try Tensor.uniform([2, 3, 4], low: 0.5, high: 2, seed: 8)
        func f(_ x: Tensor) throws -> Tensor {
            let a = try x.permuted([2, 0, 1]).reshaped([4, 6]).transposed()  // [6, 4]
            let b = try Tensor.concatenate([a.slice(axis: 0, 1..<4), a.slice(axis: 0, 0..<2).exp()], axis: 0)  // [5, 4]
            let c = try (b * w).tanh() + b.log() - b.sqrt() / b.sigmoid()
            let d = try c.sum(axis: 0).relu().mean() + c.mean(axis: 1).scaled(by: 0.3).sum()
            let e = try (x / other).softmax().sum(axis: -1, keepingAxis: true).mean()
            return try d + e
        }
        let x = x0.requiringGradient()
        try f(x).backward()
        let analytic = try #require(x.gradient).scalars
        var numeric = [Float]()
        let h: Float = 1e-2
        for i in 0..<x0.count {
            var up = x0, down = x0
            up.withUnsafeMutableBufferPointer { $0[i] += h }
            down.withUnsafeMutableBufferPointer { $0[i] -= h }
            numeric.append((try f(up).item - f(down).item) / (2 * h))
        }
        expectClose(analytic, numeric, atol: 2e-3, rtol: 1e-2, "composite gradient")
    }

    @Test func matmulWithTransposeFlagsAndBatches() throws {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let (M, K, N) = (3, 5, 4)
            let a = try Tensor.normal(ta ? [2, K, M] : [2, M, K], seed: 9).requiringGradient()
            let b = try Tensor.normal(tb ? [2, N, K] : [2, K, N], seed: 10).requiringGradient()
            let c = try Tensor.matmul(a, b, transposeA: ta, transposeB: tb)
            #expect(c.shape == [2, M, N])
            let at = ta ? try a.detached().transposed() : a.detached(),
                bt = tb ? try b.detached().transposed() : b.detached()
            var expected = [Float](repeating: 0, count: 2 * M * N)
            for n in 0..<2 {
                for i in 0..<M {
                    for j in 0..<N { for k in 0..<K { expected[(n * M + i) * N + j] += at[n, i, k] * bt[n, k, j] } }
                }
            }
            expectClose(c.scalars, expected, "matmul ta=\(ta) tb=\(tb)")
            let g = try Tensor.normal([2, M, N], seed: 11)
            try (c * g).sum().backward()
            // dA = g·Bᵀ and dB = Aᵀ·g, transposed back where the operand was used transposed.
            let da = try Tensor.matmul(g, bt, transposeB: true), db = try Tensor.matmul(at, g, transposeA: true)
            expectClose(try #require(a.gradient), ta ? try da.transposed() : da, "dA ta=\(ta) tb=\(tb)")
            expectClose(try #require(b.gradient), tb ? try db.transposed() : db, "dB ta=\(ta) tb=\(tb)")
        }
        // A 2-D right operand shared by every batch sums its gradient over batches.
        let a = try Tensor.normal([3, 2, 4], seed: 12), w = try Tensor.normal([4, 5], seed: 13).requiringGradient()
        try Tensor.matmul(a, w).sum().backward()
        let expected = try Tensor.matmul(try a.reshaped([6, 4]), try Tensor.ones([6, 5]), transposeA: true)
        expectClose(try #require(w.gradient), expected, "shared weight gradient")
    }

    @Test func headsRoundTrip() throws {
        let x = try Tensor.normal([2, 5, 12], seed: 14)
        let heads = try x.splittingHeads(3)
        #expect(heads.shape == [2, 3, 5, 4])
        #expect(heads[1, 2, 3, 1] == x[1, 3, 2 * 4 + 1])
        #expect(try heads.mergingHeads().scalars == x.scalars)
        #expect(throws: TensorError.self) { try x.splittingHeads(5) }
    }

    @Test func parameterFreezing() throws {
        let p = Parameter("w", try Tensor.ones([3]))
        #expect(p.isTrainable)
        p.isTrainable = false
        #expect(try !(Tensor.ones([3]) * p.value).sum().requiresGradient, "a frozen parameter records no graph")
        p.isTrainable = true
        try (p.value * p.value).sum().backward()
        expectClose(try #require(p.gradient), try Tensor.full([3], 2), "d(w²)/dw")
    }

    @Test func clippingScalesToMaxNorm() throws {
        let p = Parameter("w", try Tensor.ones([4]))
        try p.value.scaled(by: 3).sum().backward()  // gradient 3 everywhere, norm 6
        let norm = clipGradientNorm([p], maxNorm: 1.5)
        #expect(abs(norm - 6) < 1e-5)
        expectClose(try #require(p.gradient), try Tensor.full([4], 0.75), atol: 1e-5, rtol: 1e-5, "clipped gradient")
    }
}
