import CReinsKernels
import Foundation
import Testing
@testable import ReinsTensor
import ReinsTestSupport

/// Double-precision forwards written from the definitions, independent of the kernels.
enum Definitions {
    static func linear(_ x: [Double], _ w: [Double], _ b: [Double]?, N: Int, C: Int, OC: Int, transposed: Bool)
        -> [Double]
    {
        var y = [Double](repeating: 0, count: N * OC)
        for i in 0..<N {
            for o in 0..<OC {
                var s = b?[o] ?? 0
                for c in 0..<C { s += x[i * C + c] * (transposed ? w[c * OC + o] : w[o * C + c]) }
                y[i * OC + o] = s
            }
        }
        return y
    }
    static func gelu(_ x: [Double], tanhForm: Bool) -> [Double] {
        x.map { v in
            tanhForm
                ? 0.5 * v * (1 + Foundation.tanh((2 / Double.pi).squareRoot() * (v + 0.044715 * v * v * v)))
                : 0.5 * v * (1 + erf(v / 2.0.squareRoot()))
        }
    }
    static func layerNorm(_ x: [Double], _ w: [Double], _ b: [Double], N: Int, C: Int, eps: Double) -> [Double] {
        var y = x
        for i in 0..<N {
            let row = Array(x[(i * C)..<((i + 1) * C)])
            let m = row.reduce(0, +) / Double(C)
            let v = row.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(C)
            for j in 0..<C { y[i * C + j] = (row[j] - m) / (v + eps).squareRoot() * w[j] + b[j] }
        }
        return y
    }
    static func softmax(_ x: [Double], N: Int, C: Int) -> [Double] {
        var y = x
        for i in 0..<N {
            let row = x[(i * C)..<((i + 1) * C)], m = row.max()!
            let s = row.map { Foundation.exp($0 - m) }.reduce(0, +)
            for j in 0..<C { y[i * C + j] = Foundation.exp(x[i * C + j] - m) / s }
        }
        return y
    }
    static func crossEntropy(_ x: [Double], _ t: [Int32], N: Int, V: Int) -> Double {
        var total = 0.0, counted = 0
        for i in 0..<N where t[i] != -100 {
            let row = x[(i * V)..<((i + 1) * V)], m = row.max()!
            total += m + Foundation.log(row.map { Foundation.exp($0 - m) }.reduce(0, +)) - x[i * V + Int(t[i])]
            counted += 1
        }
        return total / Double(counted)
    }
    /// With `kvHeads` below NH, query head h of row b reads key/value head `b·NKV + h / (NH / NKV)`; with a `window`
    /// (causal only), query i also needs `j > i + offset - window`.
    static func attention(
        _ q: [Double], _ k: [Double], _ v: [Double], mask: [Int32]?, B: Int, NH: Int, T: Int, Tk: Int, hs: Int,
        causal: Bool, offset: Int, dropout: (p: Float, seed: UInt64)? = nil, kvHeads: Int? = nil, window: Int = 0
    ) -> [Double] {
        var out = [Double](repeating: 0, count: B * NH * T * hs)
        let scale = 1 / Double(hs).squareRoot()
        let NKV = kvHeads ?? NH
        for bh in 0..<(B * NH) {
            let kvh = (bh / NH) * NKV + (bh % NH) / (NH / NKV)
            for i in 0..<T {
                var scores = [Double](repeating: -.infinity, count: Tk)
                for j in 0..<Tk
                where (!causal || (j <= i + offset && (window == 0 || j > i + offset - window)))
                    && (mask?[(bh / NH) * Tk + j] ?? 1) != 0
                {
                    var s = 0.0
                    for c in 0..<hs { s += q[(bh * T + i) * hs + c] * k[(kvh * Tk + j) * hs + c] }
                    scores[j] = s * scale
                }
                let m = scores.max()!
                guard m > -.infinity else { continue }
                let e = scores.map { Foundation.exp($0 - m) }, z = e.reduce(0, +)
                for j in 0..<Tk {
                    // dropout on the probability: kept iff the draw for (bh, i, j) is at least p, kept ones scaled by 1/(1-p)
                    let keep =
                        dropout.map {
                            rk_uniform($0.seed, UInt64((bh * T + i) * Tk + j)) >= $0.p ? 1 / (1 - Double($0.p)) : 0
                        } ?? 1
                    for c in 0..<hs { out[(bh * T + i) * hs + c] += e[j] / z * keep * v[(kvh * Tk + j) * hs + c] }
                }
            }
        }
        return out
    }
}

