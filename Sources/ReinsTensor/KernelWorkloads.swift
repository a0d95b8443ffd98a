import CReinsKernels
import COpenBLAS
import Foundation

/// One kernel workload at GPT-2-small sizes, used by `reins kernels` and the Benchmarks package: it first verifies the
/// fast path against the scalar reference kernel on the same inputs, then runs the timed part.
public struct KernelWorkload: @unchecked Sendable {
    /// What is timed, with its shape.
    public let name: String
    /// Floating-point operations per run, where meaningful (for GFLOP/s), else 0.
    public let flops: Double
    /// The largest relative difference that counts as agreement.
    public let tolerance: Float
    /// Returns max |fast - reference| / (1 + |reference|) over the outputs.
    public let verify: () throws -> Float
    /// The timed work.
    public let run: () throws -> Void
}

func maxRelativeDifference(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var worst: Float = 0
    for i in 0..<n { worst = Swift.max(worst, abs(a[i] - b[i]) / (1 + abs(b[i]))) }
    return worst
}

extension KernelWorkload {
    /// Matmul through ``Tensor/matmul(_:_:transposeA:transposeB:)`` with the weight as `[out, in]` (transpose flag).
    public static func matmul(rows: Int, inputs: Int, outputs: Int) throws -> KernelWorkload {
        try product("matmul", rows: rows, inputs: inputs, outputs: outputs) { x, w in
            try Tensor.matmul(x, w, transposeB: true)
        }
    }

    /// A linear layer through ``Tensor/linear(_:weight:bias:weightTransposed:)`` (weight `[out, in]`): from
    /// ``ManyRowProducts/minimumRows`` rows on an AVX-512 CPU, Reins's kernel for many rows, else OpenBLAS.
    public static func linear(rows: Int, inputs: Int, outputs: Int) throws -> KernelWorkload {
        try product("linear", rows: rows, inputs: inputs, outputs: outputs) { x, w in try Tensor.linear(x, weight: w) }
    }

    /// `x·Wᵀ` through `compute(x, W)` (W `[out, in]`), verified against `rk_linear_forward_ref`.
    private static func product(
        _ name: String, rows: Int, inputs: Int, outputs: Int, _ compute: @escaping (Tensor, Tensor) throws -> Tensor
    ) throws -> KernelWorkload {
        let x = try Tensor.normal([rows, inputs], seed: 1),
            w = try Tensor.normal([outputs, inputs], std: 0.02, seed: 2)
        return KernelWorkload(
            name: "\(name) \(rows)x\(inputs) -> \(outputs)", flops: 2.0 * Double(rows * inputs * outputs),
            tolerance: 1e-4,
            verify: {
                let y = try compute(x, w)
                var r = [Float](repeating: 0, count: rows * outputs)
                rk_linear_forward_ref(
                    &r, x.storage.pointer, w.storage.pointer, nil, Int32(rows), Int32(inputs), Int32(outputs), 0)
                return maxRelativeDifference(y.storage.pointer, r, r.count)
            },
            run: { _ = try compute(x, w) })
    }

    /// Raw `cblas_sgemm` on the same shapes as ``matmul(rows:inputs:outputs:)`` (the ceiling ReinsTensor is held to).
    public static func rawSgemm(rows: Int, inputs: Int, outputs: Int) throws -> KernelWorkload {
        let x = try Tensor.normal([rows, inputs], seed: 1),
            w = try Tensor.normal([outputs, inputs], std: 0.02, seed: 2)
        let y = try Tensor.zeros([rows, outputs])
        return KernelWorkload(
            name: "cblas_sgemm \(rows)x\(inputs) -> \(outputs)", flops: 2.0 * Double(rows * inputs * outputs),
            tolerance: 0,
            verify: { 0 },
            run: {
                cblas_sgemm(
                    CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(outputs), Int32(inputs), 1,
                    x.storage.pointer, Int32(inputs), w.storage.pointer, Int32(inputs), 0, y.storage.pointer,
                    Int32(outputs))
            })
    }

