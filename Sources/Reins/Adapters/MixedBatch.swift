import CReinsKernels
import Foundation
import ReinsTensor

/// Which adapter each row of a batch uses, while a forward pass runs inside ``Module/withAdapters(perRow:_:)``: every
/// insertion point then applies, to each row, that row's own adapter — on one shared base, in one pass. The base's
/// products run once over the whole batch; each adapter adds its part over its own rows only (a low-rank product on
/// the gathered rows of each LoRA, per-row IA3 scales, bottleneck adapters and heads on their rows' groups).
public struct AdapterRouting: Sendable {
    @TaskLocal static var current: AdapterRouting?

    /// The adapter of each row (nil: the bare base).
    public let rows: [String?]
    /// Reduced-precision copies to read LoRA weights from, if any.
    let loraCopies: LoRACopies?
    /// The distinct adapters, in order of first appearance, with their rows.
    let groups: [(name: String, rows: [Int])]
    /// Which of ``Parallel/lanes(_:_:)``'s lanes runs this batch (0 outside lanes): each lane keeps its own adapter
    /// lookups at every layer (``RoutedAdapterCache``), for its own rows' adapters.
    let lane: Int

    init(_ rows: [String?], loraCopies: LoRACopies? = nil, lane: Int = 0) {
        self.rows = rows
        self.loraCopies = loraCopies
        self.lane = lane
        var order: [String] = [], members: [String: [Int]] = [:]
        for (b, name) in rows.enumerated() {
            guard let name else { continue }
            if members[name] == nil { order.append(name) }
            members[name, default: []].append(b)
        }
        groups = order.map { ($0, members[$0]!) }
    }

    /// Throws unless `x` has one row per routed row along axis 0.
    func check(_ x: Tensor, at site: @autoclosure () -> String) throws {
        guard x.rank >= 1, x.shape[0] == rows.count else {
            throw ModelError.badInput(
                "a batch routed to \(rows.count) rows' adapters reached \(site()) with a tensor of shape \(x.shape)")
        }
    }

    /// Runs `body` with no routing: an adapter's own computation on its rows' group (its inner layers are plain).
    static func outside<R>(_ body: () throws -> R) rethrows -> R { try $current.withValue(nil, operation: body) }
}

extension Module {
    /// Runs `body`, whose forward passes take batches where row `b` uses the adapter `perRow[b]` (nil: the bare base),
    /// every adapter at every insertion point applied to its own rows in one pass over the shared base — what a server
    /// needs to answer requests for many adapters together. Outside `body` the active adapter is as before.
    ///
    /// Each row's result equals running that row alone with its adapter active (up to float rounding: the base
    /// product is shared, the adapters' parts are added per group of rows).
    /// - Throws: ``ModelError/badInput(_:)`` for a name the model has no adapter of, or while an adapter is merged into
    ///   the base (a merged weight is one adapter's, not the batch's).
    public func withAdapters<R>(perRow: [String?], _ body: () throws -> R) throws -> R {
        let known = Set(adapterNames)
        if let unknown = perRow.compactMap({ $0 }).first(where: { !known.contains($0) }) {
            throw ModelError.badInput("no adapter named '\(unknown)' (the model has \(known.sorted()))")
        }
        if let merged = mergedModuleKey {
            throw ModelError.badInput(
                "\(merged) has an adapter merged into its weight: unmerge it (unmergeAdapters()) before mixing adapters in a batch")
        }
        let previous = activeAdapterName
        activateAdapter(nil)
        defer { activateAdapter(previous) }
        return try AdapterRouting.$current.withValue(AdapterRouting(perRow), operation: body)
    }

    /// ``withAdapters(perRow:_:)`` without its checks or activation changes, for a caller that has checked the names,
    /// knows that no adapter is merged and keeps none active (``ContinuousBatch``, once per decoding step: the checks
    /// walk the whole model).
    /// `lane`: the lane of ``Parallel/lanes(_:_:)`` the rows run on, when several batches run side by side.
    func routingRows<R>(_ perRow: [String?], loraCopies: LoRACopies? = nil, lane: Int = 0, _ body: () throws -> R)
        rethrows -> R
    {
        try AdapterRouting.$current.withValue(
            AdapterRouting(perRow, loraCopies: loraCopies, lane: lane), operation: body)
    }

    /// The key of a module with an adapter merged into its weight, if any.
    var mergedModuleKey: String? {
        namedModules().first { ($0.module as? any LoRAHost)?.isMerged == true }?.key
    }
}

extension Tensor {
    /// The rows `indices` of axis 0, in that order.
    func rows(_ indices: [Int]) throws -> Tensor {
        if indices.count == shape[0], indices.enumerated().allSatisfy({ $0.offset == $0.element }) { return self }
        return try Tensor.concatenate(indices.map { try slice(axis: 0, $0..<($0 + 1)) }, axis: 0)
    }

    /// The rows `indices` of axis 0, or every row when nil.
    func picking(_ indices: [Int]?) throws -> Tensor { try indices.map { try rows($0) } ?? self }