/// Every backward kernel against central finite differences of the Double definition of its forward.
/// The loss is L = Σ g ⊙ f(x) for a fixed random g, so ∂L/∂x is exactly what backward computes from dout = g.
struct GradientCheckTests {
    @Test(arguments: [false, true])
    func linear(transposed: Bool) {
        let (N, C, OC) = (3, 5, 7)
        let x = randomFloats(N * C, seed: 1), w = randomFloats(OC * C, seed: 2), b = randomFloats(OC, seed: 3),
            g = randomFloats(N * OC, seed: 4)
        var dx = [Float](repeating: 0, count: N * C), dw = [Float](repeating: 0, count: OC * C),
            db = [Float](repeating: 0, count: OC)
        rk_linear_backward(&dx, &dw, &db, g, x, w, Int32(N), Int32(C), Int32(OC), transposed ? 1 : 0)
        let (X, W, Bv, G) = (doubles(x), doubles(w), doubles(b), doubles(g))
        expectClose(
            dx,
            numericGradient(X) { dot(G, Definitions.linear($0, W, Bv, N: N, C: C, OC: OC, transposed: transposed)) },
            atol: 1e-5, rtol: 1e-4, "linear dx")
        expectClose(
            dw,
            numericGradient(W) { dot(G, Definitions.linear(X, $0, Bv, N: N, C: C, OC: OC, transposed: transposed)) },
            atol: 1e-5, rtol: 1e-4, "linear dW")
        expectClose(
            db,
            numericGradient(Bv) { dot(G, Definitions.linear(X, W, $0, N: N, C: C, OC: OC, transposed: transposed)) },
            atol: 1e-5, rtol: 1e-4, "linear db")
    }

    @Test(arguments: [Int32(0), Int32(1)])
    func gelu(approx: Int32) {
        let (N, C) = (3, 11)
        let x = randomFloats(N * C, seed: 5, scale: 5), b = randomFloats(C, seed: 6), g = randomFloats(N * C, seed: 7)
        var dx = [Float](repeating: 0, count: N * C), db = [Float](repeating: 0, count: C)
        rk_bias_gelu_backward(&dx, &db, g, x, b, Int32(N), Int32(C), approx)
        let (X, Bv, G) = (doubles(x), doubles(b), doubles(g))
        func f(_ x: [Double], _ b: [Double]) -> Double {
            dot(G, Definitions.gelu(x.indices.map { x[$0] + b[$0 % C] }, tanhForm: approx == 1))
        }
        expectClose(dx, numericGradient(X) { f($0, Bv) }, atol: 1e-5, rtol: 1e-4, "bias-gelu dx")
        expectClose(db, numericGradient(Bv) { f(X, $0) }, atol: 1e-5, rtol: 1e-4, "bias-gelu dbias")
        var dx2 = [Float](repeating: 0, count: N * C)
        rk_gelu_backward(&dx2, g, x, N * C, approx)
        expectClose(
            dx2, numericGradient(X) { dot(G, Definitions.gelu($0, tanhForm: approx == 1)) }, atol: 1e-5, rtol: 1e-4,
            "gelu dx")
    }

