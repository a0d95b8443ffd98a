import CReinsKernels
import Foundation

extension Tensor {
    // MARK: binary

    /// How a right operand broadcasts: the same shape, or a trailing block of the left shape repeated over rows
    /// (a bias `[C]` over `[B, T, C]`, a scalar over anything).
    private func broadcastRows(_ other: Tensor, _ operation: String) throws -> (rows: Int, width: Int) {
        if other.shape == shape { return (1, count) }
        if other.count == 1 { return (count, 1) }
        if other.rank <= rank, Array(shape.suffix(other.rank)) == other.shape {
            return (count / max(other.count, 1), other.count)
        }
        throw TensorError.shapeMismatch(
            operation: operation,
            detail: "\(shape) and \(other.shape): the right shape must equal the left or a trailing part of it")
    }

    private enum Binary { case add, subtract, multiply, divide }

    private func binary(_ other: Tensor, _ op: Binary, _ name: String) throws -> Tensor {
        guard let (rows, width) = try? broadcastRows(other, name) else { return try broadcastBinary(other, op, name) }
        let result = try Tensor(uninitializedShape: shape)
        let a = storage.pointer, b = other.storage.pointer, o = result.storage.pointer
        // Elementwise, so any cut gives the same bits: by rows when the right side repeats over rows, else by columns.
        Tensor.spans(rows: rows, width: width) { r, cols in
            let ar = a + r * width, orow = o + r * width
            switch op {
            case .add: for i in cols { orow[i] = ar[i] + b[i] }
            case .subtract: for i in cols { orow[i] = ar[i] - b[i] }
            case .multiply: for i in cols { orow[i] = ar[i] * b[i] }
            case .divide: for i in cols { orow[i] = ar[i] / b[i] }
            }
        }
        let lhs = detached(), rhs = other.detached()
        return Tensor.recording(result, inputs: [self, other]) { g, grads in
            let dy = g.storage.pointer, a = lhs.storage.pointer, b = rhs.storage.pointer
            if let da = grads[0] {
                Tensor.spans(rows: rows, width: width) { r, cols in
                    let dyr = dy + r * width, dar = da + r * width
                    switch op {
                    case .add: for i in cols { dar[i] += dyr[i] }
                    case .subtract: for i in cols { dar[i] += dyr[i] }
                    case .multiply: for i in cols { dar[i] += dyr[i] * b[i] }
                    case .divide: for i in cols { dar[i] += dyr[i] / b[i] }
                    }
                }
            }
            guard let db = grads[1] else { return }
            let accumulate = { (r: Int, cols: Range<Int>) in
                let dyr = dy + r * width, ar = a + r * width
                switch op {
                case .add: for i in cols { db[i] += dyr[i] }
                case .subtract: for i in cols { db[i] -= dyr[i] }
                case .multiply: for i in cols { db[i] += dyr[i] * ar[i] }
                case .divide: for i in cols { db[i] -= dyr[i] * ar[i] / (b[i] * b[i]) }
                }
            }
            // Over repeated rows the right side's gradient is a sum: in row order, on one thread, for the same bits.
            if rows == 1 {
                Tensor.spans(rows: 1, width: width, accumulate)
            } else {
                for r in 0..<rows { accumulate(r, 0..<width) }
            }
        }
    }

