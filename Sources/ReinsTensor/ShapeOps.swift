import Foundation

extension Tensor {
    /// The same elements viewed with another shape (no copy). One size may be `-1`, inferred from the others.
    ///
    /// - Throws: ``TensorError/shapeMismatch(operation:detail:)`` if the element counts differ.
    public func reshaped(_ newShape: [Int]) throws -> Tensor {
        var target = newShape
        if let free = target.firstIndex(of: -1) {
            let known = target.enumerated().filter { $0.offset != free }.map(\.element).reduce(1, *)
            guard known > 0, count % known == 0 else {
                throw TensorError.shapeMismatch(
                    operation: "reshape", detail: "cannot infer -1 in \(newShape) for \(count) elements")
            }
            target[free] = count / known
        }
        try Tensor.validate(shape: target, operation: "reshape")
        guard Tensor.elementCount(target) == count else {
            throw TensorError.shapeMismatch(operation: "reshape", detail: "\(shape) (\(count) elements) to \(newShape)")
        }
        let result = Tensor(shape: target, storage: storage)
        let n = count
        return Tensor.recording(result, inputs: [self]) { g, grads in
            guard let dx = grads[0] else { return }
            g.withUnsafeBufferPointer { dy in Parallel.forSpans(n) { r in for i in r { dx[i] += dy[i] } } }
        }
    }

    /// The axes reordered: axis `i` of the result is axis `axes[i]` of `self` (a copy in the new order).
    ///
    /// - Throws: ``TensorError/invalidArgument(operation:detail:)`` unless `axes` is a permutation of `0..<rank`.
    public func permuted(_ axes: [Int]) throws -> Tensor {
        guard axes.count == rank, axes.sorted() == Array(0..<rank) else {
            throw TensorError.invalidArgument(
                operation: "permute", detail: "\(axes) is not a permutation of the \(rank) axes of \(shape)")
        }
        let result = try Tensor(uninitializedShape: axes.map { shape[$0] })
        Tensor.permuteCopy(
            from: storage.pointer, shape: shape, axes: axes, to: result.storage.pointer, accumulate: false)
        let inverse = axes.indices.map { axes.firstIndex(of: $0)! }
        let outShape = result.shape
        return Tensor.recording(result, inputs: [self]) { g, grads in
            guard let dx = grads[0] else { return }
            Tensor.permuteCopy(from: g.storage.pointer, shape: outShape, axes: inverse, to: dx, accumulate: true)
        }
    }

    /// Swaps the last two axes: `[..., M, N]` to `[..., N, M]`.
    public func transposed() throws -> Tensor {
        guard rank >= 2 else {
            throw TensorError.invalidArgument(
                operation: "transpose", detail: "needs at least 2 axes, shape is \(shape)")
        }
        var axes = Array(0..<rank)
        axes.swapAt(rank - 1, rank - 2)
        return try permuted(axes)
    }

    /// Splits the channels into heads: `[B, T, NH·hs]` to `[B, NH, T, hs]`.
    public func splittingHeads(_ heads: Int) throws -> Tensor {
        guard rank == 3, heads > 0, shape[2] % heads == 0 else {
            throw TensorError.shapeMismatch(
                operation: "splitHeads",
                detail: "\(shape) into \(heads) heads; expected [B, T, C] with C divisible by the head count")
        }
        return try reshaped([shape[0], shape[1], heads, shape[2] / heads]).permuted([0, 2, 1, 3])
    }

    /// Merges heads back: `[B, NH, T, hs]` to `[B, T, NH·hs]`.
    public func mergingHeads() throws -> Tensor {
        guard rank == 4 else {
            throw TensorError.shapeMismatch(operation: "mergeHeads", detail: "expected [B, NH, T, hs], got \(shape)")
        }
        return try permuted([0, 2, 1, 3]).reshaped([shape[0], shape[2], shape[1] * shape[3]])
    }

    /// The elements with index in `range` along `axis` (a copy).
    public func slice(axis: Int, _ range: Range<Int>) throws -> Tensor {
        let a = try normalized(axis: axis, operation: "slice")
        guard range.lowerBound >= 0, range.upperBound <= shape[a] else {
            throw TensorError.invalidArgument(
                operation: "slice", detail: "range \(range) on axis \(a) of size \(shape[a])")
        }
        let outer = shape[..<a].reduce(1, *), inner = shape[(a + 1)...].reduce(1, *)
        var outShape = shape
        outShape[a] = range.count
        let result = try Tensor(uninitializedShape: outShape)
        let src = storage.pointer, dst = result.storage.pointer
        let full = shape[a], width = range.count * inner, start = range.lowerBound * inner
        for o in 0..<outer { (dst + o * width).update(from: src + o * full * inner + start, count: width) }
        return Tensor.recording(result, inputs: [self]) { g, grads in
            guard let dx = grads[0] else { return }
            let dy = g.storage.pointer
            for o in 0..<outer {
                let d = dx + o * full * inner + start, s = dy + o * width
                for i in 0..<width { d[i] += s[i] }
            }
        }
    }