    @Test func layerNorm() {
        let (N, C) = (4, 13)
        let x = randomFloats(N * C, seed: 8, scale: 2), w = randomFloats(C, seed: 9), b = randomFloats(C, seed: 10),
            g = randomFloats(N * C, seed: 11)
        var y = [Float](repeating: 0, count: N * C), m = [Float](repeating: 0, count: N), s = m
        rk_layernorm_forward(&y, &m, &s, x, w, b, Int32(N), Int32(C), 1e-5)
        var dx = [Float](repeating: 0, count: N * C), dw = [Float](repeating: 0, count: C), db = dw
        rk_layernorm_backward(&dx, &dw, &db, g, x, w, m, s, Int32(N), Int32(C))
        let (X, W, Bv, G) = (doubles(x), doubles(w), doubles(b), doubles(g))
        expectClose(
            dx, numericGradient(X) { dot(G, Definitions.layerNorm($0, W, Bv, N: N, C: C, eps: 1e-5)) }, atol: 1e-4,
            rtol: 1e-3, "layernorm dx")
        expectClose(
            dw, numericGradient(W) { dot(G, Definitions.layerNorm(X, $0, Bv, N: N, C: C, eps: 1e-5)) }, atol: 1e-4,
            rtol: 1e-3, "layernorm dw")
        expectClose(
            db, numericGradient(Bv) { dot(G, Definitions.layerNorm(X, W, $0, N: N, C: C, eps: 1e-5)) }, atol: 1e-4,
            rtol: 1e-3, "layernorm db")
    }

    @Test func softmaxAndCrossEntropy() {
        let (N, C) = (3, 9)
        let x = randomFloats(N * C, seed: 12, scale: 3), g = randomFloats(N * C, seed: 13)
        var y = [Float](repeating: 0, count: N * C), dx = y
        rk_softmax_forward(&y, x, Int32(N), Int32(C))
        rk_softmax_backward(&dx, g, y, Int32(N), Int32(C))
        let (X, G) = (doubles(x), doubles(g))
        expectClose(
            dx, numericGradient(X) { dot(G, Definitions.softmax($0, N: N, C: C)) }, atol: 1e-5, rtol: 1e-4, "softmax dx"
        )

        let targets: [Int32] = [4, -100, 8]
        var losses = [Float](repeating: 0, count: N), lse = losses, dl = [Float](repeating: 0, count: N * C)
        _ = rk_crossentropy_forward(&losses, &lse, x, targets, Int32(N), Int32(C), -100, nil)
        rk_crossentropy_backward(&dl, x, lse, targets, 1.0 / 2.0, Int32(N), Int32(C), -100)
        expectClose(
            dl, numericGradient(X) { Definitions.crossEntropy($0, targets, N: N, V: C) }, atol: 1e-5, rtol: 1e-4,
            "cross-entropy dlogits")
    }

    @Test func embedding() {
        let (V, C) = (6, 5), ids: [Int32] = [2, 5, 2, 0]
        let table = randomFloats(V * C, seed: 14), g = randomFloats(ids.count * C, seed: 15)
        var dt = [Float](repeating: 0, count: V * C)
        rk_embedding_backward(&dt, g, ids, Int32(ids.count), Int32(V), Int32(C), -1)
        let G = doubles(g)
        let numeric = numericGradient(doubles(table)) { t in
            dot(G, ids.flatMap { id in (0..<C).map { t[Int(id) * C + $0] } })
        }
        expectClose(dt, numeric, atol: 1e-6, rtol: 1e-5, "embedding dtable")
    }

