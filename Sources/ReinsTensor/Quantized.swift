import COpenBLAS
import CReinsKernels
import Foundation

/// A frozen weight matrix `[rows, columns]` (PyTorch's `[out, in]`) kept in its GGUF blocks: no float32 copy of it
/// is ever held. Its bytes are a slice of the memory-mapped file, or (for rows reordered on loading) its own copy.
public final class QuantizedMatrix: @unchecked Sendable {
    public let type: GGMLType
    public let rows: Int
    public let columns: Int
    /// Bytes per row: whole blocks.
    public let rowBytes: Int
    private let data: Data
    private let offset: Int
    /// Whether the blocks are interleaved by 8 rows (``interleavedByRows()``) rather than stored row after row.
    public let isInterleaved: Bool
    /// Whether `data` is a read-only mapping of a file (a GGUF file's tensor), whose pages the kernel may drop and
    /// read again.
    var isFileMapping = false

    /// Wraps `rows × rowBytes` bytes of `data` from `offset`.
    /// - Throws: ``TensorError/invalidArgument(operation:detail:)`` for a type Reins cannot read, rows that are not whole
    ///   blocks, or bytes that do not hold the matrix.
    public init(type: GGMLType, rows: Int, columns: Int, data: Data, offset: Int = 0) throws {
        let op = "QuantizedMatrix"
        guard let be = type.blockElements, let bb = type.blockBytes else {
            throw TensorError.invalidArgument(operation: op, detail: "type \(type) is not one Reins reads")
        }
        guard rows > 0, columns > 0, columns % be == 0 else {
            throw TensorError.invalidArgument(
                operation: op, detail: "\(rows) x \(columns) is not whole \(type) blocks of \(be) per row")
        }
        let rowBytes = columns / be * bb
        let (total, overflow) = rows.multipliedReportingOverflow(by: rowBytes)
        guard !overflow, offset >= 0, offset <= data.count, total <= data.count - offset else {
            throw TensorError.invalidArgument(operation: op, detail: "\(data.count) bytes do not hold \(rows) rows of \(rowBytes)")
        }
        (self.type, self.rows, self.columns, self.rowBytes, self.data, self.offset) = (type, rows, columns, rowBytes, data, offset)
        isInterleaved = false
    }

    private init(interleaving m: QuantizedMatrix, bytes: Data) {
        (type, rows, columns, rowBytes, data, offset, isInterleaved) = (m.type, m.rows, m.columns, m.rowBytes, bytes, 0, true)
    }

    /// Whether ``interleavedByRows()`` can interleave this matrix: a block type (Q4_0 ... Q8_0, Q2_K ... Q6_K,
    /// IQ4_NL, IQ4_XS) with rows a multiple of 8.
    public var canInterleave: Bool { rk_qpack8_bytes(Int32(type.rawValue), Int32(rows), Int32(columns)) > 0 }

    /// The same matrix with its blocks interleaved by 8 rows (a copy, the same size; nothing is dequantized), or this
    /// one when it is interleaved already or cannot be (``canInterleave``). The integer products then share each
    /// block's float work among 8 weight rows (SmolLM2-135M Q4_1 on 2 cores: decoding one row ~1.7x faster, a batch of
    /// 8 rows ~2.3x; see Benchmarks/README.md). Frozen quantized layers of a model are kept this way.
    public func interleavedByRows() -> QuantizedMatrix {
        guard !isInterleaved, canInterleave else { return self }
        // In blocks of 2 MB pages (``PageBlocks``): a one-row decoding step streams every weight once.
        let (out, block) = PageBlocks.weights.take(byteCount)
        withBytes { _ = rk_qpack8(out, $0, Int32(type.rawValue), Int32(rows), Int32(columns)) }
        let packed = Data(
            bytesNoCopy: out, count: byteCount, deallocator: .custom { _, _ in withExtendedLifetime(block) {} })
        if isFileMapping { withBytes { releasePages(of: $0, count: byteCount) } }
        return QuantizedMatrix(interleaving: self, bytes: packed)
    }

