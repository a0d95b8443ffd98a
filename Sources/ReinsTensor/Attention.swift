import CReinsKernels

extension Tensor {
    /// Scaled dot-product attention over split heads (arXiv 1706.03762): `softmax(scale·Q·Kᵀ + mask)·V`.
    ///
    /// `query: [B, NH, T, hs]`, `key` and `value: [B, NKV, Tk, hs]` (Tk may exceed T: key/value prefixes or a KV
    /// cache), result `[B, NH, T, hs]`. With fewer key/value heads than query heads (grouped-query attention, NKV
    /// dividing NH), query head `h` reads key/value head `h / (NH / NKV)` in place, never a per-head copy. With
    /// `causal`, query `i` sees key `j` only when `j <= i + causalOffset` (`causalOffset` defaults to `Tk - T`) and,
    /// with a sliding `window` (Mistral), `j > i + causalOffset - window`. `keyMask: [B, Tk]`, nonzero = attend
    /// (padding masks). A query that sees no key gets zeros. Heads run in parallel; only the log-sum-exp per query row
    /// is kept for backward, which recomputes the probabilities and gives dQ, dK and dV (so learned prefixes get
    /// gradients).
    /// - Parameters:
    ///   - scale: defaults to `1/√hs`.
    ///   - dropout: dropout on the probabilities (training), `(p, seed, offset)`: probability `(bh, i, j)` is kept iff
    ///     the counter-based draw at `offset + (bh·T + i)·Tk + j` is at least `p`; nothing is stored for backward.
    /// - Throws: ``TensorError/shapeMismatch(operation:detail:)`` for shapes that do not fit.
    public static func attention(
        query: Tensor, key: Tensor, value: Tensor, causal: Bool = false, causalOffset: Int? = nil,
        keyMask: IntTensor? = nil, scale: Float? = nil,
        dropout: (p: Float, seed: UInt64, offset: UInt64)? = nil, window: Int? = nil, keyLength: Int? = nil
    ) throws -> Tensor {
        if let dropout, !(0..<1).contains(dropout.p) {
            throw TensorError.invalidArgument(
                operation: "attention", detail: "dropout probability \(dropout.p) is outside [0, 1)")
        }
        var drop = rk_attention_dropout(p: dropout?.p ?? 0, seed: dropout?.seed ?? 0, offset: dropout?.offset ?? 0)
        guard query.rank == 4, key.rank == 4, value.shape == key.shape,
            key.shape[0] == query.shape[0], key.shape[1] > 0, query.shape[1] % key.shape[1] == 0,
            key.shape[3] == query.shape[3]
        else {
            throw TensorError.shapeMismatch(
                operation: "attention",
                detail:
                    "query \(query.shape), key \(key.shape), value \(value.shape); expected [B, NH, T, hs] and [B, NKV, Tk, hs] with NKV dividing NH"
            )
        }
        if let window, window < 1 {
            throw TensorError.invalidArgument(operation: "attention", detail: "sliding window \(window) is not positive")
        }
        let (B, NH, T, hs) = (query.shape[0], query.shape[1], query.shape[2], query.shape[3])
        // With `keyLength`, key and value hold room for more rows than are filled (an inference-time KV cache).
        let kvRows = key.shape[2], Tk = keyLength ?? kvRows
        guard (0...kvRows).contains(Tk) else {
            throw TensorError.invalidArgument(
                operation: "attention", detail: "key length \(Tk) is outside the \(kvRows) rows of the keys")
        }
        if Tk != kvRows, Autograd.isRecording, [query, key, value].contains(where: \.requiresGradient) {
            throw TensorError.invalidArgument(
                operation: "attention", detail: "a partly filled key cache is for inference: compute without gradients")
        }
        let NKV = key.shape[1], group = NH / NKV
        // A window longer than any sequence is no window (and keeps the count in 32 bits).
        let slidingWindow = Int32(causal ? min(window ?? 0, Tk + T + 1) : 0)
        if let keyMask, keyMask.shape != [B, Tk] {
            throw TensorError.shapeMismatch(
                operation: "attention", detail: "key mask \(keyMask.shape), expected [\(B), \(Tk)]")
        }
        let offset = Int32(causalOffset ?? (Tk - T)), isCausal: Int32 = causal ? 1 : 0
        let s = scale ?? 1 / Float(hs).squareRoot()
        let result = try Tensor(uninitializedShape: query.shape)
        let lse = TensorStorage(uninitializedCount: B * NH * T)
        let q = query.detached(), k = key.detached(), v = value.detached()
        let mask = keyMask?.values ?? []
        func withMask<R>(_ body: (UnsafePointer<Int32>?) -> R) -> R {
            mask.withUnsafeBufferPointer { body(keyMask == nil ? nil : $0.baseAddress) }
        }
        let scratchPerChunk = T * Tk
        let scratch = TensorStorage(uninitializedCount: Parallel.threadCount * scratchPerChunk)
        withMask { m in
            Parallel.forRanges(B * NH) { r, c in
                rk_attention_forward_rows(
                    result.storage.pointer, lse.pointer, q.storage.pointer, k.storage.pointer, v.storage.pointer, m,
                    Int32(B), Int32(NH), Int32(NKV), Int32(T), Int32(Tk), Int32(kvRows), Int32(hs), s, isCausal, offset,
                    slidingWindow, &drop, Int32(r.lowerBound), Int32(r.upperBound),
                    scratch.pointer + c * scratchPerChunk)
            }
        }
        if Tk != kvRows { return result }
        let output = result.detached()
        return recording(result, inputs: [query, key, value]) { g, grads in
            let perChunk = 2 * T * Tk + T
            let scratch = TensorStorage(uninitializedCount: Parallel.threadCount * perChunk)
            withMask { m in
                // Split at group boundaries: the heads of a group add into the same dK and dV.
                Parallel.forRanges(B * NKV) { r, c in
                    rk_attention_backward(
                        grads[0], grads[1], grads[2], g.storage.pointer, q.storage.pointer, k.storage.pointer,
                        v.storage.pointer, output.storage.pointer, lse.pointer, m, Int32(B), Int32(NH), Int32(NKV),
                        Int32(T), Int32(Tk), Int32(hs), s, isCausal, offset, slidingWindow, &drop,
                        Int32(r.lowerBound * group), Int32(r.upperBound * group), scratch.pointer + c * perChunk)
                }
            }
        }
    }

