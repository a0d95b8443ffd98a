import COpenBLAS

extension Tensor {
    /// The matrix product over the last two axes, on OpenBLAS `cblas_sgemm`, with optional transposes.
    ///
    /// `C = op(A)·op(B)` where `op` transposes the last two axes when asked (a flag, never a copy).
    /// `a`: `[..., M, K]` (`[..., K, M]` with `transposeA`); `b`: `[..., K, N]` (`[..., N, K]` with `transposeB`).
    /// Leading axes are batch axes and must be equal, or `b` may be 2-D and shared by every batch.
    /// - Throws: ``TensorError/shapeMismatch(operation:detail:)`` when the sizes do not fit.
    public static func matmul(_ a: Tensor, _ b: Tensor, transposeA: Bool = false, transposeB: Bool = false) throws
        -> Tensor
    {
        guard a.rank >= 2, b.rank >= 2 else {
            throw TensorError.shapeMismatch(
                operation: "matmul", detail: "needs at least 2 axes each, got \(a.shape) and \(b.shape)")
        }
        let (ar, ac) = (a.shape[a.rank - 2], a.shape[a.rank - 1]), (br, bc) = (b.shape[b.rank - 2], b.shape[b.rank - 1])
        let (M, K) = transposeA ? (ac, ar) : (ar, ac)
        let (K2, N) = transposeB ? (bc, br) : (br, bc)
        let batchShape = Array(a.shape.dropLast(2))
        let sharedB = b.rank == 2
        guard K == K2, sharedB || Array(b.shape.dropLast(2)) == batchShape else {
            throw TensorError.shapeMismatch(
                operation: "matmul", detail: "\(a.shape)\(transposeA ? "ᵀ" : "") · \(b.shape)\(transposeB ? "ᵀ" : "")")
        }
        let batch = batchShape.reduce(1, *)
        let result = try Tensor(uninitializedShape: batchShape + [M, N])
        let tA = transposeA ? CblasTrans : CblasNoTrans, tB = transposeB ? CblasTrans : CblasNoTrans
        let lda = Int32(ac), ldb = Int32(bc)
        let pa = a.storage.pointer, pb = b.storage.pointer, pc = result.storage.pointer
        if sharedB && !transposeA {
            // All batches at once: [batch·M, K] · op(B)
            cblas_sgemm(
                CblasRowMajor, tA, tB, Int32(batch * M), Int32(N), Int32(K), 1, pa, lda, pb, ldb, 0, pc, Int32(N))
        } else {
            for i in 0..<batch {
                cblas_sgemm(
                    CblasRowMajor, tA, tB, Int32(M), Int32(N), Int32(K), 1, pa + i * M * K, lda,
                    sharedB ? pb : pb + i * K * N, ldb, 0, pc + i * M * N, Int32(N))
            }
        }
        let lhs = a.detached(), rhs = b.detached()
        return recording(result, inputs: [a, b]) { g, grads in
            let pa = lhs.storage.pointer, pb = rhs.storage.pointer, dc = g.storage.pointer
            for i in 0..<batch {
                let ai = pa + i * M * K, bi = sharedB ? pb : pb + i * K * N, ci = dc + i * M * N
                if let da = grads[0] {
                    // dA = dC·op(B)ᵀ  (or its transpose when A was used transposed)
                    if transposeA {
                        cblas_sgemm(
                            CblasRowMajor, transposeB ? CblasTrans : CblasNoTrans, CblasTrans, Int32(K), Int32(M),
                            Int32(N), 1,
                            bi, ldb, ci, Int32(N), 1, da + i * M * K, lda)
                    } else {
                        cblas_sgemm(
                            CblasRowMajor, CblasNoTrans, transposeB ? CblasNoTrans : CblasTrans, Int32(M), Int32(K),
                            Int32(N), 1,
                            ci, Int32(N), bi, ldb, 1, da + i * M * K, lda)
                    }
                }
                if let db = grads[1] {
                    // dB = op(A)ᵀ·dC  (or its transpose), summed over batches when B is shared
                    let dbi = sharedB ? db : db + i * K * N
                    if transposeB {
                        cblas_sgemm(
                            CblasRowMajor, CblasTrans, transposeA ? CblasTrans : CblasNoTrans, Int32(N), Int32(K),
                            Int32(M), 1,
                            ci, Int32(N), ai, lda, 1, dbi, ldb)
                    } else {
                        cblas_sgemm(
                            CblasRowMajor, transposeA ? CblasNoTrans : CblasTrans, CblasNoTrans, Int32(K), Int32(N),
                            Int32(M), 1,
                            ai, lda, ci, Int32(N), 1, dbi, ldb)
                    }
                }
            }
        }
    }
}