    /// Asks the kernel to drop the resident pages wholly inside `count` bytes from `start` (MADV_PAGEOUT: clean pages
    /// of a file mapping are dropped and read again if touched; nothing is lost whatever the memory is), so that a
    /// GGUF file's row-major copy does not stay resident beside the interleaved one.
    private func releasePages(of start: UnsafeRawPointer, count: Int) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let first = (Int(bitPattern: start) + page - 1) / page * page
        let end = (Int(bitPattern: start) + count) / page * page
        guard page > 0, end > first, let p = UnsafeMutableRawPointer(bitPattern: first) else { return }
        _ = madvise(p, end - first, 21)  // MADV_PAGEOUT (Linux 5.4); older kernels refuse it, which changes nothing
    }

    /// Rows `range` as row-major blocks into `out` (`range.count × rowBytes` bytes), whatever the stored layout.
    func copyRowBlocks(_ range: Range<Int>, into out: UnsafeMutableRawPointer) {
        withBytes { src in
            if isInterleaved {
                _ = rk_qunpack8_rows(
                    out, src, Int32(type.rawValue), Int32(rows), Int32(columns), Int32(range.lowerBound), Int32(range.upperBound))
            } else {
                out.copyMemory(from: src + range.lowerBound * rowBytes, byteCount: range.count * rowBytes)
            }
        }
    }

    /// The stored bytes, for `body`: row after row, or interleaved by 8 rows when ``isInterleaved``.
    public func withBytes<R>(_ body: (UnsafeRawPointer) throws -> R) rethrows -> R {
        try data.withUnsafeBytes { raw in try body(raw.baseAddress!.advanced(by: offset)) }  // rows > 0: never empty
    }

    /// The same matrix with its rows in another order: row `i` of the result is row `order[i]` of this one (a copy of
    /// the blocks; nothing is dequantized).
    public func reorderingRows(_ order: [Int]) throws -> QuantizedMatrix {
        guard order.count == rows, Set(order).count == rows, order.allSatisfy({ (0..<rows).contains($0) }) else {
            throw TensorError.invalidArgument(operation: "reorderingRows", detail: "not a permutation of \(rows) rows")
        }
        var copy = Data(count: rows * rowBytes)
        copy.withUnsafeMutableBytes { out in
            for (i, r) in order.enumerated() { copyRowBlocks(r..<(r + 1), into: out.baseAddress! + i * rowBytes) }
        }
        return try QuantizedMatrix(type: type, rows: rows, columns: columns, data: copy)
    }

    /// Rows `range` dequantized (bit-identical to the `gguf` package) into `out`, `range.count × columns` floats.
    public func dequantizeRows(_ range: Range<Int>, into out: UnsafeMutablePointer<Float>) {
        withBytes { src in
            Parallel.forRanges(range.count, minimum: max(1, 16384 / columns)) { r, _ in
                let first = range.lowerBound + r.lowerBound
                if isInterleaved {
                    _ = rk_dequantize_packed8_rows(
                        out + r.lowerBound * columns, src, Int32(type.rawValue), Int32(rows), Int32(columns),
                        Int32(first), Int32(first + r.count))
                } else {
                    _ = rk_dequantize(out + r.lowerBound * columns, src + first * rowBytes, r.count * columns, Int32(type.rawValue))
                }
            }
        }
    }

    /// The whole matrix as float32 (for comparisons and exports; a model never keeps this).
    public func dequantized() throws -> Tensor {
        let t = try Tensor(uninitializedShape: [rows, columns], operation: "QuantizedMatrix.dequantized")
        dequantizeRows(0..<rows, into: t.storage.pointer)
        return t
    }

    /// Elements held.
    public var elementCount: Int { rows * columns }
    /// Bytes held.
    public var byteCount: Int { rows * rowBytes }
}

extension GGMLType {
    /// The types Reins writes (``encode(_:)``): floats, and the block types llama.cpp's CPU code reads.
    public static let writable: [GGMLType] = [.f32, .f16, .bf16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q4_K, .q6_K]

    /// The writable type named `name` (`q8_0`, `Q4_K`, `f16`, ...: ggml's names, any case), or nil.
    public init?(writableName name: String) {
        guard let t = GGMLType.writable.first(where: { "\($0)".lowercased() == name.lowercased() }) else { return nil }
        self = t
    }

