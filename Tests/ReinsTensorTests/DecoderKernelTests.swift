import CReinsKernels
import Foundation
import Testing
@testable import ReinsTensor
import ReinsTestSupport

/// The Llama-family kernels (RMSNorm, rotary embeddings, SiLU/SwiGLU) and grouped-query attention: each dispatched
/// kernel against its scalar `_ref` under every instruction set this CPU has, and each backward against central finite
/// differences of a Double definition written here from the formulas. Serialized: the instruction set is per thread
/// but the suites share the process.
@Suite(.serialized)
struct DecoderKernelTests: PerInstructionSet {
    // MARK: definitions in Double

    static func rmsNorm(_ x: [Double], _ w: [Double], N: Int, C: Int, eps: Double) -> [Double] {
        var y = x
        for i in 0..<N {
            let ms = (0..<C).map { x[i * C + $0] * x[i * C + $0] }.reduce(0, +) / Double(C)
            for j in 0..<C { y[i * C + j] = x[i * C + j] / (ms + eps).squareRoot() * w[j] }
        }
        return y
    }
    /// (B,T,NH,hs) to (B,NH,T,hs), pairs (d, d + hs/2) rotated by the angle whose cos and sin are given per (b,t,d).
    static func rope(_ x: [Double], cos: [Double], sin: [Double], B: Int, T: Int, NH: Int, hs: Int) -> [Double] {
        var y = [Double](repeating: 0, count: x.count)
        let h = hs / 2
        for b in 0..<B {
            for t in 0..<T {
                for n in 0..<NH {
                    for d in 0..<h {
                        let a = (b * T + t) * h + d
                        let x1 = x[((b * T + t) * NH + n) * hs + d], x2 = x[((b * T + t) * NH + n) * hs + d + h]
                        y[((b * NH + n) * T + t) * hs + d] = x1 * cos[a] - x2 * sin[a]
                        y[((b * NH + n) * T + t) * hs + d + h] = x2 * cos[a] + x1 * sin[a]
                    }
                }
            }
        }
        return y
    }
    static func swiGLU(_ g: [Double], _ u: [Double]?) -> [Double] {
        g.indices.map { i in g[i] / (1 + Foundation.exp(-g[i])) * (u?[i] ?? 1) }
    }

    /// Angles for positions that differ per batch row (left padding, a cache offset): cos and sin (B,T,hs/2).
    static func angles(B: Int, T: Int, hs: Int, theta: Double = 10000) -> (cos: [Float], sin: [Float]) {
        var c: [Float] = [], s: [Float] = []
        for b in 0..<B {
            for t in 0..<T {
                for d in 0..<(hs / 2) {
                    let angle = Double(t + 3 * b) / Foundation.pow(theta, Double(2 * d) / Double(hs))
                    c.append(Float(Foundation.cos(angle)))
                    s.append(Float(Foundation.sin(angle)))
                }
            }
        }
        return (c, s)
    }

    // MARK: dispatched kernels against their oracles

    @Test(arguments: instructionSets)
    func rmsNormMatchesReference(isa: Int32) {
        with(isa) {
            for (N, C) in [(1, 1), (3, 7), (5, 37), (2, 773), (4, 576)] {
                let x = randomFloats(N * C, seed: 31, scale: 3), w = randomFloats(C, seed: 32)
                let g = randomFloats(N * C, seed: 33)
                var y = [Float](repeating: 0, count: N * C), yr = y
                var s = [Float](repeating: 0, count: N), sr = s
                rk_rmsnorm_forward(&y, &s, x, w, Int32(N), Int32(C), 1e-6)
                rk_rmsnorm_forward_ref(&yr, &sr, x, w, Int32(N), Int32(C), 1e-6)
                expectClose(y, yr, atol: 1e-5, rtol: 1e-5, "rmsnorm forward \(N)x\(C)")
                expectClose(s, sr, atol: 1e-6, rtol: 1e-5, "rmsnorm rstd \(N)x\(C)")
                var dx = randomFloats(N * C, seed: 34), dw = randomFloats(C, seed: 35)
                var dxr = dx, dwr = dw
                rk_rmsnorm_backward(&dx, &dw, g, x, w, sr, Int32(N), Int32(C))
                rk_rmsnorm_backward_ref(&dxr, &dwr, g, x, w, sr, Int32(N), Int32(C))
                expectClose(dx, dxr, atol: 1e-5, rtol: 1e-4, "rmsnorm dx \(N)x\(C)")
                expectClose(dw, dwr, atol: 1e-5, rtol: 1e-4, "rmsnorm dw \(N)x\(C)")
                var dx2 = [Float](repeating: 0, count: N * C), dx2r = dx2
                rk_rmsnorm_backward(&dx2, nil, g, x, nil, sr, Int32(N), Int32(C))
                rk_rmsnorm_backward_ref(&dx2r, nil, g, x, nil, sr, Int32(N), Int32(C))
                expectClose(dx2, dx2r, atol: 1e-5, rtol: 1e-4, "rmsnorm dx without weight")
            }
        }
    }