    /// This tensor with its rows `indices` (axis 0) replaced by the rows of `replacement`, in order.
    func replacingRows(_ indices: [Int], with replacement: Tensor) throws -> Tensor {
        guard replacement.shape[0] == indices.count, Array(replacement.shape.dropFirst()) == Array(shape.dropFirst())
        else {
            throw ModelError.badInput("rows \(replacement.shape) cannot replace \(indices.count) rows of \(shape)")
        }
        if indices.count == shape[0], indices.enumerated().allSatisfy({ $0.offset == $0.element }) { return replacement }
        var source = [Int?](repeating: nil, count: shape[0])
        for (i, r) in indices.enumerated() { source[r] = i }
        // Runs of consecutive rows from one tensor are copied as one slice.
        var pieces: [Tensor] = [], b = 0
        while b < shape[0] {
            var end = b + 1
            if let i = source[b] {
                while end < shape[0], let j = source[end], j == i + (end - b) { end += 1 }
                pieces.append(try replacement.slice(axis: 0, i..<(i + end - b)))
            } else {
                while end < shape[0], source[end] == nil { end += 1 }
                pieces.append(try slice(axis: 0, b..<end))
            }
            b = end
        }
        return pieces.count == 1 ? pieces[0] : try Tensor.concatenate(pieces, axis: 0)
    }
}

/// What ``Tensor/adjustRows(_:)`` does to some rows: `(row − minus + plus) ⊙ times`, each vector (if given) as wide as
/// the tensor's last axis.
struct RowAdjustment {
    var rows: [Int]
    var minus: Tensor? = nil, plus: Tensor? = nil, times: Tensor? = nil
}

extension Tensor {
    /// In place (the storage copied first if shared), for each adjustment, every vector along the last axis within its
    /// rows of axis 0: `(v − minus + plus) ⊙ times`. No gradient: for inference.
    /// - Throws: ``ModelError/badInput(_:)`` for a row out of range or a vector of the wrong width.
    mutating func adjustRows(_ adjustments: [RowAdjustment]) throws {
        guard !adjustments.isEmpty else { return }
        guard rank >= 1, shape[0] > 0 else { throw ModelError.badInput("rows adjusted in a tensor of shape \(shape)") }
        let (B, width) = (shape[0], shape[rank - 1])
        let perRow = count / B
        for a in adjustments {
            if let r = a.rows.first(where: { $0 < 0 || $0 >= B }) {
                throw ModelError.badInput("row \(r) adjusted in a tensor of \(B) rows")
            }
            for v in [a.minus, a.plus, a.times].compactMap({ $0 }) where v.count != width {
                throw ModelError.badInput("a vector of \(v.count) values adjusts rows \(width) wide")
            }
        }
        withUnsafeMutableBufferPointer { all in
            for a in adjustments {
                func read(_ v: Tensor?) -> UnsafePointer<Float>? { v.map { UnsafePointer($0.storage.pointer) } }
                let (minus, plus, times) = (read(a.minus), read(a.plus), read(a.times))
                withExtendedLifetime(a) {
                    // One plain loop per vector (each vectorizes), in the order of (v − minus + plus) ⊙ times.
                    for r in a.rows {
                        for start in stride(from: r * perRow, to: (r + 1) * perRow, by: width) {
                            let row = all.baseAddress! + start
                            if let m = minus { for j in 0..<width { row[j] -= m[j] } }
                            if let p = plus { for j in 0..<width { row[j] += p[j] } }
                            if let t = times { for j in 0..<width { row[j] *= t[j] } }
                        }
                    }
                }
            }
        }
    }
}

extension IntTensor {
    /// The rows `indices` of axis 0, in that order.
    func rows(_ indices: [Int]) throws -> IntTensor {
        let width = shape.dropFirst().reduce(1, *)
        var values: [Int32] = []
        values.reserveCapacity(indices.count * width)
        for r in indices { values += self.values[(r * width)..<((r + 1) * width)] }
        return try IntTensor(shape: [indices.count] + shape.dropFirst(), values: values)
    }
}

/// One routed group's adapters at a linear layer.
struct RoutedLinearAdapters {
    let lora: LoRA?, method: (any LinearAdapterMethod)?, ia3: IA3?, bias: Parameter?
    /// No other method and no DoRA magnitude: at inference its rows are adjusted in place.
    let inPlace: Bool
}

/// What the LoRA row kernels read of one LoRA: A `[rank, in]`, B (`[out, rank]` in float32, transposed `[rank, out]`
/// in a copy), its rank and scale; for 8-bit copies, the scales of A's and Bᵀ's rows.
struct LoRARowWeights {
    let a: UnsafeRawPointer, b: UnsafeRawPointer
    let rank: Int32, scale: Float
    var aScales: UnsafePointer<Float>? = nil, bScales: UnsafePointer<Float>? = nil
}

/// A linear layer's adapters for a routed batch's groups, looked up by name once and kept while the groups' names and
/// every adapter set stay the same — as they do over a server's decoding steps, each of which visits every layer
/// once. Looked up anew at each layer of each step, the dictionaries and adapter objects of eight groups (evicted by
/// the weights the step streams) cost ~10 µs a layer in cache misses, ~10% of an 8-row step with a LoRA per row.
final class RoutedAdapterCache {
    let names: [String]
    let epoch: Int
    let groups: [RoutedLinearAdapters?]
    /// Whether any group has an adapter here.
    let any: Bool
    /// Whether every group's adapter here is a plain LoRA (no DoRA magnitude, IA3, bias or other method): at inference
    /// its rows take the LoRA row kernel and nothing else.
    let plainLoRA: Bool
    /// The copies of the groups' LoRAs from `copySource` (held: their weights are read through `copiedWeights`), for
    /// the copies' `copyGeneration`.
    private var copySource: LoRACopies?
    private var copyGeneration = -1
    private var copies: [LoRACopies.Copy?] = []
    private var copiedWeights: [LoRARowWeights?] = []

    init(names: [String], epoch: Int, groups: [RoutedLinearAdapters?]) {
        (self.names, self.epoch, self.groups) = (names, epoch, groups)
        any = groups.contains { $0 != nil }
        plainLoRA = groups.allSatisfy { g in
            g.map { $0.lora != nil && $0.inPlace && $0.ia3 == nil && $0.bias == nil } ?? true
        }
    }