    /// The tensors joined along `axis`; all other sizes must agree.
    public static func concatenate(_ tensors: [Tensor], axis: Int) throws -> Tensor {
        guard let first = tensors.first else {
            throw TensorError.invalidArgument(operation: "concatenate", detail: "no tensors")
        }
        let a = try first.normalized(axis: axis, operation: "concatenate")
        for t in tensors
        where t.rank != first.rank
            || t.shape.enumerated().contains(where: { $0.offset != a && $0.element != first.shape[$0.offset] })
        {
            throw TensorError.shapeMismatch(
                operation: "concatenate", detail: "\(t.shape) does not fit \(first.shape) along axis \(a)")
        }
        let outer = first.shape[..<a].reduce(1, *), inner = first.shape[(a + 1)...].reduce(1, *)
        var outShape = first.shape
        outShape[a] = tensors.map { $0.shape[a] }.reduce(0, +)
        let result = try Tensor(uninitializedShape: outShape)
        let dst = result.storage.pointer, rowWidth = outShape[a] * inner
        let widths = tensors.map { $0.shape[a] * inner }
        let sources = tensors.map { $0.storage.pointer }
        let grain = Parallel.rowGrain(width: rowWidth)
        Parallel.forSpans(outer, grain: grain) { rows in
            var offset = 0
            for (src, w) in zip(sources, widths) {
                for o in rows { (dst + o * rowWidth + offset).update(from: src + o * w, count: w) }
                offset += w
            }
        }
        return recording(result, inputs: tensors) { g, grads in
            let dy = g.storage.pointer
            Parallel.forSpans(outer, grain: grain) { rows in
                var offset = 0
                for (dx, w) in zip(grads, widths) {
                    if let dx {
                        for o in rows {
                            let s = dy + o * rowWidth + offset, d = dx + o * w
                            for i in 0..<w { d[i] += s[i] }
                        }
                    }
                    offset += w
                }
            }
        }
    }

    func normalized(axis: Int, operation: String) throws -> Int {
        let a = axis < 0 ? axis + rank : axis
        guard a >= 0, a < rank else {
            throw TensorError.invalidArgument(operation: operation, detail: "axis \(axis) for shape \(shape)")
        }
        return a
    }

    /// Copies (or adds) `src` of `shape` into `dst` with axes reordered; rows along an unmoved last axis are copied whole.
    static func permuteCopy(
        from src: UnsafePointer<Float>, shape: [Int], axes: [Int], to dst: UnsafeMutablePointer<Float>, accumulate: Bool
    ) {
        let rank = shape.count
        let total = shape.reduce(1, *)
        guard total > 0 else { return }
        var strides = [Int](repeating: 1, count: rank)
        if rank > 1 {
            for i in stride(from: rank - 2, through: 0, by: -1) { strides[i] = strides[i + 1] * shape[i + 1] }
        }
        let outShape = axes.map { shape[$0] }, outStrides = axes.map { strides[$0] }
        // The innermost run: contiguous in both when the last axis stays last.
        let run = rank > 0 && axes[rank - 1] == rank - 1 ? shape[rank - 1] : 1
        let loopRank = run > 1 ? rank - 1 : rank
        // Threads take contiguous ranges of runs in output order; each starts its index where its range starts.
        Parallel.forSpans(total / run, grain: Parallel.rowGrain(width: run)) { runs in
            var index = [Int](repeating: 0, count: max(loopRank, 1))
            var rest = runs.lowerBound
            for d in stride(from: loopRank - 1, through: 0, by: -1) {
                index[d] = rest % outShape[d]; rest /= outShape[d]
            }
            var out = runs.lowerBound * run
            for _ in runs {
                var s = 0
                for d in 0..<loopRank { s += index[d] * outStrides[d] }
                if run > 1 {
                    if accumulate {
                        for i in 0..<run { dst[out + i] += src[s + i] }
                    } else {
                        (dst + out).update(from: src + s, count: run)
                    }
                } else {
                    if accumulate { dst[out] += src[s] } else { dst[out] = src[s] }
                }
                out += run
                var d = loopRank - 1
                while d >= 0 {
                    index[d] += 1
                    if index[d] < outShape[d] { break }
                    index[d] = 0
                    d -= 1
                }
            }
        }
    }
}