    /// Causal self-attention `[B, NH, T, hs]`, forward only or forward + backward (dQ, dK, dV); with `kvHeads` below
    /// `NH`, grouped-query attention (keys and values `[B, kvHeads, T, hs]`).
    public static func attention(
        batch B: Int, heads NH: Int, kvHeads: Int? = nil, length T: Int, headSize hs: Int, backward: Bool
    ) throws -> KernelWorkload {
        let NKV = kvHeads ?? NH
        let q = try Tensor.normal([B, NH, T, hs], seed: 3), k = try Tensor.normal([B, NKV, T, hs], seed: 4),
            v = try Tensor.normal([B, NKV, T, hs], seed: 5)
        let g = try Tensor.normal([B, NH, T, hs], seed: 6)
        let flops = 4.0 * Double(B * NH * T * T * hs) * (backward ? 3.5 : 1) / 2  // causal: about half the scores matter
        func pass() throws -> (Tensor, Tensor, Tensor, Tensor) {
            let (ql, kl, vl) =
                backward ? (q.requiringGradient(), k.requiringGradient(), v.requiringGradient()) : (q, k, v)
            let out = try Tensor.attention(query: ql, key: kl, value: vl, causal: true)
            if backward { try out.backward(gradient: g) }
            return (out, ql, kl, vl)
        }
        return KernelWorkload(
            name:
                "attention \(backward ? "fwd+bwd" : "fwd") B\(B) NH\(NH)\(NKV == NH ? "" : " NKV\(NKV)") T\(T) hs\(hs) causal",
            flops: flops,
            tolerance: 1e-4,
            verify: {
                let (out, ql, kl, vl) = try pass()
                let n = B * NH * T * hs
                var r = [Float](repeating: 0, count: n), lse = [Float](repeating: 0, count: B * NH * T)
                rk_attention_forward_ref(
                    &r, &lse, q.storage.pointer, k.storage.pointer, v.storage.pointer, nil, Int32(B), Int32(NH),
                    Int32(NKV), Int32(T), Int32(T), Int32(hs), 1 / Float(hs).squareRoot(), 1, 0, 0, nil)
                var worst = maxRelativeDifference(out.storage.pointer, r, n)
                if backward, let dq = ql.gradient, let dk = kl.gradient, let dv = vl.gradient {
                    let nkv = B * NKV * T * hs
                    var rq = [Float](repeating: 0, count: n), rk = [Float](repeating: 0, count: nkv), rv = rk
                    rk_attention_backward_ref(
                        &rq, &rk, &rv, g.storage.pointer, q.storage.pointer, k.storage.pointer, v.storage.pointer, r,
                        lse, nil, Int32(B), Int32(NH), Int32(NKV), Int32(T), Int32(T), Int32(hs),
                        1 / Float(hs).squareRoot(), 1, 0, 0, nil)
                    worst = Swift.max(
                        worst, maxRelativeDifference(dq.storage.pointer, rq, n),
                        maxRelativeDifference(dk.storage.pointer, rk, nkv),
                        maxRelativeDifference(dv.storage.pointer, rv, nkv))
                }
                return worst
            },
            run: { _ = try pass() })
    }

    /// Layer norm over `[rows, C]`, forward + backward (dx, dw, db).
    public static func layerNorm(rows: Int, channels C: Int) throws -> KernelWorkload {
        let x = try Tensor.normal([rows, C], seed: 7), w = try Tensor.normal([C], seed: 8),
            b = try Tensor.normal([C], seed: 9)
        let g = try Tensor.normal([rows, C], seed: 10)
        func pass() throws -> (Tensor, Tensor) {
            let xl = x.requiringGradient()
            let y = try Tensor.layerNorm(xl, weight: w.requiringGradient(), bias: b.requiringGradient())
            try y.backward(gradient: g)
            return (y, xl)
        }
        return KernelWorkload(
            name: "layer norm fwd+bwd \(rows)x\(C)", flops: 0, tolerance: 1e-4,
            verify: {
                let (y, xl) = try pass()
                var r = [Float](repeating: 0, count: rows * C), m = [Float](repeating: 0, count: rows), s = m, dx = r
                rk_layernorm_forward_ref(
                    &r, &m, &s, x.storage.pointer, w.storage.pointer, b.storage.pointer, Int32(rows), Int32(C), 1e-5)
                rk_layernorm_backward_ref(
                    &dx, nil, nil, g.storage.pointer, x.storage.pointer, w.storage.pointer, m, s, Int32(rows), Int32(C))
                return Swift.max(
                    maxRelativeDifference(y.storage.pointer, r, r.count),
                    maxRelativeDifference(xl.gradient!.storage.pointer, dx, dx.count))
            },
            run: { _ = try pass() })
    }

    /// GELU (tanh form) over `[rows, C]`, forward + backward.
    public static func gelu(rows: Int, channels C: Int) throws -> KernelWorkload {
        let x = try Tensor.normal([rows, C], std: 2, seed: 11), g = try Tensor.normal([rows, C], seed: 12)
        func pass() throws -> (Tensor, Tensor) {
            let xl = x.requiringGradient()
            let y = xl.gelu(.tanh)
            try y.backward(gradient: g)
            return (y, xl)
        }
        return KernelWorkload(
            name: "GELU (tanh) fwd+bwd \(rows)x\(C)", flops: 0, tolerance: 1e-5,
            verify: {
                let (y, xl) = try pass()
                let n = rows * C
                var r = [Float](repeating: 0, count: n), dx = r
                rk_gelu_forward_ref(&r, x.storage.pointer, n, 1)
                rk_gelu_backward_ref(&dx, g.storage.pointer, x.storage.pointer, n, 1)
                return Swift.max(
                    maxRelativeDifference(y.storage.pointer, r, n),
                    maxRelativeDifference(xl.gradient!.storage.pointer, dx, n))
            },
            run: { _ = try pass() })
    }

