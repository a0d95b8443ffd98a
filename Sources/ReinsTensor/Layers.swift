import CReinsKernels
import Foundation

/// Which GELU: the exact erf form (BERT, `gelu`) or the tanh approximation (GPT-2, `gelu_new`).
public enum GELUApproximation: Int32, Sendable {
    case none = 0
    case tanh = 1
}

extension Tensor {
    /// Rows and the last-axis width of a tensor seen as a matrix `[N, C]`.
    var rowsAndWidth: (rows: Int, width: Int) {
        let w = shape.last ?? 1
        return (w == 0 ? 0 : count / w, w)
    }

    // MARK: linear

    /// A dense layer on the last axis: `y = x·Wᵀ + b`.
    ///
    /// `x: [..., C]`, `weight: [OC, C]` (or `[C, OC]` with `weightTransposed`, GPT-2's `Conv1D`), `bias: [OC]`.
    /// Backward computes dX, dW and db each only if that input requires a gradient.
    /// - Throws: ``TensorError/shapeMismatch(operation:detail:)`` when the sizes do not fit.
    public static func linear(_ x: Tensor, weight: Tensor, bias: Tensor? = nil, weightTransposed: Bool = false) throws
        -> Tensor
    {
        let (N, C) = x.rowsAndWidth
        guard weight.rank == 2, weight.shape[weightTransposed ? 0 : 1] == C, x.rank >= 1 else {
            throw TensorError.shapeMismatch(
                operation: "linear",
                detail:
                    "input \(x.shape) with weight \(weight.shape)\(weightTransposed ? " (stored [in, out])" : " (stored [out, in])")"
            )
        }
        let OC = weight.shape[weightTransposed ? 1 : 0]
        if let bias, bias.shape != [OC] {
            throw TensorError.shapeMismatch(operation: "linear", detail: "bias \(bias.shape) for \(OC) outputs")
        }
        let result = try Tensor(uninitializedShape: Array(x.shape.dropLast()) + [OC])
        let wt: Int32 = weightTransposed ? 1 : 0
        if N == 1 && Parallel.threadCount > 1 && OC * C >= 1 << 16 {
            // One row (a decoding step): the outputs split between our threads, each streaming its share of the
            // weight (whole rows of an [OC, C] weight, a run of columns of a [C, OC] one, in multiples of 16).
            // OpenBLAS's threaded sgemv woke a sleeping thread of its own per product, which on 2 cores took turns
            // with ours (SmolLM2-135M float32 greedy decoding on a 2-core Xeon: 20 tokens/s that way, 32-37 here).
            let out = result.storage.pointer, inp = x.storage.pointer, w = weight.storage.pointer
            let b = bias?.storage.pointer
            let share = (OC + Parallel.threadCount * 16 - 1) / (Parallel.threadCount * 16) * 16
            Parallel.forEach(Parallel.threadCount) { t in
                let lo = t * share, hi = min(OC, lo + share)
                guard lo < hi else { return }
                if weightTransposed {
                    rk_gemv_cols(out + lo, w + lo, inp, b.map { $0 + lo }, Int32(C), Int32(hi - lo), Int32(OC))
                } else {
                    rk_gemv_rows(out + lo, w + lo * C, inp, b.map { $0 + lo }, Int32(C), Int32(hi - lo))
                }
            }
        } else if ManyRowProducts.applies(rows: N) {
            ManyRowProducts.linear(
                result.storage.pointer, x.storage.pointer, weight: weight.storage.pointer, bias: bias?.storage.pointer,
                N: N, C: C, OC: OC, weightTransposed: weightTransposed)
        } else {
            rk_linear_forward(
                result.storage.pointer, x.storage.pointer, weight.storage.pointer, bias?.storage.pointer,
                Int32(N), Int32(C), Int32(OC), wt)
        }
        // The input is needed only for dW: a frozen weight lets it go as soon as the forward pass is done with it
        // (with an adapted frozen base, most layers' inputs are never kept).
        let xs = weight.requiresGradient ? x.detached() : nil, ws = weight.detached()
        var inputs = [x, weight]
        if let bias { inputs.append(bias) }
        return recording(result, inputs: inputs) { g, grads in
            var dx = grads[0]
            if let d = dx, ManyRowProducts.applies(rows: N) {
                ManyRowProducts.inputGradient(
                    d, g.storage.pointer, weight: ws.storage.pointer, N: N, C: C, OC: OC,
                    weightTransposed: weightTransposed)
                dx = nil
            }
            rk_linear_backward(
                dx, grads[1], grads.count > 2 ? grads[2] : nil, g.storage.pointer,
                xs?.storage.pointer, ws.storage.pointer, Int32(N), Int32(C), Int32(OC), wt)
        }
    }