    func holds(_ routing: AdapterRouting, epoch: Int) -> Bool {
        guard self.epoch == epoch, names.count == routing.groups.count else { return false }
        for (name, group) in zip(names, routing.groups) where name != group.name { return false }
        return true
    }

    /// Each group's LoRA as the row kernel reads it from `source`'s copies (nil: no LoRA, or one computed otherwise —
    /// DoRA's rescaling, another method's chain —, which is not copied).
    func copiedWeights(_ source: LoRACopies) -> [LoRARowWeights?] {
        let generation = source.generation
        if copySource === source, copyGeneration == generation { return copiedWeights }
        copies = groups.map { g in g.flatMap { $0.inPlace ? $0.lora : nil }.map { source.copy(of: $0) } }
        copiedWeights = copies.map { $0?.weights }
        (copySource, copyGeneration) = (source, generation)
        return copiedWeights
    }

    /// The rows of `routing`'s groups whose plain LoRA the row kernel adds in place, each with its LoRA's weights: the
    /// copies from `copies` when given (no adapter object touched: each would be a cache miss in a decoding step,
    /// whose weights evict them), the float32 tensors otherwise — returned in `held`, which the caller keeps alive
    /// through the kernel.
    func loraRows(_ routing: AdapterRouting, copies: LoRACopies?) -> (rows: [(Int, LoRARowWeights)], held: [Tensor]) {
        var rows: [(Int, LoRARowWeights)] = []
        var held: [Tensor] = []
        let copied = copies.map { copiedWeights($0) }
        for (i, g) in routing.groups.enumerated() {
            let weights: LoRARowWeights
            if let copied {
                guard let h = copied[i] else { continue }
                weights = h
            } else {
                guard let a = groups[i], a.inPlace, let lora = a.lora else { continue }
                let (ta, tb) = (lora.a.value, lora.b.value)
                held += [ta, tb]
                weights = LoRARowWeights(
                    a: UnsafeRawPointer(ta.storage.pointer), b: UnsafeRawPointer(tb.storage.pointer),
                    rank: Int32(lora.rank), scale: lora.scale)
            }
            for r in g.rows { rows.append((r, weights)) }
        }
        return (rows, held)
    }
}

extension Linear {
    /// This layer's adapters for each of `routing`'s groups: from its lane's ``routedCaches`` while it holds.
    func routedAdapters(_ routing: AdapterRouting) -> RoutedAdapterCache {
        let epoch = AdapterChanges.epoch
        if let cache = routedCaches[routing.lane], cache.holds(routing, epoch: epoch) { return cache }
        let (loras, others, ia3s) = (slots.adapters, methods.members, ia3Vectors.members)
        let variants = biases?.variants ?? [:]
        let cache = RoutedAdapterCache(
            names: routing.groups.map(\.name), epoch: epoch,
            groups: routing.groups.map { g in
                let (lora, method, ia3, bias) = (loras[g.name], others[g.name], ia3s[g.name], variants[g.name])
                guard lora != nil || method != nil || ia3 != nil || bias != nil else { return nil }
                return RoutedLinearAdapters(
                    lora: lora, method: method, ia3: ia3, bias: bias,
                    inPlace: Self.rowsAdjustInPlace(lora: lora, method: method))
            })
        routedCaches[routing.lane] = cache
        return cache
    }

    /// Whether, at inference, a routed group's rows with `lora` and `method` here are adjusted in place (no other
    /// method and no DoRA magnitude): its plain LoRA, if any, then goes through the row kernel.
    static func rowsAdjustInPlace(lora: LoRA?, method: (any LinearAdapterMethod)?) -> Bool {
        method == nil && lora?.magnitude == nil
    }

    /// The LoRA `name` here when the row kernel adds it (a plain LoRA and no other method of that name): the one a
    /// routed batch reads from ``LoRACopies``.
    func rowKernelLoRA(_ name: String) -> LoRA? {
        guard let lora = loras[name], Self.rowsAdjustInPlace(lora: lora, method: methods.members[name]) else {
            return nil
        }
        return lora
    }