    /// RMSNorm over `[rows, C]`, forward + backward (dX).
    public static func rmsNorm(rows: Int, channels C: Int) throws -> KernelWorkload {
        let x = try Tensor.normal([rows, C], seed: 31), w = try Tensor.normal([C], seed: 32)
        let g = try Tensor.normal([rows, C], seed: 33)
        func pass() throws -> (Tensor, Tensor) {
            let xl = x.requiringGradient()
            let y = try Tensor.rmsNorm(xl, weight: w.requiringGradient(), eps: 1e-5)
            try y.backward(gradient: g)
            return (y, xl)
        }
        return KernelWorkload(
            name: "RMSNorm fwd+bwd \(rows)x\(C)", flops: 0, tolerance: 1e-4,
            verify: {
                let (y, xl) = try pass()
                var r = [Float](repeating: 0, count: rows * C), s = [Float](repeating: 0, count: rows), dx = r
                rk_rmsnorm_forward_ref(&r, &s, x.storage.pointer, w.storage.pointer, Int32(rows), Int32(C), 1e-5)
                rk_rmsnorm_backward_ref(
                    &dx, nil, g.storage.pointer, x.storage.pointer, w.storage.pointer, s, Int32(rows), Int32(C))
                return Swift.max(
                    maxRelativeDifference(y.storage.pointer, r, r.count),
                    maxRelativeDifference(xl.gradient!.storage.pointer, dx, dx.count))
            },
            run: { _ = try pass() })
    }

    /// SwiGLU `silu(gate)·up` over `[rows, C]`, forward + backward (both inputs).
    public static func swiGLU(rows: Int, channels C: Int) throws -> KernelWorkload {
        let gate = try Tensor.normal([rows, C], std: 2, seed: 34), up = try Tensor.normal([rows, C], seed: 35)
        let g = try Tensor.normal([rows, C], seed: 36)
        func pass() throws -> (Tensor, Tensor, Tensor) {
            let gl = gate.requiringGradient(), ul = up.requiringGradient()
            let y = try Tensor.swiGLU(gate: gl, up: ul)
            try y.backward(gradient: g)
            return (y, gl, ul)
        }
        return KernelWorkload(
            name: "SwiGLU fwd+bwd \(rows)x\(C)", flops: 0, tolerance: 1e-5,
            verify: {
                let (y, gl, ul) = try pass()
                let n = rows * C
                var r = [Float](repeating: 0, count: n), dg = r, du = r
                rk_swiglu_forward_ref(&r, gate.storage.pointer, up.storage.pointer, n)
                rk_swiglu_backward_ref(&dg, &du, g.storage.pointer, gate.storage.pointer, up.storage.pointer, n)
                return Swift.max(
                    maxRelativeDifference(y.storage.pointer, r, n),
                    maxRelativeDifference(gl.gradient!.storage.pointer, dg, n),
                    maxRelativeDifference(ul.gradient!.storage.pointer, du, n))
            },
            run: { _ = try pass() })
    }

    /// Softmax cross-entropy over `[rows, V]`, forward + backward.
    public static func crossEntropy(rows: Int, vocabulary V: Int) throws -> KernelWorkload {
        let logits = try Tensor.normal([rows, V], std: 2, seed: 13)
        let targets = IntTensor((0..<rows).map { Int32(($0 * 7919) % V) })
        func pass() throws -> (Tensor, Tensor) {
            let l = logits.requiringGradient()
            let loss = try Tensor.crossEntropy(logits: l, targets: targets)
            try loss.backward()
            return (loss, l)
        }
        return KernelWorkload(
            name: "softmax cross-entropy fwd+bwd \(rows)x\(V)", flops: 0, tolerance: 1e-5,
            verify: {
                let (loss, l) = try pass()
                var losses = [Float](repeating: 0, count: rows), lse = losses,
                    d = [Float](repeating: 0, count: rows * V)
                _ = rk_crossentropy_forward_ref(
                    &losses, &lse, logits.storage.pointer, targets.values, Int32(rows), Int32(V), -100, nil)
                rk_crossentropy_backward_ref(
                    &d, logits.storage.pointer, lse, targets.values, 1 / Float(rows), Int32(rows), Int32(V), -100)
                let mean = losses.reduce(0, +) / Float(rows)
                return Swift.max(
                    abs(try loss.item - mean) / (1 + abs(mean)),
                    maxRelativeDifference(l.gradient!.storage.pointer, d, d.count))
            },
            run: { _ = try pass() })
    }