    // MARK: GELU

    /// GELU, elementwise (arXiv 1606.08415): `x·Φ(x)`, or `½x(1 + tanh(√(2/π)(x + 0.044715x³)))` with `.tanh`.
    public func gelu(_ approximation: GELUApproximation = .none) -> Tensor {
        let n = count, a = approximation.rawValue
        let result = Tensor(uninitializedLike: self)
        let x = storage.pointer, y = result.storage.pointer
        Parallel.forRanges(n, minimum: 1 << 14) { r, _ in
            rk_gelu_forward(y + r.lowerBound, x + r.lowerBound, r.count, a)
        }
        let input = detached()
        return Tensor.recording(result, inputs: [self]) { g, grads in
            guard let dx = grads[0] else { return }
            let x = input.storage.pointer, dy = g.storage.pointer
            Parallel.forRanges(n, minimum: 1 << 14) { r, _ in
                rk_gelu_backward(dx + r.lowerBound, dy + r.lowerBound, x + r.lowerBound, r.count, a)
            }
        }
    }

    /// GELU of `x + bias` in one pass (the first feed-forward layer's bias fused with its activation).
    ///
    /// `x: [..., C]`, `bias: [C]`.
    public static func biasGELU(_ x: Tensor, bias: Tensor, _ approximation: GELUApproximation = .none) throws -> Tensor
    {
        let (N, C) = x.rowsAndWidth
        guard bias.shape == [C] else {
            throw TensorError.shapeMismatch(operation: "biasGELU", detail: "bias \(bias.shape) for input \(x.shape)")
        }
        let a = approximation.rawValue
        let result = try Tensor(uninitializedShape: x.shape)
        let px = x.storage.pointer, pb = bias.storage.pointer, py = result.storage.pointer
        Parallel.forRanges(N, minimum: max(1, (1 << 14) / max(C, 1))) { r, _ in
            rk_bias_gelu_forward(py + r.lowerBound * C, px + r.lowerBound * C, pb, Int32(r.count), Int32(C), a)
        }
        let xs = x.detached(), bs = bias.detached()
        return recording(result, inputs: [x, bias]) { g, grads in
            let dy = g.storage.pointer, px = xs.storage.pointer, pb = bs.storage.pointer
            // Rows in parallel; each chunk sums its own dbias, added up afterwards.
            let partial = PartialSums(chunks: Parallel.threadCount, width: grads[1] == nil ? 0 : C)
            Parallel.forRanges(N, minimum: max(1, (1 << 14) / max(C, 1))) { r, c in
                rk_bias_gelu_backward(
                    grads[0].map { $0 + r.lowerBound * C }, partial.buffer(c), dy + r.lowerBound * C,
                    px + r.lowerBound * C, pb, Int32(r.count), Int32(C), a)
            }
            partial.add(into: grads[1])
        }
    }

    // MARK: layer norm