    /// The layer's output for a batch routed to many adapters: the base product once over every row, then each
    /// group's adapters on its rows (IA3 on the input before the product, BitFit's bias, LoRA's low-rank update or
    /// DoRA's rescaling, IA3 on the output; another method computes its rows through its own chain).
    func mixedForward(
        _ x: Tensor, routing: AdapterRouting, precomputed: (of: Tensor, product: Tensor)? = nil
    ) throws -> Tensor {
        try routing.check(x, at: "a \(inputs) -> \(outputs) linear layer")
        let cache = routedAdapters(routing)
        let baseBias = biases?.base.value
        guard cache.any else { return try baseProduct(x, bias: baseBias, precomputed: precomputed) }
        let gathered = !Autograd.isEnabled && !TrainingMode.isActive
        if gathered, cache.plainLoRA, let copies = routing.loraCopies {
            // A server's decoding step: the base product, then each row's LoRA from its copy — with no adapter object
            // touched (each would be a cache miss: the step's weights evict them).
            let product = try baseProduct(x, bias: nil, precomputed: precomputed)
            var y = try baseBias.map { try product + $0 } ?? product
            try Self.addLoRARows(&y, input: x, cache.loraRows(routing, copies: copies).rows, precision: copies.precision)
            return y
        }
        let plans = zip(routing.groups, cache.groups).compactMap { g, a in a.map { (rows: g.rows, adapters: $0) } }
        // Inference: the rows' IA3 scales, biases and plain LoRA updates are applied in place, row by row (a decoding
        // step of many adapters would otherwise gather and scatter rows, or pay two small products, per adapter per
        // layer); with gradients, each group's rows go through differentiable operations.
        var input = x
        var scaledProduct: Tensor?
        if gathered {
            let scalings = plans.compactMap { p in
                p.adapters.ia3.flatMap { $0.scalesInput ? (rows: p.rows, by: $0.vector.value) : nil }
            }
            // On a quantized layer whose input-scaling IA3 rows have no other update, the rows are scaled as the
            // input is quantized for the product: no copy of the whole input, which the layer's caller still holds
            // (SmolLM2's down projection, 8 rows: 49 KB a layer copied on the calling thread while the other waits).
            let alone = plans.allSatisfy { p in
                p.adapters.ia3?.scalesInput != true || (p.adapters.inPlace && p.adapters.lora == nil)
            }
            if !scalings.isEmpty, alone, precomputed == nil, quantizedRoute == .automatic, let q = quantizedWeight {
                scaledProduct = try Tensor.integerProduct(x, weight: q, scalingRows: scalings)
            }
            if scaledProduct == nil {
                try input.adjustRows(scalings.map { RowAdjustment(rows: $0.rows, times: $0.by) })
            }
        } else {
            for p in plans where p.adapters.ia3?.scalesInput == true {
                input = try input.replacingRows(p.rows, with: input.rows(p.rows) * p.adapters.ia3!.vector.value)
            }
        }
        let product = try scaledProduct ?? baseProduct(input, bias: nil, precomputed: precomputed)
        var y = try baseBias.map { try product + $0 } ?? product
        if gathered {
            // Plain LoRA updates added to their rows, read from the batch's copies when it has them.
            let (rows, held) = cache.loraRows(routing, copies: routing.loraCopies)
            try withExtendedLifetime(held) {
                try Self.addLoRARows(&y, input: input, rows, precision: routing.loraCopies?.precision)
            }
            // Their LoRA updates are in `y`: only their own biases and IA3 output scales are left.
            try y.adjustRows(plans.compactMap { p in
                guard p.adapters.inPlace else { return nil }
                let times = p.adapters.ia3.flatMap { $0.scalesInput ? nil : $0.vector.value }
                guard p.adapters.bias != nil || times != nil else { return nil }
                return RowAdjustment(
                    rows: p.rows, minus: p.adapters.bias == nil ? nil : baseBias, plus: p.adapters.bias?.value,
                    times: times)
            })
        }
        for p in plans where !(gathered && p.adapters.inPlace) {
            let bias = p.adapters.bias?.value ?? baseBias
            var ys: Tensor
            if let method = p.adapters.method {
                let xs = try input.rows(p.rows)
                ys = try AdapterRouting.outside {
                    try method.forward(xs, layer: self) { [self] x in
                        guard let lora = p.adapters.lora else { return try baseProduct(x, bias: bias) }
                        return try lora.delta(x, base: baseProduct(x, bias: nil), bias: bias, layer: self)
                    }
                }
            } else {
                let base = try product.rows(p.rows)
                ys = try p.adapters.lora.map { try $0.delta(input.rows(p.rows), base: base, bias: bias, layer: self) }
                    ?? (bias.map { try base + $0 } ?? base)
            }
            if let ia3 = p.adapters.ia3, !ia3.scalesInput { ys = try ys * ia3.vector.value }
            y = try y.replacingRows(p.rows, with: ys)
        }
        return y
    }