    /// A linear layer forward + backward with a frozen weight: LoRA of rank `rank`, or the plain base layer when
    /// `rank == 0` (the base is then trainable, as in full fine-tuning).
    public static func lora(rows: Int, inputs C: Int, outputs OC: Int, rank r: Int) throws -> KernelWorkload {
        let x = try Tensor.normal([rows, C], seed: 14), w = try Tensor.normal([OC, C], std: 0.02, seed: 15),
            b = try Tensor.normal([OC], seed: 16)
        let a = try Tensor.normal([Swift.max(r, 1), C], std: 0.02, seed: 17),
            bm = try Tensor.normal([OC, Swift.max(r, 1)], std: 0.02, seed: 18)
        let g = try Tensor.normal([rows, OC], seed: 19)
        func pass() throws -> Tensor {
            let xl = x.requiringGradient()
            let y =
                r == 0
                ? try Tensor.linear(xl, weight: w.requiringGradient(), bias: b.requiringGradient())
                : try Tensor.loraLinear(
                    xl, weight: w, bias: b, loraA: a.requiringGradient(), loraB: bm.requiringGradient(), scale: 2)
            try y.backward(gradient: g)
            return y
        }
        return KernelWorkload(
            name: r == 0
                ? "linear fwd+bwd (trainable) \(rows)x\(C) -> \(OC)"
                : "LoRA r=\(r) fwd+bwd (frozen base) \(rows)x\(C) -> \(OC)",
            flops: 0, tolerance: 1e-4,
            verify: {
                let y = try pass()
                var ref = [Float](repeating: 0, count: rows * OC),
                    xa = [Float](repeating: 0, count: rows * Swift.max(r, 1))
                if r == 0 {
                    rk_linear_forward_ref(
                        &ref, x.storage.pointer, w.storage.pointer, b.storage.pointer, Int32(rows), Int32(C), Int32(OC),
                        0)
                } else {
                    rk_lora_forward_ref(
                        &ref, &xa, x.storage.pointer, w.storage.pointer, b.storage.pointer, a.storage.pointer,
                        bm.storage.pointer,
                        Int32(rows), Int32(C), Int32(OC), Int32(r), 2, 0)
                }
                return maxRelativeDifference(y.storage.pointer, ref, ref.count)
            },
            run: { _ = try pass() })
    }

    /// One AdamW step over `count` parameters in one flat buffer.
    public static func adamw(count n: Int) throws -> KernelWorkload {
        let p = Parameter("flat", try Tensor.normal([n], std: 0.02, seed: 20))
        let grad = try Tensor.normal([n], std: 0.01, seed: 21)
        try (p.value * grad).sum().backward()  // gives p the gradient `grad`
        let opt = AdamW(learningRate: 1e-4, weightDecay: 0.1)
        return KernelWorkload(
            name: "AdamW step over \(n / 1_000_000)M parameters", flops: 0, tolerance: 1e-6,
            verify: {
                let m = 100_003
                var pr = Array(UnsafeBufferPointer(start: p.value.storage.pointer, count: m))
                var mr = [Float](repeating: 0, count: m), vr = mr
                let check = AdamW(learningRate: 1e-4, weightDecay: 0.1)
                let sample = Parameter("sample", try Tensor(shape: [m], values: pr))
                try
                    (sample.value
                    * Tensor(shape: [m], values: Array(UnsafeBufferPointer(start: grad.storage.pointer, count: m))))
                    .sum().backward()
                check.update([sample])
                rk_adamw_step_ref(
                    &pr, &mr, &vr, grad.storage.pointer, m, 1e-4, 0.9, 0.999, 1e-8, 0.1, 1 - 0.9, 1 - 0.999, 1)
                return maxRelativeDifference(sample.value.storage.pointer, pr, m)
            },
            run: { opt.update([p]) })
    }