    @Test(arguments: instructionSets)
    func ropeMatchesReference(isa: Int32) {
        with(isa) {
            for (B, T, NH, hs) in [(1, 1, 1, 2), (2, 5, 3, 10), (3, 7, 9, 64), (1, 4, 2, 38)] {
                let x = randomFloats(B * T * NH * hs, seed: 41, scale: 2), g = randomFloats(x.count, seed: 42)
                let (c, s) = Self.angles(B: B, T: T, hs: hs)
                var y = [Float](repeating: 0, count: x.count), yr = y
                rk_rope_forward(&y, x, c, s, Int32(B), Int32(T), Int32(NH), Int32(hs))
                rk_rope_forward_ref(&yr, x, c, s, Int32(B), Int32(T), Int32(NH), Int32(hs))
                expectClose(y, yr, atol: 1e-6, rtol: 1e-5, "rope forward B\(B) T\(T) NH\(NH) hs\(hs)")
                var dx = randomFloats(x.count, seed: 43), dxr = dx
                rk_rope_backward(&dx, g, c, s, Int32(B), Int32(T), Int32(NH), Int32(hs))
                rk_rope_backward_ref(&dxr, g, c, s, Int32(B), Int32(T), Int32(NH), Int32(hs))
                expectClose(dx, dxr, atol: 1e-6, rtol: 1e-5, "rope backward B\(B) T\(T) NH\(NH) hs\(hs)")
            }
        }
    }

    @Test(arguments: instructionSets)
    func swiGLUMatchesReference(isa: Int32) {
        with(isa) {
            for n in [1, 7, 16, 37, 1001] {
                // Wide inputs, including saturating ones (σ flushes to 0 or 1).
                var gate = randomFloats(n, seed: 51, scale: 12)
                if n > 3 { gate[0] = -100; gate[1] = 100; gate[2] = 0 }
                let up = randomFloats(n, seed: 52, scale: 2), dout = randomFloats(n, seed: 53)
                for withUp in [true, false] {
                    let u = withUp ? up : nil
                    var y = [Float](repeating: 0, count: n), yr = y
                    rk_swiglu_forward(&y, gate, u, n)
                    rk_swiglu_forward_ref(&yr, gate, u, n)
                    expectClose(y, yr, atol: 1e-6, rtol: 1e-5, "swiglu forward n\(n) up \(withUp)")
                    var dg = randomFloats(n, seed: 54), du = randomFloats(n, seed: 55)
                    var dgr = dg, dur = du
                    if withUp {
                        rk_swiglu_backward(&dg, &du, dout, gate, u, n)
                        rk_swiglu_backward_ref(&dgr, &dur, dout, gate, u, n)
                    } else {
                        rk_swiglu_backward(&dg, nil, dout, gate, nil, n)
                        rk_swiglu_backward_ref(&dgr, nil, dout, gate, nil, n)
                    }
                    expectClose(dg, dgr, atol: 1e-6, rtol: 1e-5, "swiglu dgate n\(n) up \(withUp)")
                    expectClose(du, dur, atol: 1e-6, rtol: 1e-5, "swiglu dup n\(n)")
                }
            }
        }
    }

    // MARK: backward against finite differences