    /// `values` in this type's blocks, as a GGUF file stores them: F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 byte for
    /// byte as the `gguf` Python package quantizes; Q4_K and Q6_K by Reins's direct quantizer (each sub-block's range,
    /// scales rounded to half precision first).
    /// - Throws: ``TensorError/invalidArgument(operation:detail:)`` for a type not in ``writable`` or a count that is
    ///   not whole blocks.
    public func encode(_ values: UnsafeBufferPointer<Float>) throws -> Data {
        guard GGMLType.writable.contains(self), let be = blockElements, let bb = blockBytes else {
            throw TensorError.invalidArgument(operation: "GGMLType.encode", detail: "Reins does not write \(self)")
        }
        guard values.count % be == 0 else {
            throw TensorError.invalidArgument(
                operation: "GGMLType.encode", detail: "\(values.count) values are not whole \(self) blocks of \(be)")
        }
        // A block's scale comes from its largest magnitude: a NaN or an infinity has no 4- or 8-bit value.
        if let bad = values.firstIndex(where: { !$0.isFinite }) {
            throw TensorError.invalidArgument(
                operation: "GGMLType.encode", detail: "value \(bad) is \(values[bad]): only finite values quantize to \(self)")
        }
        let blocks = values.count / be
        var out = Data(count: blocks * bb)
        guard blocks > 0 else { return out }
        out.withUnsafeMutableBytes { raw in
            let dst = raw.baseAddress!, src = values.baseAddress!
            Parallel.forRanges(blocks, minimum: max(1, 8192 / be)) { r, _ in
                // The type and the count are checked above: the kernel cannot refuse them.
                _ = rk_quantize_blocks(
                    dst + r.lowerBound * bb, src + r.lowerBound * be, r.count * be, Int32(rawValue))
            }
        }
        return out
    }
}

extension QuantizedMatrix {
    /// `matrix` (`[rows, columns]`, float32) quantized to `type` (``GGMLType/encode(_:)``).
    public convenience init(quantizing matrix: Tensor, type: GGMLType) throws {
        guard matrix.rank == 2, type.isQuantized else {
            throw TensorError.invalidArgument(
                operation: "QuantizedMatrix(quantizing:)", detail: "a \(matrix.shape) tensor as \(type) (a matrix, a block type)")
        }
        let bytes = try matrix.withUnsafeBufferPointer { try type.encode($0) }
        try self.init(type: type, rows: matrix.shape[0], columns: matrix.shape[1], data: bytes)
    }
}

/// How a product with a quantized weight is computed.
public enum QuantizedRoute: Sendable {
    /// Float32 from the dequantized weight (panels of rows dequantized, then sgemm): the reference.
    case exact
    /// The faster route when not training, as measured on SmolLM2-135M Q4_1 (2 cores): integer dot products against
    /// 8-bit blocks of the input (as llama.cpp computes) up to ``Tensor/integerRouteInferenceRows`` rows (with the
    /// weight interleaved by 8 rows: a 64-token prompt 1390 tokens/s against the float route's 310, eight 64-token
    /// prompts 1600 against 630), the float route beyond. While training, always the float route, so that adapters
    /// train against the exact products.
    case automatic
}

extension Tensor {
    /// Rows of the weight dequantized per panel in the float route: a panel of ~1M floats stays in cache-sized reach
    /// and bounds the scratch memory whatever the layer's size.
    static let quantizedPanelElements = 1 << 20
    /// Up to this many input rows the float route dequantizes each block as it reads it instead of whole panels.
    public static let blockwiseFloatMaximumRows = 8
    /// Up to this many input rows the automatic route uses integer dot products when no gradient is recorded (beyond
    /// it the 8-bit copy of the input would be large; the float route's panels bound their memory).
    public static let integerRouteInferenceRows = 4096