    /// The integer products of a quantized base's decoding and serving (`rk_qmatmul_q8_packed8`): `rows` activation
    /// rows, in 8-bit blocks, against a `[outputs, inputs]` weight of block type `type` interleaved by 8 rows, on one
    /// thread. The run goes through `copies` distinct copies of the weight in turn (35 MB of Q4_1 for 64 at 576 x
    /// 1536: out of L2, as a model's layers are; from memory, or from an L3 that large); the check compares the first
    /// against the scalar reference. Q5_K, which Reins does not write, is the Q4_K quantization with fifth bits drawn
    /// at random.
    public static func interleaved(_ type: GGMLType, rows N: Int, inputs C: Int, outputs OC: Int, copies: Int = 64)
        throws -> KernelWorkload
    {
        let weight = try Tensor.normal([OC, C], std: 0.02, seed: 30)
        let matrix = try (type == .q5_K ? q5KWithRandomFifthBits(weight)
            : [.iq4_NL, .iq4_XS, .q2_K, .q3_K].contains(type) ? randomBlocks(type, rows: OC, columns: C)
            : QuantizedMatrix(quantizing: weight, type: type)).interleavedByRows()
        guard matrix.isInterleaved, N > 0, copies > 0 else {
            throw TensorError.invalidArgument(
                operation: "KernelWorkload.interleaved", detail: "\(N) rows against \(type) [\(OC), \(C)] x \(copies)")
        }
        let blockType = Int32(type.rawValue)
        let bytes = matrix.byteCount
        var weights = [UInt8](repeating: 0, count: bytes * copies)
        weights.withUnsafeMutableBytes { dst in
            matrix.withBytes { src in
                for c in 0..<copies { (dst.baseAddress! + c * bytes).copyMemory(from: src, byteCount: bytes) }
            }
        }
        let x = try Tensor.normal([N, C], seed: 31)
        var xq = [rk_q8_block](repeating: rk_q8_block(), count: N * C / 32)
        _ = rk_quantize_q8(&xq, x.storage.pointer, Int32(N), Int32(C))
        let blocks = xq
        var out = [Float](repeating: 0, count: N * OC)
        return KernelWorkload(
            name: "\(type) interleaved \(N)x\(C) -> \(OC), one thread", flops: 2.0 * Double(N * C * OC * copies),
            tolerance: 1e-4,
            verify: {
                var fast = [Float](repeating: 0, count: N * OC), reference = fast
                weights.withUnsafeBytes { w in
                    _ = rk_qmatmul_q8_packed8(&fast, blocks, w.baseAddress!, blockType, Int32(N), Int32(C), Int32(OC), 0, Int32(OC / 8))
                    _ = rk_qmatmul_q8_packed8_ref(
                        &reference, blocks, w.baseAddress!, blockType, Int32(N), Int32(C), Int32(OC), 0, Int32(OC / 8))
                }
                return maxRelativeDifference(fast, reference, N * OC)
            },
            run: {
                weights.withUnsafeBytes { w in
                    for c in 0..<copies {
                        _ = rk_qmatmul_q8_packed8(
                            &out, blocks, w.baseAddress! + c * bytes, blockType, Int32(N), Int32(C), Int32(OC), 0, Int32(OC / 8))
                    }
                }
            })
    }

    /// `weight` as Q5_K blocks: each Q4_K block (d, dmin, 12 scale bytes, 128 bytes of nibbles) with 32 bytes of
    /// fifth bits put in before its nibbles, as Q5_K lays them out.
    static func q5KWithRandomFifthBits(_ weight: Tensor) throws -> QuantizedMatrix {
        let q4 = try QuantizedMatrix(quantizing: weight, type: .q4_K)
        guard let blockBytes = GGMLType.q4_K.blockBytes, let values = GGMLType.q4_K.blockElements else {
            throw TensorError.invalidArgument(operation: "KernelWorkload.q5K", detail: "Q4_K has no block layout")
        }
        // A Q4_K block is its header (d, dmin, 12 bytes of scales) and 4 bits per value; Q5_K puts one bit per value
        // between the two.
        let header = blockBytes - values / 2, fifthBits = values / 8
        var rng = SeededGenerator(seed: 32)
        var out = Data()
        q4.withBytes { src in
            let blocks = UnsafeRawBufferPointer(start: src, count: q4.byteCount)
            for k in stride(from: 0, to: blocks.count, by: blockBytes) {
                out.append(contentsOf: blocks[k..<(k + header)])
                out.append(contentsOf: (0..<fifthBits).map { _ in UInt8.random(in: 0...255, using: &rng) })
                out.append(contentsOf: blocks[(k + header)..<(k + blockBytes)])
            }
        }
        return try QuantizedMatrix(type: .q5_K, rows: q4.rows, columns: q4.columns, data: out)
    }

