import CReinsKernels
import Foundation

extension Tensor {
    // MARK: RMSNorm

    /// RMS normalisation over the last axis (arXiv 1910.07467, Llama's norm): `x / √(mean(x²) + eps) · weight`.
    ///
    /// `x: [..., C]`, `weight: [C]`.
    public static func rmsNorm(_ x: Tensor, weight: Tensor, eps: Float = 1e-6) throws -> Tensor {
        let (N, C) = x.rowsAndWidth
        guard weight.shape == [C] else {
            throw TensorError.shapeMismatch(operation: "rmsNorm", detail: "weight \(weight.shape) for input \(x.shape)")
        }
        let result = try Tensor(uninitializedShape: x.shape)
        let rstd = TensorStorage(uninitializedCount: N)
        let px = x.storage.pointer, pw = weight.storage.pointer, py = result.storage.pointer
        let minRows = Parallel.rowGrain(width: C)
        Parallel.forRanges(N, minimum: minRows) { r, _ in
            let o = r.lowerBound
            rk_rmsnorm_forward(py + o * C, rstd.pointer + o, px + o * C, pw, Int32(r.count), Int32(C), eps)
        }
        let xs = x.detached(), ws = weight.detached()
        return recording(result, inputs: [x, weight]) { g, grads in
            let dy = g.storage.pointer, px = xs.storage.pointer, pw = ws.storage.pointer
            let dw = PartialSums(chunks: Parallel.threadCount, width: grads[1] == nil ? 0 : C)
            Parallel.forRanges(N, minimum: minRows) { r, c in
                let o = r.lowerBound
                rk_rmsnorm_backward(
                    grads[0].map { $0 + o * C }, dw.buffer(c), dy + o * C, px + o * C, pw, rstd.pointer + o,
                    Int32(r.count), Int32(C))
            }
            dw.add(into: grads[1])
        }
    }

    // MARK: rotary position embeddings

    /// Rotary position embeddings (arXiv 2104.09864) in Hugging Face's "rotate half" layout, applied while splitting
    /// heads: `self: [B, T, NH·hs]` (a query or key projection) to `[B, NH, T, hs]`.
    ///
    /// `angles: [B, T, hs/2]` holds each position's angles (position × inverse frequency, see ``RotaryEmbedding``), so
    /// left padding and KV-cache offsets are the caller's. Differentiable in `self`.
    public func rotated(heads NH: Int, cos: Tensor, sin: Tensor) throws -> Tensor {
        guard rank == 3, NH > 0, shape[2] % NH == 0, (shape[2] / NH) % 2 == 0 else {
            throw TensorError.shapeMismatch(
                operation: "rotary", detail: "input \(shape) for \(NH) heads: expected [B, T, NH·hs] with hs even")
        }
        let (B, T, hs) = (shape[0], shape[1], shape[2] / NH)
        guard cos.shape == [B, T, hs / 2], sin.shape == cos.shape else {
            throw TensorError.shapeMismatch(
                operation: "rotary", detail: "angles cos \(cos.shape), sin \(sin.shape); expected [\(B), \(T), \(hs / 2)]")
        }
        let result = try Tensor(uninitializedShape: [B, NH, T, hs])
        let c = cos.detached(), s = sin.detached()
        let px = storage.pointer, py = result.storage.pointer
        // Rows (b, t) are independent: spread the batch rows, else the positions of one sequence.
        Parallel.forRanges(B * T, minimum: 16) { r, _ in
            for bt in r {
                let (b, t) = (bt / T, bt % T)
                // One position of one sequence: its NH heads, written at stride T in the output.
                for n in 0..<NH {
                    rk_rope_forward(
                        py + ((b * NH + n) * T + t) * hs, px + (bt * NH + n) * hs, c.storage.pointer + bt * (hs / 2),
                        s.storage.pointer + bt * (hs / 2), 1, 1, 1, Int32(hs))
                }
            }
        }
        return Tensor.recording(result, inputs: [self]) { g, grads in
            guard let dx = grads[0] else { return }
            let dy = g.storage.pointer
            Parallel.forRanges(B * T, minimum: 16) { r, _ in
                for bt in r {
                    let (b, t) = (bt / T, bt % T)
                    for n in 0..<NH {
                        rk_rope_backward(
                            dx + (bt * NH + n) * hs, dy + ((b * NH + n) * T + t) * hs,
                            c.storage.pointer + bt * (hs / 2), s.storage.pointer + bt * (hs / 2), 1, 1, 1, Int32(hs))
                    }
                }
            }
        }
    }

    // MARK: SiLU and SwiGLU

    /// `silu(gate) ⊙ up` (arXiv 2002.05202), the gated feed-forward of Llama-family models; elementwise over equal shapes.
    public static func swiGLU(gate: Tensor, up: Tensor) throws -> Tensor {
        guard gate.shape == up.shape else {
            throw TensorError.shapeMismatch(operation: "swiGLU", detail: "gate \(gate.shape) and up \(up.shape)")
        }
        return gate.gated(by: up)
    }

    /// SiLU, elementwise: `x·σ(x)` (also called swish).
    public func silu() -> Tensor { gated(by: nil) }

    private func gated(by up: Tensor?) -> Tensor {
        let n = count
        let result = Tensor(uninitializedLike: self)
        let g = detached(), u = up?.detached()
        // Shared from 4K elements: a decoding step's 8 rows of a feed-forward's 1536 (an exponential each) would
        // otherwise leave the other thread waiting 30 times a token.
        Parallel.forRanges(n, minimum: 1 << 12) { r, _ in
            rk_swiglu_forward(
                result.storage.pointer + r.lowerBound, g.storage.pointer + r.lowerBound,
                u.map { $0.storage.pointer + r.lowerBound }, r.count)
        }
        return Tensor.recording(result, inputs: [self] + (up.map { [$0] } ?? [])) { dy, grads in
            let dgate = grads[0], dup = grads.count > 1 ? grads[1] : nil
            guard dgate != nil || dup != nil else { return }
            Parallel.forRanges(n, minimum: 1 << 14) { r, _ in
                let o = r.lowerBound
                rk_swiglu_backward(
                    dgate.map { $0 + o }, dup.map { $0 + o }, dy.storage.pointer + o, g.storage.pointer + o,
                    u.map { $0.storage.pointer + o }, r.count)
            }
        }
    }
}