    /// A LoRA linear layer as one op (arXiv 2106.09685): `y = x·Wᵀ + b + scale·(x·Aᵀ)·Bᵀ`.
    ///
    /// `x: [..., C]`, `weight: [OC, C]` (or `[C, OC]` with `weightTransposed`), `loraA: [r, C]`, `loraB: [OC, r]`.
    /// A frozen base (weight and bias not requiring gradients) costs no dW or db work in backward.
    public static func loraLinear(
        _ x: Tensor, weight: Tensor, bias: Tensor? = nil, loraA: Tensor, loraB: Tensor,
        scale: Float, weightTransposed: Bool = false
    ) throws -> Tensor {
        let (N, C) = x.rowsAndWidth
        guard weight.rank == 2, weight.shape[weightTransposed ? 0 : 1] == C else {
            throw TensorError.shapeMismatch(
                operation: "loraLinear", detail: "input \(x.shape) with weight \(weight.shape)")
        }
        let OC = weight.shape[weightTransposed ? 1 : 0]
        guard loraA.rank == 2, loraA.shape[1] == C, loraB.shape == [OC, loraA.shape[0]] else {
            throw TensorError.shapeMismatch(
                operation: "loraLinear",
                detail:
                    "lora A \(loraA.shape) and B \(loraB.shape) for \(C) inputs and \(OC) outputs; expected [r, \(C)] and [\(OC), r]"
            )
        }
        if let bias, bias.shape != [OC] {
            throw TensorError.shapeMismatch(operation: "loraLinear", detail: "bias \(bias.shape) for \(OC) outputs")
        }
        let r = loraA.shape[0], wt: Int32 = weightTransposed ? 1 : 0
        let result = try Tensor(uninitializedShape: Array(x.shape.dropLast()) + [OC])
        let xa = TensorStorage(uninitializedCount: N * r)
        // The base's products on Reins's kernel for many rows (the LoRA op then adds only its update), else in the op.
        let many = ManyRowProducts.applies(rows: N)
        if many {
            ManyRowProducts.linear(
                result.storage.pointer, x.storage.pointer, weight: weight.storage.pointer, bias: bias?.storage.pointer,
                N: N, C: C, OC: OC, weightTransposed: weightTransposed)
        }
        rk_lora_forward(
            result.storage.pointer, xa.pointer, x.storage.pointer, many ? nil : weight.storage.pointer,
            bias?.storage.pointer, loraA.storage.pointer, loraB.storage.pointer, Int32(N), Int32(C), Int32(OC),
            Int32(r), scale, wt)
        let xs = x.detached(), ws = weight.detached(), a = loraA.detached(), b = loraB.detached()
        let hasBias = bias != nil
        let inputs = [x, weight, loraA, loraB] + (bias.map { [$0] } ?? [])
        return recording(result, inputs: inputs) { g, grads in
            let scratch = TensorStorage(uninitializedCount: N * r)
            let many = ManyRowProducts.applies(rows: N)
            if many, let dx = grads[0] {
                ManyRowProducts.inputGradient(
                    dx, g.storage.pointer, weight: ws.storage.pointer, N: N, C: C, OC: OC,
                    weightTransposed: weightTransposed)
            }
            rk_lora_backward(
                grads[0], grads[1], hasBias ? grads[4] : nil, grads[2], grads[3], g.storage.pointer, xs.storage.pointer,
                many ? nil : ws.storage.pointer, a.storage.pointer, b.storage.pointer, xa.pointer, scratch.pointer,
                Int32(N), Int32(C), Int32(OC), Int32(r), scale, wt)
        }
    }
}