    /// Blocks of random bytes (values, sub-block scales and minimums) with every half-precision scale
    /// (``GGMLType/halfScaleOffsets``) 2⁻¹⁰: for the types Reins reads but does not quantize to (IQ4_NL, IQ4_XS,
    /// Q2_K, Q3_K).
    static func randomBlocks(_ type: GGMLType, rows: Int, columns: Int) throws -> QuantizedMatrix {
        guard let halves = type.halfScaleOffsets, let blockBytes = type.blockBytes, let values = type.blockElements,
            columns % values == 0
        else {
            throw TensorError.invalidArgument(
                operation: "KernelWorkload.randomBlocks", detail: "\(type) [\(rows), \(columns)]")
        }
        var rng = SeededGenerator(seed: 33)
        var out = Data()
        for _ in 0..<(rows * columns / values) {
            var block = (0..<blockBytes).map { _ in UInt8.random(in: 0...255, using: &rng) }
            for at in halves { (block[at], block[at + 1]) = (0x00, 0x14) }  // 2⁻¹⁰ in half precision, little-endian
            out.append(contentsOf: block)
        }
        return try QuantizedMatrix(type: type, rows: rows, columns: columns, data: out)
    }

    /// `interleaved(.q4_1, ...)`.
    public static func interleavedQ4_1(rows N: Int, inputs C: Int, outputs OC: Int, copies: Int = 64) throws
        -> KernelWorkload
    {
        try interleaved(.q4_1, rows: N, inputs: C, outputs: OC, copies: copies)
    }

    /// The mixed-adapter LoRA update of a server's decoding step in half precision (`rk_lora_rows_f16`): `rows` rows,
    /// each with an adapter of its own (rank `rank`, B transposed), `copies` sets of such adapters in turn (a step goes
    /// through a layer's modules one after another, each adapter's weights read once).
    public static func loraRowsHalf(rows N: Int, inputs C: Int, outputs OC: Int, rank r: Int, copies: Int = 32) throws
        -> KernelWorkload
    {
        guard N > 0, C > 0, OC > 0, r > 0, copies > 0 else {
            throw TensorError.invalidArgument(
                operation: "KernelWorkload.loraRowsHalf", detail: "\(N) rows, \(C) -> \(OC), rank \(r) x \(copies)")
        }
        let adapters = N * copies
        let tables = try AdapterTables<UInt16>(
            a: Tensor.normal([adapters, r * C], std: 0.05, seed: 32).scalars.map(rk_float_to_half),
            b: Tensor.normal([adapters, r * OC], std: 0.05, seed: 33).scalars.map(rk_float_to_half),
            rows: N, copies: copies, aStride: r * C, bStride: r * OC)
        let x = try Tensor.normal([N, C], seed: 34).scalars
        let ranks = [Int32](repeating: Int32(r), count: N), scales = [Float](repeating: 2, count: N)
        var y = [Float](repeating: 0, count: N * OC), work = [Float](repeating: 0, count: r)
        // Row i of copy c reads adapter c·N + i; the pointer tables are built once, outside the timed loop.
        func update(_ y: inout [Float], copy c: Int, reference: Bool) {
            let (ap, bp) = (tables.a[c], tables.b[c])
            if reference {
                rk_lora_rows_f16_ref(&y, x, Int32(N), 1, Int32(C), Int32(OC), ap, bp, ranks, scales, &work)
            } else {
                rk_lora_rows_f16(&y, x, Int32(N), 1, Int32(C), Int32(OC), ap, bp, ranks, scales, &work)
            }
        }
        return KernelWorkload(
            name: "LoRA rows f16 \(N)x\(C) -> \(OC) r\(r), one thread",
            flops: 2.0 * Double(N * r * (C + OC) * copies), tolerance: 1e-4,
            verify: {
                var fast = [Float](repeating: 0, count: N * OC), reference = fast
                update(&fast, copy: copies - 1, reference: false)
                update(&reference, copy: copies - 1, reference: true)
                return maxRelativeDifference(fast, reference, N * OC)
            },
            run: { for c in 0..<copies { update(&y, copy: c, reference: false) } })
    }

    /// The same update from 8-bit copies (`rk_lora_rows_q8`: A and Bᵀ in 8-bit integers, a scale per row of each).
    public static func loraRowsInt8(rows N: Int, inputs C: Int, outputs OC: Int, rank r: Int, copies: Int = 32) throws
        -> KernelWorkload
    {
        try loraRowsInteger(bits: 8, rows: N, inputs: C, outputs: OC, rank: r, copies: copies)
    }

    /// The same update from 4-bit copies (`rk_lora_rows_q4`: A and Bᵀ in 4-bit integers, a scale per group of 32).
    public static func loraRowsInt4(rows N: Int, inputs C: Int, outputs OC: Int, rank r: Int, copies: Int = 32) throws
        -> KernelWorkload
    {
        try loraRowsInteger(bits: 4, rows: N, inputs: C, outputs: OC, rank: r, copies: copies)
    }