    @Test(arguments: [
        (true, true, false), (true, false, false), (false, true, false), (true, true, true), (false, true, true),
    ])
    func attention(causal: Bool, masked: Bool, dropping: Bool) {
        let drop = rk_attention_dropout(p: 0.3, seed: 77, offset: 0)
        let (B, NH, T, Tk, hs) = (2, 2, 3, 5, 3)
        let q = randomFloats(B * NH * T * hs, seed: 16, scale: 2),
            k = randomFloats(B * NH * Tk * hs, seed: 17, scale: 2)
        let v = randomFloats(B * NH * Tk * hs, seed: 18), g = randomFloats(B * NH * T * hs, seed: 19)
        let mask: [Int32]? = masked ? [1, 1, 1, 1, 1, 1, 0, 1, 1, 0] : nil
        let scale = 1 / Float(hs).squareRoot()
        var out = [Float](repeating: 0, count: q.count), lse = [Float](repeating: 0, count: B * NH * T)
        var scratch = [Float](repeating: 0, count: 2 * T * Tk + T)
        var dq = [Float](repeating: 0, count: q.count), dk = [Float](repeating: 0, count: k.count), dv = dk
        withUnsafePointer(to: drop) { d in
            let d = dropping ? d : nil
            rk_attention_forward(
                &out, &lse, q, k, v, mask, Int32(B), Int32(NH), Int32(NH), Int32(T), Int32(Tk), Int32(hs), scale,
                causal ? 1 : 0,
                Int32(Tk - T), 0, d, 0, Int32(B * NH), &scratch)
            rk_attention_backward(
                &dq, &dk, &dv, g, q, k, v, out, lse, mask, Int32(B), Int32(NH), Int32(NH), Int32(T), Int32(Tk),
                Int32(hs), scale, causal ? 1 : 0, Int32(Tk - T), 0, d, 0, Int32(B * NH), &scratch)
        }
        let (Q, K, Vv, G) = (doubles(q), doubles(k), doubles(v), doubles(g))
        func f(_ q: [Double], _ k: [Double], _ v: [Double]) -> Double {
            dot(
                G,
                Definitions.attention(
                    q, k, v, mask: mask, B: B, NH: NH, T: T, Tk: Tk, hs: hs, causal: causal, offset: Tk - T,
                    dropout: dropping ? (drop.p, drop.seed) : nil))
        }
        expectClose(
            out,
            Definitions.attention(
                Q, K, Vv, mask: mask, B: B, NH: NH, T: T, Tk: Tk, hs: hs, causal: causal, offset: Tk - T,
                dropout: dropping ? (drop.p, drop.seed) : nil
            ).map(Float.init), atol: 1e-5, rtol: 1e-4, "attention out")
        expectClose(dq, numericGradient(Q) { f($0, K, Vv) }, atol: 1e-5, rtol: 1e-3, "attention dq")
        expectClose(dk, numericGradient(K) { f(Q, $0, Vv) }, atol: 1e-5, rtol: 1e-3, "attention dk")
        expectClose(dv, numericGradient(Vv) { f(Q, K, $0) }, atol: 1e-5, rtol: 1e-3, "attention dv")
    }

    @Test func lora() {
        let (N, C, OC, r) = (4, 5, 6, 2)
        let s: Float = 1.5
        let x = randomFloats(N * C, seed: 20), w = randomFloats(OC * C, seed: 21), a = randomFloats(r * C, seed: 22)
        let bm = randomFloats(OC * r, seed: 23), g = randomFloats(N * OC, seed: 24)
        var y = [Float](repeating: 0, count: N * OC), xa = [Float](repeating: 0, count: N * r), scratch = xa
        rk_lora_forward(&y, &xa, x, w, nil, a, bm, Int32(N), Int32(C), Int32(OC), Int32(r), s, 0)
        var dx = [Float](repeating: 0, count: N * C), dA = [Float](repeating: 0, count: r * C),
            dB = [Float](repeating: 0, count: OC * r)
        rk_lora_backward(
            &dx, nil, nil, &dA, &dB, g, x, w, a, bm, xa, &scratch, Int32(N), Int32(C), Int32(OC), Int32(r), s, 0)
        let (X, W, A, Bm, G) = (doubles(x), doubles(w), doubles(a), doubles(bm), doubles(g))
        func f(_ x: [Double], _ a: [Double], _ bm: [Double]) -> Double {
            let base = Definitions.linear(x, W, nil, N: N, C: C, OC: OC, transposed: false)
            let low = Definitions.linear(
                Definitions.linear(x, a, nil, N: N, C: C, OC: r, transposed: false), bm, nil, N: N, C: r, OC: OC,
                transposed: false)
            return dot(G, zip(base, low).map { $0 + Double(s) * $1 })
        }
        expectClose(dx, numericGradient(X) { f($0, A, Bm) }, atol: 1e-5, rtol: 1e-4, "lora dx")
        expectClose(dA, numericGradient(A) { f(X, $0, Bm) }, atol: 1e-5, rtol: 1e-4, "lora dA")
        expectClose(dB, numericGradient(Bm) { f(X, A, $0) }, atol: 1e-5, rtol: 1e-4, "lora dB")
    }
}