    /// `x: [..., in]` to `[..., out]` through a quantized frozen weight `[out, in]` (+ bias). The weight gets no
    /// gradient; the input's gradient flows through it (dX = dY·W, by dequantized panels), as adapter training needs.
    public static func quantizedLinear(
        _ x: Tensor, weight: QuantizedMatrix, bias: Tensor? = nil, route: QuantizedRoute = .automatic
    ) throws -> Tensor {
        let (N, C) = x.rowsAndWidth
        let OC = weight.rows
        guard x.rank >= 1, C == weight.columns else {
            throw TensorError.shapeMismatch(
                operation: "quantizedLinear", detail: "input \(x.shape) with a \(weight.type) weight [\(OC), \(weight.columns)]")
        }
        if let bias, bias.shape != [OC] {
            throw TensorError.shapeMismatch(operation: "quantizedLinear", detail: "bias \(bias.shape) for \(OC) outputs")
        }
        let result = try Tensor(uninitializedShape: Array(x.shape.dropLast()) + [OC])
        let out = result.storage.pointer
        if N > 0 {
            if route == .automatic && C % 32 == 0 && N <= integerRouteInferenceRows && !Autograd.isTraining {
                if weight.isInterleaved {
                    try interleavedIntegerProducts(x, weights: [weight], into: [out])
                } else {
                    let t = Int32(weight.type.rawValue)
                    try withQuantizedActivations(x) { xq in
                        weight.withBytes { w in
                            Parallel.forRanges(OC, minimum: 64) { r, _ in
                                _ = rk_qmatmul_q8(
                                    out, xq, w, t, Int32(N), Int32(C), Int32(OC), Int32(r.lowerBound), Int32(r.upperBound))
                            }
                        }
                    }
                }
            } else if N <= blockwiseFloatMaximumRows {
                // Exact products for a few rows (decoding with --exact): each block dequantized as it is read
                // (an interleaved weight's rows put back in row order 64 at a time first).
                weight.withBytes { w in
                    Parallel.forRanges(OC, minimum: 64) { r, _ in
                        if weight.isInterleaved {
                            let chunk = 64
                            let scratch = UnsafeMutableRawPointer.allocate(byteCount: chunk * weight.rowBytes, alignment: 64)
                            defer { scratch.deallocate() }
                            var start = r.lowerBound
                            while start < r.upperBound {
                                let rows = start..<min(r.upperBound, start + chunk)
                                weight.copyRowBlocks(rows, into: scratch)
                                _ = rk_qmatvec_f32(
                                    out + rows.lowerBound, x.storage.pointer, scratch, Int32(weight.type.rawValue), Int32(N),
                                    Int32(C), Int32(OC), 0, Int32(rows.count))
                                start = rows.upperBound
                            }
                        } else {
                            _ = rk_qmatvec_f32(
                                out, x.storage.pointer, w, Int32(weight.type.rawValue), Int32(N), Int32(C), Int32(OC),
                                Int32(r.lowerBound), Int32(r.upperBound))
                        }
                    }
                }
            } else {
                try forEachPanel(of: weight) { rows, panel in
                    cblas_sgemm(
                        CblasRowMajor, CblasNoTrans, CblasTrans, Int32(N), Int32(rows.count), Int32(C), 1,
                        x.storage.pointer, Int32(C), panel, Int32(C), 0, out + rows.lowerBound, Int32(OC))
                }
            }
            if let bias {
                let b = bias.storage.pointer
                for n in 0..<N { for o in 0..<OC { out[n * OC + o] += b[o] } }
            }
        }
        var inputs = [x]
        if let bias { inputs.append(bias) }
        return recording(result, inputs: inputs) { g, grads in
            let dy = g.storage.pointer
            if let dx = grads[0], N > 0 {
                try? forEachPanel(of: weight) { rows, panel in
                    cblas_sgemm(
                        CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(N), Int32(C), Int32(rows.count), 1,
                        dy + rows.lowerBound, Int32(OC), panel, Int32(C), 1, dx, Int32(C))
                }
            }
            if grads.count > 1, let db = grads[1] { rk_bias_backward(db, dy, Int32(N), Int32(OC)) }
        }
    }

