import COpenBLAS
import CReinsKernels
import Foundation

extension Tensor {
    /// The mean cross-entropy of `x·Wᵀ + b` against `targets`, without ever holding the logits: rows go through in
    /// chunks, each chunk's logits live only while its loss and its gradients are taken, and what backward needs —
    /// dX (and dW, db when they train) for a loss gradient of 1 — is accumulated on the way. Backward then only scales
    /// them. Equal to ``linear(_:weight:bias:weightTransposed:)`` followed by
    /// ``crossEntropy(logits:targets:ignoreIndex:)``, for a language model's output layer over a large vocabulary:
    /// `N × V` floats for the logits and as many for their gradient are never allocated.
    ///
    /// `x: [N, C]` (or `[..., C]`), `weight: [V, C]`, `bias: [V]`, `targets: [N]` (`ignoreIndex` rows skipped).
    /// `chunkRows`: rows per chunk, fewer when a chunk's logits would pass 64 MB (one buffer of them is held).
    /// - Throws: ``TensorError`` for shapes that do not fit or a target outside `0..<V`.
    public static func linearCrossEntropy(
        _ x: Tensor, weight: Tensor, bias: Tensor? = nil, targets: IntTensor, ignoreIndex: Int32 = -100,
        chunkRows: Int = 256
    ) throws -> Tensor {
        let (N, C) = x.rowsAndWidth
        guard weight.rank == 2, weight.shape[1] == C, targets.count == N else {
            throw TensorError.shapeMismatch(
                operation: "linearCrossEntropy",
                detail: "input \(x.shape), weight \(weight.shape) ([V, C]), \(targets.count) targets")
        }
        let V = weight.shape[0]
        if let bias, bias.shape != [V] {
            throw TensorError.shapeMismatch(operation: "linearCrossEntropy", detail: "bias \(bias.shape) for \(V) outputs")
        }
        let wantX = x.requiresGradient, wantW = weight.requiresGradient, wantB = bias?.requiresGradient ?? false
        // The gradients for a loss gradient of 1, kept for backward (only those that are wanted).
        let dX = wantX ? TensorStorage(count: N * C, repeating: 0) : nil
        let dW = wantW ? TensorStorage(count: V * C, repeating: 0) : nil
        let dB = wantB ? TensorStorage(count: V, repeating: 0) : nil
        let px = x.storage.pointer, pw = weight.storage.pointer
        let (total, counted) = try chunkedCrossEntropy(
            rows: N, classes: V, targets: targets, ignoreIndex: ignoreIndex, chunkRows: chunkRows,
            operation: "linearCrossEntropy",
            logits: { r0, n, out in
                // logits (n, V) = x[r0..<r0+n] · Wᵀ + b
                if ManyRowProducts.applies(rows: n) {
                    ManyRowProducts.linear(
                        out, px + r0 * C, weight: pw, bias: bias?.storage.pointer, N: n, C: C, OC: V,
                        weightTransposed: false)
                    return
                }
                if let bias { for i in 0..<n { memcpy(out + i * V, bias.storage.pointer, V * 4) } }
                cblas_sgemm(
                    CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(V), Int32(C), 1, px + r0 * C, Int32(C),
                    pw, Int32(C), bias == nil ? 0 : 1, out, Int32(V))
            },
            gradients: { r0, n, dlogits in
                // dX rows (n, C) = dlogits · W;  dW (V, C) += dlogitsᵀ · x rows;  db += column sums
                if let dX, ManyRowProducts.applies(rows: n) {
                    ManyRowProducts.product(
                        dX.pointer + r0 * C, dlogits, pw, M: n, N: C, K: V, bTransposed: false, accumulate: false)
                } else if let dX {
                    cblas_sgemm(
                        CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(C), Int32(V), 1, dlogits,
                        Int32(V), pw, Int32(C), 0, dX.pointer + r0 * C, Int32(C))
                }
                if let dW {
                    cblas_sgemm(
                        CblasRowMajor, CblasTrans, CblasNoTrans, Int32(V), Int32(C), Int32(n), 1, dlogits,
                        Int32(V), px + r0 * C, Int32(C), 1, dW.pointer, Int32(C))
                }
                if let dB { rk_bias_backward(dB.pointer, dlogits, Int32(n), Int32(V)) }
            })
        let loss = Tensor(scalar: counted == 0 ? .nan : Float(total / Double(counted)))
        let inputs = [x, weight] + (bias.map { [$0] } ?? [])
        return recording(loss, inputs: inputs) { g, grads in
            let s = g.storage.pointer[0]
            for (k, saved) in [dX, dW, dB].enumerated() where k < grads.count {
                guard let target = grads[k], let saved else { continue }
                let count = k == 0 ? N * C : k == 1 ? V * C : V
                cblas_saxpy(Int32(count), s, saved.pointer, 1, target, 1)
            }
        }
    }