    /// `rk_lora_rows_q8` (`bits` 8) or `rk_lora_rows_q4` (4) over `copies` sets of random integers and scales.
    private static func loraRowsInteger(
        bits: Int, rows N: Int, inputs C: Int, outputs OC: Int, rank r: Int, copies: Int
    ) throws -> KernelWorkload {
        guard N > 0, C > 0, OC > 0, r > 0, copies > 0 else {
            throw TensorError.invalidArgument(
                operation: "KernelWorkload.loraRowsInt\(bits)",
                detail: "\(N) rows, \(C) -> \(OC), rank \(r) x \(copies)")
        }
        let adapters = N * copies
        // Per rank row: 8 bits, `width` bytes and one scale; 4 bits, 16 bytes (32 values) and one scale per group.
        let bytes = { (width: Int) in bits == 8 ? width : (width + 31) / 32 * 16 }
        let scalesPerRow = { (width: Int) in bits == 8 ? 1 : (width + 31) / 32 }
        var rng = SeededGenerator(seed: 35)
        // Integers as stored: 8 bits, -127...127; 4 bits, two nibbles of 1...15 (-7...7 plus 8).
        let random = { (rng: inout SeededGenerator) -> UInt8 in
            bits == 8
                ? UInt8(bitPattern: Int8(Int(rng.next() % 255) - 127))
                : UInt8(rng.next() % 15 + 1) | UInt8(rng.next() % 15 + 1) << 4
        }
        let tables = AdapterTables<UInt8>(
            a: (0..<(adapters * r * bytes(C))).map { _ in random(&rng) },
            b: (0..<(adapters * r * bytes(OC))).map { _ in random(&rng) },
            rows: N, copies: copies, aStride: r * bytes(C), bStride: r * bytes(OC))
        let scaleTables = AdapterTables<Float>(
            a: (0..<(adapters * r * scalesPerRow(C))).map { _ in rng.nextUniform() * 1e-3 },
            b: (0..<(adapters * r * scalesPerRow(OC))).map { _ in rng.nextUniform() * 1e-3 },
            rows: N, copies: copies, aStride: r * scalesPerRow(C), bStride: r * scalesPerRow(OC))
        let x = try Tensor.normal([N, C], seed: 34).scalars
        let ranks = [Int32](repeating: Int32(r), count: N), scales = [Float](repeating: 2, count: N)
        var y = [Float](repeating: 0, count: N * OC), work = [Float](repeating: 0, count: r)
        // For 8 bits, the bytes read as the signed integers they are: tables typed once, outside the timed loop.
        let signed = { (t: [[UnsafePointer<UInt8>?]]) in
            t.map { $0.map { $0.map { UnsafeRawPointer($0).assumingMemoryBound(to: Int8.self) } } }
        }
        let (signedA, signedB) = bits == 8 ? (signed(tables.a), signed(tables.b)) : ([], [])
        func update(_ y: inout [Float], copy c: Int, reference: Bool) {
            let (sa, sb) = (scaleTables.a[c], scaleTables.b[c])
            let (n, t, i, o) = (Int32(N), Int32(1), Int32(C), Int32(OC))
            if bits == 4 {
                let f = reference ? rk_lora_rows_q4_ref : rk_lora_rows_q4
                f(&y, x, n, t, i, o, tables.a[c], sa, tables.b[c], sb, ranks, scales, &work)
            } else {
                let f = reference ? rk_lora_rows_q8_ref : rk_lora_rows_q8
                f(&y, x, n, t, i, o, signedA[c], sa, signedB[c], sb, ranks, scales, &work)
            }
        }
        return KernelWorkload(
            name: "LoRA rows int\(bits) \(N)x\(C) -> \(OC) r\(r), one thread",
            flops: 2.0 * Double(N * r * (C + OC) * copies), tolerance: 1e-4,
            verify: {
                var fast = [Float](repeating: 0, count: N * OC), reference = fast
                update(&fast, copy: copies - 1, reference: false)
                update(&reference, copy: copies - 1, reference: true)
                return maxRelativeDifference(fast, reference, N * OC)
            },
            run: { for c in 0..<copies { update(&y, copy: c, reference: false) } })
    }

    public typealias Maker = @Sendable () throws -> KernelWorkload