    @Test func rmsNormGradients() {
        let (N, C) = (4, 13)
        let x = randomFloats(N * C, seed: 61, scale: 2), w = randomFloats(C, seed: 62), g = randomFloats(N * C, seed: 63)
        var y = [Float](repeating: 0, count: N * C), s = [Float](repeating: 0, count: N)
        rk_rmsnorm_forward(&y, &s, x, w, Int32(N), Int32(C), 1e-6)
        let (X, W, G) = (doubles(x), doubles(w), doubles(g))
        expectClose(y, Self.rmsNorm(X, W, N: N, C: C, eps: 1e-6), atol: 1e-5, rtol: 1e-4, "rmsnorm forward")
        var dx = [Float](repeating: 0, count: N * C), dw = [Float](repeating: 0, count: C)
        rk_rmsnorm_backward(&dx, &dw, g, x, w, s, Int32(N), Int32(C))
        expectClose(
            dx, numericGradient(X) { dot(G, Self.rmsNorm($0, W, N: N, C: C, eps: 1e-6)) }, atol: 1e-4, rtol: 1e-3,
            "rmsnorm dx")
        expectClose(
            dw, numericGradient(W) { dot(G, Self.rmsNorm(X, $0, N: N, C: C, eps: 1e-6)) }, atol: 1e-4, rtol: 1e-3,
            "rmsnorm dw")
    }

    @Test func ropeGradients() {
        let (B, T, NH, hs) = (2, 3, 3, 6)
        let x = randomFloats(B * T * NH * hs, seed: 71, scale: 2), g = randomFloats(x.count, seed: 72)
        let (c, s) = Self.angles(B: B, T: T, hs: hs)
        var y = [Float](repeating: 0, count: x.count), dx = y
        rk_rope_forward(&y, x, c, s, Int32(B), Int32(T), Int32(NH), Int32(hs))
        rk_rope_backward(&dx, g, c, s, Int32(B), Int32(T), Int32(NH), Int32(hs))
        let (X, G, Cd, Sd) = (doubles(x), doubles(g), doubles(c), doubles(s))
        expectClose(
            y, Self.rope(X, cos: Cd, sin: Sd, B: B, T: T, NH: NH, hs: hs), atol: 1e-6, rtol: 1e-5, "rope forward")
        expectClose(
            dx, numericGradient(X) { dot(G, Self.rope($0, cos: Cd, sin: Sd, B: B, T: T, NH: NH, hs: hs)) },
            atol: 1e-5, rtol: 1e-4, "rope dx")
    }

    @Test func swiGLUGradients() {
        let n = 19
        let gate = randomFloats(n, seed: 81, scale: 4), up = randomFloats(n, seed: 82), dout = randomFloats(n, seed: 83)
        var dg = [Float](repeating: 0, count: n), du = dg
        rk_swiglu_backward(&dg, &du, dout, gate, up, n)
        let (Gt, U, D) = (doubles(gate), doubles(up), doubles(dout))
        expectClose(dg, numericGradient(Gt) { dot(D, Self.swiGLU($0, U)) }, atol: 1e-5, rtol: 1e-4, "swiglu dgate")
        expectClose(du, numericGradient(U) { dot(D, Self.swiGLU(Gt, $0)) }, atol: 1e-5, rtol: 1e-4, "swiglu dup")
    }