    /// Adds `s·B·A·x` to each listed batch row of `y` (`[B, ..., out]`, fresh) with that row's LoRA weights (float32,
    /// or the copies' layout of `precision`), a kernel call per row — per two rows next to each other in the batch for
    /// 8-bit copies, which the kernel reads in step —, the calls shared among the threads (8 adapters' updates read 8
    /// adapters' weights). The weights must stay alive through the call.
    static func addLoRARows(
        _ y: inout Tensor, input x: Tensor, _ rows: [(Int, LoRARowWeights)], precision: LoRACopies.Precision?
    ) throws {
        guard !rows.isEmpty else { return }
        let B = y.shape[0], T = y.count / max(B * y.shape[y.rank - 1], 1)
        let (inputs, outputs) = (x.shape[x.rank - 1], y.shape[y.rank - 1])
        if let bad = rows.first(where: { $0.0 < 0 || $0.0 >= B }) {
            throw ModelError.badInput("a LoRA update for row \(bad.0) of a batch of \(B)")
        }
        let maxRank = max(1, rows.map { Int($0.1.rank) }.max() ?? 1)
        // The kernels' per-row arrays, entry k for `rows[k]` (a call for entries k..<k+n reads them from entry k),
        // and each call's first entry, in one scratch (a step makes this call ~200 times).
        let n = rows.count, word = MemoryLayout<Int>.stride
        withUnsafeTemporaryAllocation(byteCount: n * (5 * word + 8), alignment: word) { arrays in
            let base = arrays.baseAddress!
            let a = base.bindMemory(to: UnsafeRawPointer?.self, capacity: 2 * n)
            let aScales = (base + 2 * n * word).bindMemory(to: UnsafePointer<Float>?.self, capacity: 2 * n)
            let starts = (base + 4 * n * word).bindMemory(to: Int.self, capacity: n)
            let ranks = (base + 5 * n * word).bindMemory(to: Int32.self, capacity: n)
            let scales = (base + 5 * n * word + 4 * n).bindMemory(to: Float.self, capacity: n)
            let (b, bScales) = (a + n, aScales + n)
            for (k, (_, w)) in rows.enumerated() {
                (a[k], b[k], aScales[k], bScales[k]) = (w.a, w.b, w.aScales, w.bScales)
                (ranks[k], scales[k]) = (w.rank, w.scale)
            }
            // Rows taken one at a time, only those with a LoRA: their adapters' ranks and widths differ (a batch's
            // rows may mix a large LoRA with none), so fixed shares would leave one thread waiting. With 8-bit copies,
            // two rows next to each other in the batch go in one call, read in step (measured: the kernel's CPU time
            // in an 8-row step with 8 demo LoRAs 4.97 -> 4.04 ms).
            var calls = 0, k = 0
            while k < n {
                starts[calls] = k
                calls += 1
                k += precision == .int8 && k + 1 < n && rows[k + 1].0 == rows[k].0 + 1 ? 2 : 1
            }
            let (xp, yp) = (UnsafePointer(x.storage.pointer), y.storage.pointer)
            func table<E>(_ k: Int, _ p: UnsafeMutablePointer<UnsafeRawPointer?>, _: E.Type)
                -> UnsafePointer<UnsafePointer<E>?>
            {
                UnsafeRawPointer(p + k).assumingMemoryBound(to: UnsafePointer<E>?.self)
            }
            withExtendedLifetime((x, y)) {
                Parallel.forPieces(calls, piece: 1) { pieces in
                    withUnsafeTemporaryAllocation(of: Float.self, capacity: maxRank) { work in
                        for p in pieces {
                            let (k, end) = (starts[p], p + 1 < calls ? starts[p + 1] : n)
                            let (count, row) = (Int32(end - k), rows[k].0)
                            let (y, x, scratch) = (yp + row * T * outputs, xp + row * T * inputs, work.baseAddress!)
                            let (t, i, o) = (Int32(T), Int32(inputs), Int32(outputs))
                            let (rank, scale, sa, sb) = (ranks + k, scales + k, aScales + k, bScales + k)
                            switch precision {
                            case .half:
                                rk_lora_rows_f16(
                                    y, x, count, t, i, o, table(k, a, UInt16.self), table(k, b, UInt16.self), rank,
                                    scale, scratch)
                            case .int8:
                                rk_lora_rows_q8(
                                    y, x, count, t, i, o, table(k, a, Int8.self), sa, table(k, b, Int8.self), sb,
                                    rank, scale, scratch)
                            case .int4:
                                rk_lora_rows_q4(
                                    y, x, count, t, i, o, table(k, a, UInt8.self), sa, table(k, b, UInt8.self), sb,
                                    rank, scale, scratch)
                            case nil:
                                rk_lora_rows(
                                    y, x, count, t, i, o, table(k, a, Float.self), table(k, b, Float.self), rank,
                                    scale, scratch)
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Reduced-precision copies of LoRA weights for serving: a batch routed with them (``ContinuousBatch/loraCopies``)
/// reads each LoRA's A and B from its copy — half the bytes a decoding step reads for adapters in half precision, a
/// quarter in 8-bit integers, a sixth in 4-bit groups. A copy is made the first time a batch reads the LoRA and is of
/// its weights as they were then: after changing a LoRA's weights, ``removeAll()``.
public final class LoRACopies: @unchecked Sendable {
    /// How a copy stores the weights.
    public enum Precision: String, Sendable, CaseIterable {
        /// IEEE half precision (nearest, ties to even): each weight within 2⁻¹¹ of its value, relatively.
        case half
        /// 8-bit integers with a float scale per row of A and of Bᵀ (symmetric: the row's largest magnitude is 127;
        /// nearest): each weight within 1/254 of its row's largest magnitude.
        case int8
        /// 4-bit integers in groups of 32 along each row of A and of Bᵀ, a float scale per group (symmetric: the
        /// group's largest magnitude is 7; nearest): each weight within 1/14 of its group's largest magnitude, as
        /// coarse as a 4-bit base's own weights (about 5/8 of the 8-bit copies' bytes).
        case int4
    }

    final class Copy {
        let lora: LoRA  // held, so that its identity is not reused while the copy lives
        /// The blocks that hold `a` and `b`.
        private let blocks: [PageBlocks.Block]
        /// A `[rank, in]` and B transposed, `[rank, out]` (the kernels' layout), as `precision` stores them; for 8-bit
        /// integers, each row's scale after its rows (`rank` floats past `rank·in`, past `rank·out`); for 4-bit ones,
        /// groups of 32 (16 bytes each: A's row by row, Bᵀ's group by group, `rk_lora_rows_q4`'s layout), then each
        /// group's scale in the same order.
        let a: UnsafeMutableRawPointer, b: UnsafeMutableRawPointer
        let weights: LoRARowWeights

        /// `take(bytes)` gives memory that lives as long as the block it returns.
        init(_ lora: LoRA, precision: Precision, take: (Int) -> (UnsafeMutableRawPointer, PageBlocks.Block)) {
            self.lora = lora
            let rank = lora.rank
            var blocks: [PageBlocks.Block] = []
            func allocate(_ bytes: Int) -> UnsafeMutableRawPointer {
                let (p, block) = take(max(bytes, 1))
                if !blocks.contains(where: { $0 === block }) { blocks.append(block) }
                return p
            }
            // `values` as `rows` rows of `columns`, transposed first when asked, stored as `precision` stores them.
            func stored(_ t: Tensor, transposed: Bool) -> (UnsafeMutableRawPointer, UnsafePointer<Float>?) {
                let v = t.storage.pointer
                let (n, m) = (t.shape[0], t.count / max(t.shape[0], 1))
                let (rows, columns) = transposed ? (m, n) : (n, m)
                let value = { (i: Int, j: Int) in transposed ? v[j * m + i] : v[i * columns + j] }
                switch precision {
                case .half:
                    let p = allocate(rows * columns * 2).bindMemory(to: UInt16.self, capacity: rows * columns)
                    for i in 0..<rows { for j in 0..<columns { p[i * columns + j] = rk_float_to_half(value(i, j)) } }
                    return (UnsafeMutableRawPointer(p), nil)
                case .int8:
                    let count = rows * columns
                    let raw = allocate(count + MemoryLayout<Float>.stride * (rows + 1))
                    let q = raw.bindMemory(to: Int8.self, capacity: count)
                    // The scales start at the first float boundary after the integers.
                    let offset = (count + MemoryLayout<Float>.stride - 1) / MemoryLayout<Float>.stride
                    let scales = (raw + offset * MemoryLayout<Float>.stride).bindMemory(to: Float.self, capacity: rows)
                    for i in 0..<rows {
                        scales[i] = onGrid(i, 0..<columns, levels: 127) { q[i * columns + $0] = Int8($1) }
                    }
                    return (raw, UnsafePointer(scales))
                case .int4:
                    let groups = (columns + 31) / 32
                    let bytes = rows * groups * 16
                    let raw = allocate(bytes + MemoryLayout<Float>.stride * (rows * groups + 1))
                    let q = raw.bindMemory(to: UInt8.self, capacity: bytes)
                    q.initialize(repeating: 0x88, count: bytes)  // a partial group's padding reads as zeros
                    let offset = (bytes + MemoryLayout<Float>.stride - 1) / MemoryLayout<Float>.stride
                    let scales = (raw + offset * MemoryLayout<Float>.stride).bindMemory(
                        to: Float.self, capacity: rows * groups)
                    // A's groups row by row; Bᵀ's group by group (all rank rows' group g, then g + 1: the kernel
                    // adds a group of outputs from one run of bytes).
                    let index = { (i: Int, g: Int) in transposed ? g * rows + i : i * groups + g }
                    for i in 0..<rows {
                        for g in 0..<groups {
                            scales[index(i, g)] = onGrid(i, (g * 32)..<min(columns, g * 32 + 32), levels: 7) { j, v in
                                let (byte, code) = (index(i, g) * 16 + j % 16, UInt8(v + 8))
                                q[byte] = j % 32 < 16 ? (q[byte] & 0xF0) | code : (q[byte] & 0x0F) | code << 4
                            }
                        }
                    }
                    return (raw, UnsafePointer(scales))
                }
                // Row i's values in `span` on a symmetric grid of `levels` steps each way spanning their largest
                // magnitude (nearest), each integer given to `put` with its column; returns the step. A span with an
                // infinity or NaN reads as NaN (as its float32 update would be), not as a trap; quotients are
                // clamped (a subnormal step is rounded coarsely, and a quotient may pass `levels`).
                func onGrid(_ i: Int, _ span: Range<Int>, levels: Float, _ put: (Int, Int) -> Void) -> Float {
                    var (largest, finite) = (Float(0), true)
                    for j in span {
                        let m = abs(value(i, j))
                        finite = finite && m.isFinite
                        largest = max(largest, m)
                    }
                    let step = finite ? largest / levels : .nan
                    for j in span {
                        put(j, Int(finite && step > 0 ? max(-levels, min(levels, (value(i, j) / step).rounded())) : 0))
                    }
                    return step
                }
            }
            let ((a, aScales), (b, bScales)) = withExtendedLifetime(lora) {
                (stored(lora.a.value, transposed: false), stored(lora.b.value, transposed: true))
            }
            (self.a, self.b, self.blocks) = (a, b, blocks)
            weights = LoRARowWeights(
                a: UnsafeRawPointer(a), b: UnsafeRawPointer(b), rank: Int32(rank), scale: lora.scale,
                aScales: aScales, bScales: bScales)
        }
    }
    /// How the copies store the weights.
    public let precision: Precision
    private var copies: [ObjectIdentifier: Copy] = [:]
    /// Memory for the copies, in blocks of 2 MB pages (``PageBlocks`` says why). For the copies (a C harness, 8 rows'
    /// 4-bit copies of the demo's LoRA shape over 30 layers): 3.07-3.37 ms of kernel a step from separate
    /// allocations, 2.74-2.85 from such blocks.
    private let blocks = PageBlocks(blockSize: 8 << 20)
    private var changes = 0
    private let lock = NSLock()

    public init(precision: Precision = .half) {
        self.precision = precision
    }

    /// LoRAs copied so far.
    public var count: Int { lock.withLock { copies.count } }

    /// Drops every copy (the next batch copies again what it reads).
    public func removeAll() {
        lock.withLock {
            copies = [:]
            blocks.startAfresh()
            changes += 1
        }
    }

    /// Counts ``removeAll()``s: a layer's cache of copies (``RoutedAdapterCache``) holds while it is unchanged.
    var generation: Int { lock.withLock { changes } }

    /// Copies every plain LoRA of the adapter `name` in `model` now, in the model's module order, rather than as
    /// steps first read them: one adapter's copies then lie together in memory in the order a step reads them (the
    /// eight demo LoRAs' eight-row step in process: 8.17 / 8.30 / 8.67 ms copied as read, 8.04 / 7.89 / 7.93 ms
    /// prepared, alternated), and no step stalls copying an adapter's weights. A server prepares each adapter as it
    /// loads it.
    public func prepare(adapter name: String, in model: any Module) {
        for case let layer as Linear in model.descendantModules() {
            if let lora = layer.rowKernelLoRA(name) { _ = copy(of: lora) }
        }
    }

    func copy(of lora: LoRA) -> Copy {
        lock.withLock {
            if let c = copies[ObjectIdentifier(lora)] { return c }
            let c = Copy(lora, precision: precision, take: blocks.take)
            copies[ObjectIdentifier(lora)] = c
            return c
        }
    }
}

extension LoRA {
    /// The adapted output of `x`'s rows given the base product `base = x·Wᵀ` (no bias): `base + b + s·B·A·x`, or DoRA's
    /// `b + f ⊙ (base + s·B·A·x)`.
    func delta(_ x: Tensor, base: Tensor, bias: Tensor?, layer: Linear) throws -> Tensor {
        let input = dropout > 0 && TrainingMode.isActive ? try x.trainingDropout(dropout) : x
        let low = try Tensor.linear(Tensor.linear(input, weight: a.value), weight: b.value).scaled(by: scale)
        var out = try base + low
        if magnitude != nil { out = try out * (magnitude!.value / doraNorm(on: layer)) }
        return try bias.map { try out + $0 } ?? out
    }
}

extension LayerNorm {
    /// Layer norm of a routed batch: the base bias, and each BitFit adapter's own on its rows.
    func mixedForward(
        _ x: Tensor, routing: AdapterRouting, precomputed: (of: Tensor, product: Tensor)? = nil
    ) throws -> Tensor {
        try routing.check(x, at: "a layer norm")
        var y = try Tensor.layerNorm(x, weight: weight.value, bias: biases.base.value, eps: eps)
        for g in routing.groups {
            guard let own = biases.variants[g.name] else { continue }
            y = try y.replacingRows(g.rows, with: y.rows(g.rows) - biases.base.value + own.value)
        }
        return y
    }
}

extension AdapterSlot {
    /// `out` with each routed group's rows replaced by `apply(adapter, rows)` where this slot has the group's adapter;
    /// `out` itself outside a routed batch, where `apply` gets the active adapter and every row.
    func mixing(_ out: Tensor, _ apply: (Adapter, [Int]?) throws -> Tensor?) throws -> Tensor {
        guard let routing = AdapterRouting.current else {
            return try current.flatMap { try apply($0, nil) } ?? out
        }
        try routing.check(out, at: "an adapter slot")
        var y = out
        for g in routing.groups {
            guard let adapter = adapters[g.name] else { continue }
            if let rows = try AdapterRouting.outside({ try apply(adapter, g.rows) }) {
                y = try y.replacingRows(g.rows, with: rows)
            }
        }
        return y
    }
}

extension Variants where Value == Linear {
    /// The task head applied to `x: [B, ...]`: the active one, or in a routed batch each row's adapter's (or the
    /// base's). Heads of different output counts cannot share one batch's tensor: that is a named error.
    func apply(_ x: Tensor) throws -> Tensor {
        guard let routing = AdapterRouting.current else { return try current(x) }
        try routing.check(x, at: "the task head")
        var pieces: [(rows: [Int], out: Tensor)] = []
        // Rows whose adapter has no head of its own (or that have no adapter) read the base head.
        let rest = routing.rows.indices.filter { b in routing.rows[b].flatMap { variants[$0] } == nil }
        try AdapterRouting.outside {
            if !rest.isEmpty { pieces.append((rest, try base(x.rows(rest)))) }
            for g in routing.groups { if let head = variants[g.name] { pieces.append((g.rows, try head(x.rows(g.rows)))) } }
        }
        let widths = Set(pieces.map { $0.out.shape.last! })
        guard widths.count == 1, let first = pieces.first else {
            throw ModelError.badInput(
                "the batch's adapters have task heads of \(widths.sorted()) outputs, which cannot share one logits tensor: batch rows whose heads have the same number of labels")
        }
        var shape = first.out.shape
        shape[0] = routing.rows.count
        var y = try Tensor.zeros(shape)
        for p in pieces { y = try y.replacingRows(p.rows, with: p.out) }
        return y
    }
}

/// The virtual tokens of a batch routed to many adapters: each row's prefix (`P_b` keys and values per layer) and
/// prompt vectors (`Q_b`), left-padded to the batch's longest (`P`, `Q`) and masked out, so that every row sees exactly
/// its own — and its tokens take the positions after them, as they would alone.
struct RoutedVirtualTokens {
    let P: Int, Q: Int
    let prefixes: [Prefix?]
    let prompts: [Tensor?]

    var rowCount: Int { prefixes.count }
    func prefixLength(_ b: Int) -> Int { prefixes[b]?.length ?? 0 }
    func promptLength(_ b: Int) -> Int { prompts[b]?.shape[0] ?? 0 }

    /// The start every routed pass shares, checked: the inputs `[B, Q + T, C]` (each row's prompt slots, then `embed(ids)`),
    /// every position (``positions(_:)``) and the key mask (``keyMask(_:length:)``).
    /// - Throws: ``ModelError/badInput(_:)`` for a shared cache (generation gives each row its own, ``ContinuousBatch``),
    ///   or a mask or position ids that do not match the ids.
    func start(
        _ ids: IntTensor, attentionMask: IntTensor?, positionIDs: IntTensor?, cache: KVCache?, width: Int,
        embed: (IntTensor) throws -> Tensor
    ) throws -> (x: Tensor, positions: IntTensor, keyMask: IntTensor) {
        let (B, T) = (ids.shape[0], ids.shape[1])
        guard cache == nil else {
            throw ModelError.badInput(
                "a batch routed to adapters with virtual tokens runs without a shared KV cache: generate through ContinuousBatch, which gives each row its own")
        }
        if let attentionMask, attentionMask.shape != [B, T] {
            throw ModelError.badInput("attention mask \(attentionMask.shape) does not match the ids \(ids.shape)")
        }
        let tokenPositions = try positionIDs ?? IntTensor(shape: [B, T], values: (0..<(B * T)).map { Int32($0 % T) })
        guard tokenPositions.shape == ids.shape else {
            throw ModelError.badInput("position ids \(tokenPositions.shape) do not match input ids \(ids.shape)")
        }
        var x = try embed(ids)
        if Q > 0 { x = try Tensor.concatenate([promptInputs(width: width), x], axis: 1) }
        return (x, try positions(tokenPositions), try keyMask(attentionMask, length: T))
    }

    /// `[B, P + Q + T]`: each row's padding slots 0, its prefix and prompt 1, then `mask` (nil: all tokens real);
    /// without `prefix`, `[B, Q + T]` (the prompt slots and the tokens: what the callers that add the prefix's own
    /// columns later need).
    func keyMask(_ mask: IntTensor?, length T: Int, prefix: Bool = true) throws -> IntTensor {
        var values: [Int32] = []
        for b in 0..<rowCount {
            let (p, q) = (prefixLength(b), promptLength(b))
            if prefix { values += [Int32](repeating: 0, count: P - p) + [Int32](repeating: 1, count: p) }
            values += [Int32](repeating: 0, count: Q - q) + [Int32](repeating: 1, count: q)
            values += mask.map { Array($0.values[(b * T)..<((b + 1) * T)]) } ?? [Int32](repeating: 1, count: T)
        }
        return try IntTensor(shape: [rowCount, (prefix ? P : 0) + Q + T], values: values)
    }

    /// Positions `[B, Q + T]`: the prompt slots (padding at 0), then the tokens' `positions` shifted past each row's
    /// own prefix and prompt.
    func positions(_ positions: IntTensor) throws -> IntTensor {
        let T = positions.shape[1]
        var values: [Int32] = []
        for b in 0..<rowCount {
            let (p, q) = (prefixLength(b), promptLength(b))
            values += [Int32](repeating: 0, count: Q - q) + (0..<q).map { Int32(p + $0) }
            values += positions.values[(b * T)..<((b + 1) * T)].map { $0 + Int32(p + q) }
        }
        return try IntTensor(shape: [rowCount, Q + T], values: values)
    }

    /// The prompt slots' inputs `[B, Q, C]` (zeros for padding).
    func promptInputs(width C: Int) throws -> Tensor {
        try Tensor.concatenate(
            (0..<rowCount).map { b in
                let q = promptLength(b)
                var parts: [Tensor] = []
                if Q - q > 0 { parts.append(try Tensor.zeros([1, Q - q, C])) }
                if let p = prompts[b] { parts.append(try p.reshaped([1, q, C])) }
                return parts.count == 1 ? parts[0] : try Tensor.concatenate(parts, axis: 1)
            }, axis: 0)
    }

    /// Every layer's prefix keys and values `[B, heads, P, hs]` (zeros for padding).
    func keysValues(layers: Int, heads: Int, headSize: Int) throws -> [(keys: Tensor, values: Tensor)]? {
        guard P > 0 else { return nil }
        let own = try prefixes.map { try $0?.keysValues(batch: 1) }
        /// Row `b`'s keys (`slot` 0) or values (1) of `layer`, left-padded with zeros to `P`.
        func padded(_ b: Int, _ layer: Int, _ slot: Int) throws -> Tensor {
            let p = prefixLength(b)
            let pad = P - p > 0 ? try Tensor.zeros([1, heads, P - p, headSize]) : nil
            guard let mine = own[b]?[layer] else { return pad! }
            let part = slot == 0 ? mine.keys : mine.values
            return try pad.map { try Tensor.concatenate([$0, part], axis: 2) } ?? part
        }
        return try (0..<layers).map { l in
            (
                try Tensor.concatenate(try (0..<rowCount).map { try padded($0, l, 0) }, axis: 0),
                try Tensor.concatenate(try (0..<rowCount).map { try padded($0, l, 1) }, axis: 0)
            )
        }
    }
}

extension VirtualTokenHost {
    /// In a routed batch where some row's adapter brings a prefix or prompt vectors: each row's, padded; else nil.
    func routedVirtualTokens(rows B: Int) throws -> RoutedVirtualTokens? {
        guard let routing = AdapterRouting.current,
            routing.groups.contains(where: { prefixes.members[$0.name] != nil || prompts.members[$0.name] != nil })
        else { return nil }
        guard routing.rows.count == B else {
            throw ModelError.badInput("a batch routed to \(routing.rows.count) rows' adapters got \(B) rows of ids")
        }
        let rowPrefixes = routing.rows.map { $0.flatMap { prefixes.members[$0] } }
        let rowPrompts = routing.rows.map { $0.flatMap { prompts.members[$0]?.value } }
        return RoutedVirtualTokens(
            P: rowPrefixes.map { $0?.length ?? 0 }.max() ?? 0, Q: rowPrompts.map { $0?.shape[0] ?? 0 }.max() ?? 0,
            prefixes: rowPrefixes, prompts: rowPrompts)
    }

    /// The prompt vectors' rows before the tokens in the hidden states: the active prompt's, or in a routed batch the
    /// longest routed prompt's.
    var leadingPromptRows: Int {
        guard let routing = AdapterRouting.current else { return promptLength }
        return routing.groups.compactMap { prompts.members[$0.name]?.value.shape[0] }.max() ?? 0
    }
}