    /// `x·Wᵀ` through an interleaved quantized weight on the integer route, with some rows of `x` (along axis 0, each
    /// with every vector within it) multiplied by a vector first — IA3 on a layer's input in a batch of many adapters
    /// — as they are quantized, so that no scaled copy of `x` is made. Equal, bit for bit, to
    /// ``quantizedLinear(_:weight:bias:route:)`` of the scaled copy. Nil when that route does not apply (a weight not
    /// interleaved, a width not a multiple of 32, an input of one axis, too many rows, a training pass).
    /// - Throws: ``TensorError`` for a row out of range or a vector of the wrong width.
    public static func integerProduct(
        _ x: Tensor, weight: QuantizedMatrix, scalingRows scaling: [(rows: [Int], by: Tensor)]
    ) throws -> Tensor? {
        let (N, C) = x.rowsAndWidth
        guard x.rank >= 2, N > 0, N <= integerRouteInferenceRows, C % 32 == 0, !Autograd.isTraining,
            weight.isInterleaved, weight.columns == C
        else { return nil }
        let B = x.shape[0], vectors = N / B
        var perVector = [UnsafePointer<Float>?](repeating: nil, count: N)
        for (rows, by) in scaling {
            guard by.count == C else {
                throw TensorError.shapeMismatch(
                    operation: "integerProduct", detail: "a scale of \(by.count) values for rows \(C) wide")
            }
            for r in rows {
                guard r >= 0, r < B else {
                    throw TensorError.invalidArgument(operation: "integerProduct", detail: "row \(r) of \(B)")
                }
                for v in (r * vectors)..<((r + 1) * vectors) { perVector[v] = UnsafePointer(by.storage.pointer) }
            }
        }
        let result = try Tensor(uninitializedShape: Array(x.shape.dropLast()) + [weight.rows])
        try withExtendedLifetime(scaling.map(\.by)) {
            try interleavedIntegerProducts(
                x, weights: [weight], into: [result.storage.pointer], scales: scaling.isEmpty ? [] : perVector)
        }
        return result
    }

    /// `x·Wᵢᵀ` for several quantized weights that read the same input (a layer's query, key and value projections; its
    /// gate and up projections), without gradients: the input quantized once and every weight's groups of 8 rows
    /// shared among the threads in one parallel region. Each result equals ``quantizedLinear(_:weight:bias:route:)``'s
    /// bit for bit. Nil when that route does not apply (a weight not interleaved, widths that differ or are not a
    /// multiple of 32, too many rows, a training pass — recorded, or the unrecorded first pass of a checkpointed block,
    /// which must compute what its recomputation in backward does): the caller then takes the products one by one.
    public static func sharedInputQuantizedProducts(_ x: Tensor, weights: [QuantizedMatrix]) throws -> [Tensor]? {
        let (N, C) = x.rowsAndWidth
        guard x.rank >= 1, !weights.isEmpty, N > 0, N <= integerRouteInferenceRows, C % 32 == 0, !Autograd.isTraining,
            weights.allSatisfy({ $0.isInterleaved && $0.columns == C })
        else { return nil }
        let results = try weights.map { try Tensor(uninitializedShape: Array(x.shape.dropLast()) + [$0.rows]) }
        try interleavedIntegerProducts(x, weights: weights, into: results.map(\.storage.pointer))
        return results
    }

    /// The integer route for weights interleaved by 8 rows: `x` (`[N, C]` rows, `C` a multiple of 32) quantized to
    /// 8-bit blocks once, then `outputs[i] = x·Wᵢᵀ` (`[N, rowsᵢ]`) with every weight's groups of 8 rows numbered one
    /// after another and taken ~2M multiply-adds (at most 32 groups) at a time by whichever thread is free (a piece
    /// may span two weights). Pieces of ~128K (3 groups for 8 rows of 576) made an 8-row decoding step 15-18% slower:
    /// the two threads' pieces alternated, each writing 24 floats of every row, so neighbouring pieces shared the
    /// output's cache lines, and thousands of claims a step contended for one counter.
    /// `scales`: empty, or for each of `x`'s vectors one to multiply it by first (or nil).
    static func interleavedIntegerProducts(
        _ x: Tensor, weights: [QuantizedMatrix], into outputs: [UnsafeMutablePointer<Float>],
        scales: [UnsafePointer<Float>?] = []
    ) throws {
        let (N, C) = x.rowsAndWidth
        var firstGroup = [0]
        for w in weights { firstGroup.append(firstGroup.last! + w.rows / 8) }
        let piece = min(32, max(2, (1 << 21) / max(1, N * C * 8)))
        func withAllBytes(_ i: Int, _ pointers: [UnsafeRawPointer], _ body: ([UnsafeRawPointer]) -> Void) {
            guard i < weights.count else { return body(pointers) }
            weights[i].withBytes { withAllBytes(i + 1, pointers + [$0], body) }
        }
        try withQuantizedActivations(x, scales: scales) { xq in
            withAllBytes(0, []) { bytes in
                Parallel.forPieces(firstGroup.last!, piece: piece) { r in
                    for (i, w) in weights.enumerated() {
                        let lo = max(r.lowerBound, firstGroup[i]), hi = min(r.upperBound, firstGroup[i + 1])
                        guard lo < hi else { continue }
                        _ = rk_qmatmul_q8_packed8(
                            outputs[i], xq, bytes[i], Int32(w.type.rawValue), Int32(N), Int32(C), Int32(w.rows),
                            Int32(lo - firstGroup[i]), Int32(hi - firstGroup[i]))
                    }
                }
            }
        }
    }