    /// NumPy's broadcasting, for the shapes the fast paths above do not cover (`[2, 3, 4] * [2, 3, 1]`, `[3] + [2, 3]`):
    /// shapes aligned at the right, each axis equal or 1 on one side. One pass over the output with each operand's
    /// offset moved by its strides (0 along a broadcast axis); backward sums each operand's gradient over the axes it
    /// was broadcast along, in output order (deterministic).
    private func broadcastBinary(_ other: Tensor, _ op: Binary, _ name: String) throws -> Tensor {
        let rank = max(shape.count, other.shape.count)
        let a = [Int](repeating: 1, count: rank - shape.count) + shape,
            b = [Int](repeating: 1, count: rank - other.shape.count) + other.shape
        var out: [Int] = []
        for (x, y) in zip(a, b) {
            guard x == y || x == 1 || y == 1 else {
                throw TensorError.shapeMismatch(
                    operation: name, detail: "\(shape) and \(other.shape) do not broadcast (axes must be equal or 1)")
            }
            out.append(x == 1 ? y : x)
        }
        func strides(_ s: [Int]) -> [Int] {
            var st = [Int](repeating: 0, count: rank), step = 1
            for d in stride(from: rank - 1, through: 0, by: -1) { st[d] = s[d] == 1 ? 0 : step; step *= s[d] }
            return st
        }
        let (sa, sb) = (strides(a), strides(b))
        let result = try Tensor(uninitializedShape: out, operation: name)
        /// Calls `body(i, offsetA, offsetB)` for every output element in row-major order.
        func walk(_ body: (Int, Int, Int) -> Void) {
            var index = [Int](repeating: 0, count: rank), oa = 0, ob = 0
            for i in 0..<result.count {
                body(i, oa, ob)
                var d = rank - 1
                while d >= 0 {
                    index[d] += 1; oa += sa[d]; ob += sb[d]
                    if index[d] < out[d] { break }
                    oa -= sa[d] * out[d]; ob -= sb[d] * out[d]; index[d] = 0
                    d -= 1
                }
            }
        }
        let x = storage.pointer, y = other.storage.pointer, o = result.storage.pointer
        walk { i, ia, ib in
            switch op {
            case .add: o[i] = x[ia] + y[ib]
            case .subtract: o[i] = x[ia] - y[ib]
            case .multiply: o[i] = x[ia] * y[ib]
            case .divide: o[i] = x[ia] / y[ib]
            }
        }
        let lhs = detached(), rhs = other.detached()
        return Tensor.recording(result, inputs: [self, other]) { g, grads in
            let dy = g.storage.pointer, x = lhs.storage.pointer, y = rhs.storage.pointer
            let (da, db) = (grads[0], grads[1])
            walk { i, ia, ib in
                switch op {
                case .add: da?[ia] += dy[i]; db?[ib] += dy[i]
                case .subtract: da?[ia] += dy[i]; db?[ib] -= dy[i]
                case .multiply: da?[ia] += dy[i] * y[ib]; db?[ib] += dy[i] * x[ia]
                case .divide: da?[ia] += dy[i] / y[ib]; db?[ib] -= dy[i] * x[ia] / (y[ib] * y[ib])
                }
            }
        }
    }

    /// Elementwise sum, broadcasting as NumPy does (the same shape, a trailing part, one element and a row of rows
    /// take fast paths).
    public func adding(_ other: Tensor) throws -> Tensor { try binary(other, .add, "add") }
    /// Elementwise difference; broadcasting as in ``adding(_:)``.
    public func subtracting(_ other: Tensor) throws -> Tensor { try binary(other, .subtract, "subtract") }
    /// Elementwise product; broadcasting as in ``adding(_:)``.
    public func multiplying(_ other: Tensor) throws -> Tensor { try binary(other, .multiply, "multiply") }
    /// Elementwise quotient; broadcasting as in ``adding(_:)``.
    public func dividing(_ other: Tensor) throws -> Tensor { try binary(other, .divide, "divide") }

    public static func + (a: Tensor, b: Tensor) throws -> Tensor { try a.adding(b) }
    public static func - (a: Tensor, b: Tensor) throws -> Tensor { try a.subtracting(b) }
    public static func * (a: Tensor, b: Tensor) throws -> Tensor { try a.multiplying(b) }
    public static func / (a: Tensor, b: Tensor) throws -> Tensor { try a.dividing(b) }

    /// `self · factor + shift`, elementwise.
    public func scaled(by factor: Float, shift: Float = 0) -> Tensor {
        let result = Tensor(uninitializedLike: self)
        let x = storage.pointer, y = result.storage.pointer, n = count
        Parallel.forSpans(n) { r in for i in r { y[i] = x[i] * factor + shift } }
        return Tensor.recording(result, inputs: [self]) { g, grads in
            guard let dx = grads[0] else { return }
            let dy = g.storage.pointer
            Parallel.forSpans(n) { r in for i in r { dx[i] += dy[i] * factor } }
        }
    }

    /// Runs `body(row, columns)` over a `rows × width` block, cut by rows when there are many or by columns when
    /// there is one long row, one piece per thread for big blocks.
    static func spans(rows: Int, width: Int, _ body: (Int, Range<Int>) -> Void) {
        if rows == 1 {
            Parallel.forSpans(width) { cols in body(0, cols) }
        } else {
            Parallel.forSpans(rows, grain: Parallel.rowGrain(width: width)) { rs in for r in rs { body(r, 0..<width) } }
        }
    }

    public static prefix func - (a: Tensor) -> Tensor { a.scaled(by: -1) }

    // MARK: unary

    private enum Unary { case exp, log, tanh, relu, sigmoid, sqrt }