    /// Layer normalisation over the last axis (arXiv 1607.06450): `(x - μ)/√(σ² + eps) · weight + bias`.
    ///
    /// `x: [..., C]`, `weight` and `bias: [C]`.
    public static func layerNorm(_ x: Tensor, weight: Tensor, bias: Tensor, eps: Float = 1e-5) throws -> Tensor {
        let (N, C) = x.rowsAndWidth
        guard weight.shape == [C], bias.shape == [C] else {
            throw TensorError.shapeMismatch(
                operation: "layerNorm", detail: "weight \(weight.shape) and bias \(bias.shape) for input \(x.shape)")
        }
        let result = try Tensor(uninitializedShape: x.shape)
        let stats = TensorStorage(uninitializedCount: 2 * N)  // mean (N), then rstd (N)
        let px = x.storage.pointer, pw = weight.storage.pointer, pb = bias.storage.pointer, py = result.storage.pointer
        let mean = stats.pointer, rstd = stats.pointer + N
        let minRows = Parallel.rowGrain(width: C)
        Parallel.forRanges(N, minimum: minRows) { r, _ in
            let o = r.lowerBound
            rk_layernorm_forward(py + o * C, mean + o, rstd + o, px + o * C, pw, pb, Int32(r.count), Int32(C), eps)
        }
        let xs = x.detached(), ws = weight.detached()
        return recording(result, inputs: [x, weight, bias]) { g, grads in
            let dy = g.storage.pointer, px = xs.storage.pointer, pw = ws.storage.pointer
            let dw = PartialSums(chunks: Parallel.threadCount, width: grads[1] == nil ? 0 : C)
            let db = PartialSums(chunks: Parallel.threadCount, width: grads[2] == nil ? 0 : C)
            Parallel.forRanges(N, minimum: minRows) { r, c in
                let o = r.lowerBound
                rk_layernorm_backward(
                    grads[0].map { $0 + o * C }, dw.buffer(c), db.buffer(c), dy + o * C, px + o * C, pw,
                    stats.pointer + o, stats.pointer + N + o, Int32(r.count), Int32(C))
            }
            dw.add(into: grads[1])
            db.add(into: grads[2])
        }
    }

    // MARK: softmax and cross-entropy

    /// Softmax over the last axis.
    public func softmax() -> Tensor {
        let (N, C) = rowsAndWidth
        let result = Tensor(uninitializedLike: self)
        let x = storage.pointer, y = result.storage.pointer
        let minRows = max(1, 8192 / max(C, 1))
        Parallel.forRanges(N, minimum: minRows) { r, _ in
            rk_softmax_forward(y + r.lowerBound * C, x + r.lowerBound * C, Int32(r.count), Int32(C))
        }
        let output = result.detached()
        return Tensor.recording(result, inputs: [self]) { g, grads in
            guard let dx = grads[0] else { return }
            let dy = g.storage.pointer, y = output.storage.pointer
            Parallel.forRanges(N, minimum: minRows) { r, _ in
                let o = r.lowerBound * C
                rk_softmax_backward(dx + o, dy + o, y + o, Int32(r.count), Int32(C))
            }
        }
    }

    /// Mean cross-entropy of `logits: [..., V]` against `targets` (one per row), skipping rows whose target is
    /// `ignoreIndex`: `mean over counted rows of (logsumexp(row) - row[target])`. With no counted row the loss is NaN,
    /// as in PyTorch.
    /// - Throws: ``TensorError/shapeMismatch(operation:detail:)`` if the counts differ,
    ///   ``TensorError/indexOutOfRange(operation:position:value:limit:)`` for a target outside `0..<V`.
    public static func crossEntropy(logits: Tensor, targets: IntTensor, ignoreIndex: Int32 = -100) throws -> Tensor {
        let (N, V) = logits.rowsAndWidth
        guard targets.count == N else {
            throw TensorError.shapeMismatch(
                operation: "crossEntropy", detail: "\(targets.count) targets for logits \(logits.shape) (\(N) rows)")
        }
        if let bad = targets.values.firstIndex(where: { $0 != ignoreIndex && ($0 < 0 || Int($0) >= V) }) {
            throw TensorError.indexOutOfRange(
                operation: "crossEntropy", position: bad, value: Int(targets.values[bad]), limit: V)
        }
        let saved = TensorStorage(uninitializedCount: 2 * N)  // per-row losses (N), then log-sum-exp (N)
        let px = logits.storage.pointer
        targets.values.withUnsafeBufferPointer { t in
            guard let tp = t.baseAddress else { return }
            Parallel.forRanges(N, minimum: max(1, 8192 / max(V, 1))) { r, _ in
                _ = rk_crossentropy_forward(
                    saved.pointer + r.lowerBound, saved.pointer + N + r.lowerBound,
                    px + r.lowerBound * V, tp + r.lowerBound, Int32(r.count), Int32(V), ignoreIndex, nil)
            }
        }
        let counted = targets.values.reduce(0) { $0 + ($1 == ignoreIndex ? 0 : 1) }
        var total = 0.0
        for i in 0..<N { total += Double(saved.pointer[i]) }
        let loss = Tensor(scalar: counted == 0 ? .nan : Float(total / Double(counted)))
        let xs = logits.detached()
        return recording(loss, inputs: [logits]) { g, grads in
            guard let dx = grads[0], counted > 0 else { return }
            let scale = g.storage.pointer[0] / Float(counted), px = xs.storage.pointer
            targets.values.withUnsafeBufferPointer { t in
                Parallel.forRanges(N, minimum: max(1, 8192 / max(V, 1))) { r, _ in
                    let o = r.lowerBound
                    rk_crossentropy_backward(
                        dx + o * V, px + o * V, saved.pointer + N + o, t.baseAddress! + o, scale,
                        Int32(r.count), Int32(V), ignoreIndex)
                }
            }
        }
    }

