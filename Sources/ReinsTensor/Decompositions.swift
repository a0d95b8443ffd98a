import COpenBLAS

extension Tensor {
    /// The thin singular value decomposition of a matrix, `self = U · diag(S) · Vᵀ`, from LAPACK's `sgesdd`.
    ///
    /// `self: [M, N]` gives `U: [M, K]`, `S: [K]` (descending), `Vᵀ: [K, N]` with `K = min(M, N)`. No gradient.
    /// - Throws: ``TensorError/invalidArgument(operation:detail:)`` for a non-matrix or when LAPACK does not converge.
    public func singularValueDecomposition() throws -> (u: Tensor, s: Tensor, vt: Tensor) {
        guard rank == 2, shape[0] > 0, shape[1] > 0 else {
            throw TensorError.invalidArgument(
                operation: "singularValueDecomposition", detail: "needs a non-empty matrix, got \(shape)")
        }
        let (M, N) = (shape[0], shape[1]), K = Swift.min(M, N)
        var a = scalars  // sgesdd overwrites its input
        let u = try Tensor(uninitializedShape: [M, K]), s = try Tensor(uninitializedShape: [K]),
            vt = try Tensor(uninitializedShape: [K, N])
        let info = a.withUnsafeMutableBufferPointer { p in
            LAPACKE_sgesdd(
                LAPACK_ROW_MAJOR, Int8(UInt8(ascii: "S")), Int32(M), Int32(N), p.baseAddress, Int32(N),
                s.storage.pointer, u.storage.pointer, Int32(K), vt.storage.pointer, Int32(N))
        }
        guard info == 0 else {
            throw TensorError.invalidArgument(
                operation: "singularValueDecomposition", detail: "LAPACK sgesdd returned \(info)")
        }
        return (u, s, vt)
    }
}