    /// The workloads of the kernel benchmark at GPT-2-small sizes, by name, each built only when asked for (some
    /// allocate gigabytes).
    public static let gpt2Small: [(name: String, make: Maker)] = {
        var list: [(name: String, make: Maker)] = []
        for (i, o) in [(768, 768), (768, 2304), (768, 3072), (3072, 768)] {
            list.append(("matmul 256x\(i) -> \(o)", { try matmul(rows: 256, inputs: i, outputs: o) }))
            list.append(("cblas_sgemm 256x\(i) -> \(o)", { try rawSgemm(rows: 256, inputs: i, outputs: o) }))
        }
        // A SmolLM2-135M training step's products (B4 T256: 1024 rows).
        for (i, o) in [(576, 576), (576, 192), (576, 1536), (1536, 576)] {
            list.append(("linear 1024x\(i) -> \(o)", { try linear(rows: 1024, inputs: i, outputs: o) }))
            list.append(("cblas_sgemm 1024x\(i) -> \(o)", { try rawSgemm(rows: 1024, inputs: i, outputs: o) }))
        }
        list.append(
            ("attention fwd B4", { try attention(batch: 4, heads: 12, length: 256, headSize: 64, backward: false) }))
        list.append(
            ("attention fwd+bwd B4", { try attention(batch: 4, heads: 12, length: 256, headSize: 64, backward: true) }))
        // Grouped-query attention at SmolLM2-135M's heads (9 query, 3 key/value, head size 64).
        list.append(
            (
                "attention fwd B4 NH9 NKV3",
                { try attention(batch: 4, heads: 9, kvHeads: 3, length: 256, headSize: 64, backward: false) }
            ))
        list.append(
            (
                "attention fwd+bwd B4 NH9 NKV3",
                { try attention(batch: 4, heads: 9, kvHeads: 3, length: 256, headSize: 64, backward: true) }
            ))
        list.append(("layer norm", { try layerNorm(rows: 256, channels: 768) }))
        list.append(("RMSNorm", { try rmsNorm(rows: 1024, channels: 576) }))
        list.append(("SwiGLU", { try swiGLU(rows: 1024, channels: 1536) }))
        list.append(("GELU", { try gelu(rows: 256, channels: 3072) }))
        list.append(("cross-entropy", { try crossEntropy(rows: 256, vocabulary: 50257) }))
        list.append(("linear", { try lora(rows: 256, inputs: 768, outputs: 2304, rank: 0) }))
        list.append(("LoRA", { try lora(rows: 256, inputs: 768, outputs: 2304, rank: 8) }))
        list.append(("AdamW", { try adamw(count: 124_000_000) }))
        // A quantized base's integer products at SmolLM2-135M's gate/up shape (its down shape for the types of
        // 256-value blocks, which 576 inputs do not hold whole): one row (decoding), 8 (a server's batch), 64 (a prompt).
        for type in [GGMLType.q4_1, .q5_0, .q8_0, .iq4_NL, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .iq4_XS] {
            let (inputs, outputs) = type.blockElements == 256 ? (1536, 576) : (576, 1536)
            for rows in [1, 8, 64] {
                list.append(("\(type) interleaved \(rows)x", {
                    try interleaved(type, rows: rows, inputs: inputs, outputs: outputs)
                }))
            }
        }
        list.append(("LoRA rows half", { try loraRowsHalf(rows: 8, inputs: 576, outputs: 1536, rank: 16) }))
        list.append(("LoRA rows int8", { try loraRowsInt8(rows: 8, inputs: 576, outputs: 1536, rank: 16) }))
        list.append(("LoRA rows int4", { try loraRowsInt4(rows: 8, inputs: 576, outputs: 1536, rank: 16) }))
        return list
    }()
}

/// Adapter weights (half precision, 8-bit integers or their scales) in memory of their own, with each copy's table of
/// per-row pointers into them (what `rk_lora_rows_f16`, `rk_lora_rows_q8` and `rk_lora_rows_q4` take), so that a
/// timed loop passes tables instead of building them.
private final class AdapterTables<E> {
    private let storage: [UnsafeMutableBufferPointer<E>]
    let a: [[UnsafePointer<E>?]], b: [[UnsafePointer<E>?]]

    init(a va: [E], b vb: [E], rows N: Int, copies: Int, aStride: Int, bStride: Int) {
        func place(_ v: [E]) -> UnsafeMutableBufferPointer<E> {
            let p = UnsafeMutableBufferPointer<E>.allocate(capacity: max(v.count, 1))
            _ = p.initialize(from: v)
            return p
        }
        let (pa, pb) = (place(va), place(vb))
        storage = [pa, pb]
        func tables(_ p: UnsafeMutableBufferPointer<E>, _ stride: Int) -> [[UnsafePointer<E>?]] {
            (0..<copies).map { c in (0..<N).map { UnsafePointer(p.baseAddress! + (c * N + $0) * stride) } }
        }
        (a, b) = (tables(pa, aStride), tables(pb, bStride))
    }

    deinit { storage.forEach { $0.deallocate() } }
}