    /// The same for a quantized frozen weight `[V, C]` (a GGUF model's output layer): each chunk's logits and its
    /// input gradient are computed from panels of the weight dequantized in turn (never the whole float32 matrix), so
    /// neither the logits nor a float32 copy of the weight is held. The weight gets no gradient.
    public static func quantizedLinearCrossEntropy(
        _ x: Tensor, weight: QuantizedMatrix, targets: IntTensor, ignoreIndex: Int32 = -100, chunkRows: Int = 128
    ) throws -> Tensor {
        let (N, C) = x.rowsAndWidth
        guard weight.columns == C, targets.count == N else {
            throw TensorError.shapeMismatch(
                operation: "quantizedLinearCrossEntropy",
                detail: "input \(x.shape), a \(weight.type) weight [\(weight.rows), \(weight.columns)], \(targets.count) targets")
        }
        let V = weight.rows
        let dX = x.requiresGradient ? TensorStorage(count: N * C, repeating: 0) : nil
        let px = x.storage.pointer
        let (total, counted) = try chunkedCrossEntropy(
            rows: N, classes: V, targets: targets, ignoreIndex: ignoreIndex, chunkRows: chunkRows,
            operation: "quantizedLinearCrossEntropy",
            logits: { r0, n, out in
                try forEachPanel(of: weight) { panel, w in
                    cblas_sgemm(
                        CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(panel.count), Int32(C), 1,
                        px + r0 * C, Int32(C), w, Int32(C), 0, out + panel.lowerBound, Int32(V))
                }
            },
            gradients: { r0, n, dlogits in
                guard let dX else { return }
                try forEachPanel(of: weight) { panel, w in
                    cblas_sgemm(
                        CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(C), Int32(panel.count), 1,
                        dlogits + panel.lowerBound, Int32(V), w, Int32(C), 1, dX.pointer + r0 * C, Int32(C))
                }
            })
        let loss = Tensor(scalar: counted == 0 ? .nan : Float(total / Double(counted)))
        return recording(loss, inputs: [x]) { g, grads in
            guard let target = grads[0], let dX else { return }
            cblas_saxpy(Int32(N * C), g.storage.pointer[0], dX.pointer, 1, target, 1)
        }
    }

    /// The most logits a chunk holds (16M floats, 64 MB): a vocabulary of 152K (Qwen2) goes 110 rows at a time.
    static let chunkElementBudget = 1 << 24

    /// The loop both fused output layers share: rows in chunks, `logits(r0, n, out)` fills a chunk's `n × classes`
    /// logits, their cross-entropy and its gradient (mean over counted rows) are taken, and `gradients(r0, n,
    /// dlogits)` turns the chunk's logit gradient into what backward needs. Returns the summed loss and the count.
    static func chunkedCrossEntropy(
        rows N: Int, classes V: Int, targets: IntTensor, ignoreIndex: Int32, chunkRows: Int, operation: String,
        logits: (Int, Int, UnsafeMutablePointer<Float>) throws -> Void,
        gradients: (Int, Int, UnsafeMutablePointer<Float>) throws -> Void
    ) throws -> (total: Double, counted: Int) {
        if let bad = targets.values.firstIndex(where: { $0 != ignoreIndex && ($0 < 0 || Int($0) >= V) }) {
            throw TensorError.indexOutOfRange(operation: operation, position: bad, value: Int(targets.values[bad]), limit: V)
        }
        let counted = targets.values.reduce(0) { $0 + ($1 == ignoreIndex ? 0 : 1) }
        // Each chunk's logits are one product against the whole weight, which OpenBLAS packs anew for every product:
        // fewer, taller chunks pack it fewer times (SmolLM2's 49152 x 576 output layer over 1024 rows, both
        // products, 2 threads: ~950 ms in chunks of 64 rows, ~650 ms in chunks of 256).
        let rows = Swift.max(1, Swift.min(chunkRows, N, Swift.max(16, Self.chunkElementBudget / Swift.max(V, 1))))
        try Tensor.checkMemory(
            elements: rows * V, bytesPerElement: 4, what: "a chunk of \(rows) × \(V) logits", operation: operation)
        // The logits' gradient overwrites the logits in place: one buffer per chunk.
        let chunk = TensorStorage(uninitializedCount: rows * V)
        let losses = TensorStorage(uninitializedCount: rows), lse = TensorStorage(uninitializedCount: rows)
        let scale = counted == 0 ? 0 : 1 / Float(counted)
        var total = 0.0
        try targets.values.withUnsafeBufferPointer { t in
            guard let tp = t.baseAddress else { return }
            for r0 in stride(from: 0, to: N, by: rows) {
                let n = Swift.min(rows, N - r0)
                try logits(r0, n, chunk.pointer)
                let grain = Swift.max(1, 8192 / Swift.max(V, 1))
                Parallel.forRanges(n, minimum: grain) { r, _ in
                    let o = r.lowerBound, logits = chunk.pointer + o * V
                    _ = rk_crossentropy_forward(
                        losses.pointer + o, lse.pointer + o, logits, tp + r0 + o, Int32(r.count), Int32(V),
                        ignoreIndex, nil)
                    rk_crossentropy_gradient(
                        logits, logits, lse.pointer + o, tp + r0 + o, scale, Int32(r.count), Int32(V), ignoreIndex)
                }
                for i in 0..<n { total += Double(losses.pointer[i]) }
                try gradients(r0, n, chunk.pointer)
            }
        }
        return (total, counted)
    }
}