    private func unary(_ op: Unary) -> Tensor {
        let result = Tensor(uninitializedLike: self)
        let x = storage.pointer, y = result.storage.pointer, n = count
        Parallel.forSpans(n) { r in
            switch op {
            case .exp: for i in r { y[i] = Foundation.exp(x[i]) }
            case .log: for i in r { y[i] = Foundation.log(x[i]) }
            case .tanh: for i in r { y[i] = Foundation.tanh(x[i]) }
            case .relu: for i in r { y[i] = max(x[i], 0) }
            case .sigmoid: for i in r { y[i] = 1 / (1 + Foundation.exp(-x[i])) }
            case .sqrt: for i in r { y[i] = x[i].squareRoot() }
            }
        }
        let input = detached(), output = result.detached()
        return Tensor.recording(result, inputs: [self]) { g, grads in
            guard let dx = grads[0] else { return }
            let dy = g.storage.pointer, x = input.storage.pointer, y = output.storage.pointer
            Parallel.forSpans(n) { r in
                switch op {
                case .exp: for i in r { dx[i] += dy[i] * y[i] }
                case .log: for i in r { dx[i] += dy[i] / x[i] }
                case .tanh: for i in r { dx[i] += dy[i] * (1 - y[i] * y[i]) }
                case .relu: for i in r { dx[i] += x[i] > 0 ? dy[i] : 0 }
                case .sigmoid: for i in r { dx[i] += dy[i] * y[i] * (1 - y[i]) }
                case .sqrt: for i in r { dx[i] += dy[i] * 0.5 / y[i] }
                }
            }
        }
    }

    /// eˣ elementwise.
    public func exp() -> Tensor { unary(.exp) }
    /// Natural logarithm elementwise.
    public func log() -> Tensor { unary(.log) }
    /// Hyperbolic tangent elementwise.
    public func tanh() -> Tensor { unary(.tanh) }
    /// max(x, 0) elementwise.
    public func relu() -> Tensor { unary(.relu) }
    /// 1 / (1 + e⁻ˣ) elementwise.
    public func sigmoid() -> Tensor { unary(.sigmoid) }
    /// √x elementwise.
    public func sqrt() -> Tensor { unary(.sqrt) }

    // MARK: reductions

    /// The sum of all elements, as a scalar tensor.
    public func sum() -> Tensor {
        var s = 0.0
        let x = storage.pointer, n = count
        for i in 0..<n { s += Double(x[i]) }
        return Tensor.recording(Tensor(scalar: Float(s)), inputs: [self]) { g, grads in
            guard let dx = grads[0] else { return }
            let d = g.storage.pointer[0]
            for i in 0..<n { dx[i] += d }
        }
    }

    /// The mean of all elements, as a scalar tensor.
    public func mean() -> Tensor { sum().scaled(by: 1 / Float(max(count, 1))) }

    /// Sums along `axis`, removing it (or keeping it with size 1).
    public func sum(axis: Int, keepingAxis: Bool = false) throws -> Tensor {
        let a = try normalized(axis: axis, operation: "sum(axis:)")
        let outer = shape[..<a].reduce(1, *), n = shape[a], inner = shape[(a + 1)...].reduce(1, *)
        var outShape = shape
        if keepingAxis { outShape[a] = 1 } else { outShape.remove(at: a) }
        let result = Tensor(shape: outShape, storage: TensorStorage(count: outer * inner, repeating: 0))
        let x = storage.pointer, y = result.storage.pointer
        for o in 0..<outer {
            for k in 0..<n {
                let row = x + (o * n + k) * inner, out = y + o * inner; for i in 0..<inner { out[i] += row[i] }
            }
        }
        return Tensor.recording(result, inputs: [self]) { g, grads in
            guard let dx = grads[0] else { return }
            let dy = g.storage.pointer
            for o in 0..<outer {
                for k in 0..<n {
                    let row = dx + (o * n + k) * inner, d = dy + o * inner; for i in 0..<inner { row[i] += d[i] }
                }
            }
        }
    }

    /// Means along `axis`.
    public func mean(axis: Int, keepingAxis: Bool = false) throws -> Tensor {
        let a = try normalized(axis: axis, operation: "mean(axis:)")
        return try sum(axis: a, keepingAxis: keepingAxis).scaled(by: 1 / Float(max(shape[a], 1)))
    }

    /// The largest element (no gradient).
    public func maximum() -> Float { scalars.max() ?? -.infinity }

    /// The index of the largest element along the last axis, one per row (no gradient).
    public func argmax() -> [Int] {
        guard let width = shape.last, width > 0 else { return [] }
        let x = storage.pointer
        return (0..<(count / width)).map { r in
            var best = 0
            for j in 1..<width where x[r * width + j] > x[r * width + best] { best = j }
            return best
        }
    }
}