    @Test(arguments: [(3, 0), (1, 0), (3, 2)])
    func groupedQueryAttentionGradients(kvHeads: Int, window: Int) {
        let (B, NH, T, Tk, hs) = (2, 6, 4, 6, 3)
        let q = randomFloats(B * NH * T * hs, seed: 91, scale: 2), k = randomFloats(B * kvHeads * Tk * hs, seed: 92)
        let v = randomFloats(B * kvHeads * Tk * hs, seed: 93), g = randomFloats(B * NH * T * hs, seed: 94)
        let mask: [Int32] = [1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0]
        let scale = 1 / Float(hs).squareRoot()
        var out = [Float](repeating: 0, count: q.count), lse = [Float](repeating: 0, count: B * NH * T)
        var scratch = [Float](repeating: 0, count: 2 * T * Tk + T)
        var dq = [Float](repeating: 0, count: q.count), dk = [Float](repeating: 0, count: k.count), dv = dk
        rk_attention_forward(
            &out, &lse, q, k, v, mask, Int32(B), Int32(NH), Int32(kvHeads), Int32(T), Int32(Tk), Int32(hs), scale, 1,
            Int32(Tk - T), Int32(window), nil, 0, Int32(B * NH), &scratch)
        rk_attention_backward(
            &dq, &dk, &dv, g, q, k, v, out, lse, mask, Int32(B), Int32(NH), Int32(kvHeads), Int32(T), Int32(Tk),
            Int32(hs), scale, 1, Int32(Tk - T), Int32(window), nil, 0, Int32(B * NH), &scratch)
        let (Q, K, V, G) = (doubles(q), doubles(k), doubles(v), doubles(g))
        func f(_ q: [Double], _ k: [Double], _ v: [Double]) -> [Double] {
            Definitions.attention(
                q, k, v, mask: mask, B: B, NH: NH, T: T, Tk: Tk, hs: hs, causal: true, offset: Tk - T,
                kvHeads: kvHeads, window: window)
        }
        expectClose(out, f(Q, K, V), atol: 1e-5, rtol: 1e-4, "gqa out")
        expectClose(dq, numericGradient(Q) { dot(G, f($0, K, V)) }, atol: 1e-5, rtol: 1e-3, "gqa dq")
        expectClose(dk, numericGradient(K) { dot(G, f(Q, $0, V)) }, atol: 1e-5, rtol: 1e-3, "gqa dk")
        expectClose(dv, numericGradient(V) { dot(G, f(Q, K, $0)) }, atol: 1e-5, rtol: 1e-3, "gqa dv")
    }
}

/// The fused output layer + cross-entropy equals the two ops it replaces: the loss and the gradients of the input,
/// the weight and the bias, with ignored rows, a last chunk shorter than the others, and no row counted at all.
struct LinearCrossEntropyTests {
    /// 70 rows in one chunk: the products go to the kernel for many rows (on AVX-512), as the step's do.
    @Test(arguments: [(11, 1), (11, 4), (11, 64), (70, 256)])
    func equalsLinearThenCrossEntropy(rows N: Int, chunkRows: Int) throws {
        let (C, V) = (13, 37)
        let x = try Tensor.normal([N, C], seed: 1), w = try Tensor.normal([V, C], std: 0.3, seed: 2)
        let b = try Tensor.normal([V], seed: 3)
        let targets = IntTensor((0..<N).map { $0 % 4 == 3 ? -100 : Int32(($0 * 7) % V) })
        func run(_ fused: Bool) throws -> (Float, [Float], [Float], [Float]) {
            let xl = x.requiringGradient(), wl = w.requiringGradient(), bl = b.requiringGradient()
            let loss =
                fused
                ? try Tensor.linearCrossEntropy(xl, weight: wl, bias: bl, targets: targets, chunkRows: chunkRows)
                : try Tensor.crossEntropy(logits: Tensor.linear(xl, weight: wl, bias: bl), targets: targets)
            try loss.backward(gradient: Tensor(scalar: 2.5))
            return (
                try loss.item, xl.gradient?.scalars ?? [], wl.gradient?.scalars ?? [], bl.gradient?.scalars ?? []
            )
        }
        let (l1, dx1, dw1, db1) = try run(true), (l2, dx2, dw2, db2) = try run(false)
        #expect(abs(l1 - l2) < 1e-5)
        expectClose(dx1, dx2, atol: 1e-6, rtol: 1e-4, "dx")
        expectClose(dw1, dw2, atol: 1e-6, rtol: 1e-4, "dw")
        expectClose(db1, db2, atol: 1e-6, rtol: 1e-4, "db")
        #expect(dx1.count == N * C && dw1.count == V * C && db1.count == V)
    }

    @Test func refusesBadTargetsAndCountsNothingAsNaN() throws {
        let x = try Tensor.normal([2, 3], seed: 1), w = try Tensor.normal([5, 3], seed: 2)
        #expect(throws: TensorError.self) { try Tensor.linearCrossEntropy(x, weight: w, targets: IntTensor([0, 5])) }
        #expect(throws: TensorError.self) { try Tensor.linearCrossEntropy(x, weight: w, targets: IntTensor([0])) }
        #expect(try Tensor.linearCrossEntropy(x, weight: w, targets: IntTensor([-100, -100])).item.isNaN)
    }
}