    // MARK: embedding

    /// Rows of `table: [V, C]` picked by `ids`; the result has shape `ids.shape + [C]`.
    ///
    /// With `paddingIndex`, the row of that id gets no gradient (torch's `padding_idx`).
    /// - Throws: ``TensorError/indexOutOfRange(operation:position:value:limit:)`` for an id outside `0..<V`.
    public static func embedding(_ ids: IntTensor, table: Tensor, paddingIndex: Int? = nil) throws -> Tensor {
        guard table.rank == 2 else {
            throw TensorError.shapeMismatch(operation: "embedding", detail: "table must be [V, C], got \(table.shape)")
        }
        let V = table.shape[0], C = table.shape[1], N = ids.count
        let result = try Tensor(uninitializedShape: ids.shape + [C])
        var badRow: Int32 = 0
        let status = ids.values.withUnsafeBufferPointer {
            rk_embedding_forward(
                result.storage.pointer, $0.baseAddress, table.storage.pointer, Int32(N), Int32(V), Int32(C), &badRow)
        }
        guard status == RK_OK else {
            throw TensorError.indexOutOfRange(
                operation: "embedding", position: Int(badRow), value: Int(ids.values[Int(badRow)]), limit: V)
        }
        return recording(result, inputs: [table]) { g, grads in
            guard let dt = grads[0] else { return }
            ids.values.withUnsafeBufferPointer {
                rk_embedding_backward(
                    dt, g.storage.pointer, $0.baseAddress, Int32(N), Int32(V), Int32(C), Int32(paddingIndex ?? -1))
            }
        }
    }

    // MARK: dropout

    /// Dropout with probability `p`: each element is zeroed with probability `p`, the rest scaled by `1/(1-p)`.
    ///
    /// The mask is a pure function of `(seed, offset + index)`, so the same seed reproduces it exactly and backward
    /// needs no stored mask. `p = 0` returns `self` unchanged.
    public func dropout(_ p: Float, seed: UInt64, offset: UInt64 = 0) throws -> Tensor {
        guard p >= 0, p <= 1 else {
            throw TensorError.invalidArgument(operation: "dropout", detail: "probability \(p) is outside [0, 1]")
        }
        if p == 0 { return self }
        let n = count
        let result = try Tensor(uninitializedShape: shape)
        rk_dropout_forward(result.storage.pointer, storage.pointer, n, p, seed, offset)
        return Tensor.recording(result, inputs: [self]) { g, grads in
            rk_dropout_backward(grads[0], g.storage.pointer, n, p, seed, offset)
        }
    }
}

/// Per-chunk partial sums of a `[width]` vector (bias and norm gradients of rows processed in parallel), so that
/// threads never add into the same buffer.
final class PartialSums {
    private let storage: TensorStorage?
    private let width: Int
    private let chunks: Int

    /// `width == 0` means the gradient is not wanted: every buffer is `nil`.
    init(chunks: Int, width: Int) {
        self.width = width
        self.chunks = chunks
        storage = width > 0 ? TensorStorage(count: chunks * width, repeating: 0) : nil
    }

    func buffer(_ chunk: Int) -> UnsafeMutablePointer<Float>? { storage.map { $0.pointer + chunk * width } }

    func add(into target: UnsafeMutablePointer<Float>?) {
        guard let target, let storage else { return }
        for c in 0..<chunks {
            let p = storage.pointer + c * width
            for j in 0..<width { target[j] += p[j] }
        }
    }
}