    /// `x` (`[N, C]` rows, `C` a multiple of 32) as 8-bit blocks (one scale per 32 values), for the integer
    /// products; the blocks live until `body` returns.
    /// `scales`: empty, or for each row a vector to multiply it by before it is quantized (or nil).
    static func withQuantizedActivations<R>(
        _ x: Tensor, scales: [UnsafePointer<Float>?] = [], _ body: (UnsafePointer<rk_q8_block>) throws -> R
    ) throws -> R {
        let (N, C) = x.rowsAndWidth
        let blocks = try Tensor(uninitializedShape: [N * (C / 32) * MemoryLayout<rk_q8_block>.stride / 4])
        return try withExtendedLifetime(blocks) {
            let xq = UnsafeMutableRawPointer(blocks.storage.pointer).bindMemory(to: rk_q8_block.self, capacity: N * C / 32)
            // Rows shared between the threads from a few rows on: the rows were just written by both threads (a
            // parallel product), and one thread alone waits on the other core's cache lines (~0.7 ms of an 8-row
            // decoding step's serial time, 120 quantizations).
            let xp = UnsafePointer(x.storage.pointer)
            Parallel.forRanges(N, minimum: max(1, 2048 / max(C, 1))) { rows, _ in
                guard !scales.isEmpty else {
                    _ = rk_quantize_q8(
                        xq + rows.lowerBound * (C / 32), xp + rows.lowerBound * C, Int32(rows.count), Int32(C))
                    return
                }
                withUnsafeTemporaryAllocation(of: Float.self, capacity: C) { scaled in
                    for r in rows {
                        var source = xp + r * C
                        if let s = scales[r] {
                            for j in 0..<C { scaled[j] = source[j] * s[j] }
                            source = UnsafePointer(scaled.baseAddress!)
                        }
                        _ = rk_quantize_q8(xq + r * (C / 32), source, 1, Int32(C))
                    }
                }
            }
            return try body(xq)
        }
    }

    /// Dequantizes `weight` panel by panel into one scratch buffer and hands each to `body` (rows, panel floats).
    static func forEachPanel(
        of weight: QuantizedMatrix, _ body: (Range<Int>, UnsafeMutablePointer<Float>) -> Void
    ) throws {
        let panelRows = max(1, min(weight.rows, quantizedPanelElements / weight.columns))
        let scratch = try Tensor(uninitializedShape: [panelRows, weight.columns], operation: "quantizedLinear panel")
        var start = 0
        while start < weight.rows {
            let rows = start..<min(weight.rows, start + panelRows)
            weight.dequantizeRows(rows, into: scratch.storage.pointer)
            body(rows, scratch.storage.pointer)
            start = rows.upperBound
        }
    }
}

extension Tensor {
    /// Rows of a quantized frozen table for `ids: [...]`: `[..., columns]`, each row dequantized as the `gguf` package
    /// does. No gradient reaches the table.
    /// - Throws: ``TensorError/indexOutOfRange(operation:position:value:limit:)`` for an id outside the table.
    public static func quantizedEmbedding(_ ids: IntTensor, table: QuantizedMatrix) throws -> Tensor {
        let C = table.columns
        for (i, id) in ids.values.enumerated() where id < 0 || Int(id) >= table.rows {
            throw TensorError.indexOutOfRange(operation: "embedding", position: i, value: Int(id), limit: table.rows)
        }
        let result = try Tensor(uninitializedShape: ids.shape + [C])
        let out = result.storage.pointer
        for (i, id) in ids.values.enumerated() { table.dequantizeRows(Int(id)..<(Int(id) + 1), into: out + i * C) }
        return result
    }
}
