import Foundation
import ReinsTensor

/// Named adapters at one insertion point, one of them active. Used by the blocks' fixed insertion points, so that many
/// task adapters can sit on one frozen base and be switched at run time.
public final class AdapterSlot<Adapter: Module>: Module {
    /// The adapters by name, one active.
    public let named = NamedSet<Adapter>()
    public var adapters: [String: Adapter] { named.members }
    public var active: String? {
        get { named.active }
        set { named.activate(newValue) }
    }

    public init() {}

    public func visitParameters(_ visit: inout ParameterVisitor) {
        for name in adapters.keys.sorted() { visit.module(name, adapters[name]) }
    }

    /// Adds (or replaces) `adapter` under `name` and activates it.
    public func add(_ name: String, _ adapter: Adapter) { named.add(name, adapter) }

    public func remove(_ name: String) { named.remove(name) }

    /// The active adapter, if any.
    public var current: Adapter? { named.current }
}

/// The adapter insertion points of one transformer block (GPT-2 block or BERT layer), each a named slot.
public final class BlockAdapters: Module {
    /// After the attention output projection, before the residual add (Houlsby's first adapter).
    public let afterAttention = AdapterSlot<BottleneckAdapter>()
    /// After the feed-forward network's second layer, before the residual add (Houlsby's second, Pfeiffer's only).
    public let afterFeedForward = AdapterSlot<BottleneckAdapter>()
    /// Parallel to the feed-forward network: AdapterBias on its intermediate activation.
    public let feedForwardBias = AdapterSlot<AdapterBias>()
    /// Parallel to the feed-forward network: a bottleneck reading the FFN's input.
    public let parallelFeedForward = AdapterSlot<ParallelAdapter>()

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("attention_adapter", afterAttention)
        visit.module("output_adapter", afterFeedForward)
        visit.module("adapter_bias", feedForwardBias)
        visit.module("parallel_adapter", parallelFeedForward)
    }

    /// The feed-forward output `f` with the parallel insertion points added: `f + α(z)·v + parallel(h)`.
    /// In a batch routed to many adapters (``Module/withAdapters(perRow:_:)``), each adapter on its own rows.
    func parallel(_ f: Tensor, input h: Tensor, intermediate z: Tensor) throws -> Tensor {
        let biased = try feedForwardBias.mixing(f) { b, rows in try f.picking(rows) + b.shift(z.picking(rows)) }
        return try parallelFeedForward.mixing(biased) { p, rows in try biased.picking(rows) + p.delta(h.picking(rows)) }
    }

    /// The attention sublayer's output `h` through the active "after attention" adapter; `residual` is the sublayer's
    /// input and `norm` the block's norm after the residual add (nil in pre-LN blocks).
    func attention(_ h: Tensor, residual: Tensor, norm: LayerNorm? = nil) throws -> Tensor {
        try afterAttention.mixing(h) { a, rows in
            try a(h.picking(rows), residual: residual.picking(rows), norm: norm)
        }
    }
    /// The same for the feed-forward sublayer and the "after FFN" adapter.
    func feedForward(_ h: Tensor, residual: Tensor, norm: LayerNorm? = nil) throws -> Tensor {
        try afterFeedForward.mixing(h) { a, rows in
            try a(h.picking(rows), residual: residual.picking(rows), norm: norm)
        }
    }
}

/// Where bottleneck adapters go.
public enum BottleneckPlacement: Sendable {
    /// After attention and after the feed-forward network (Houlsby).
    case houlsby
    /// After the feed-forward network only (Pfeiffer).
    case pfeiffer
}

extension Module {
    /// Every block's adapter insertion points, in layer order.
    public var blockAdapters: [BlockAdapters] { namedModules().compactMap { $0.module as? BlockAdapters } }

    /// Adds a bottleneck adapter named `name` to every block (Houlsby: two per block, Pfeiffer: one) and activates it.
    @discardableResult
    public func addBottleneckAdapter(
        _ name: String, placement: BottleneckPlacement, size: Int, bottleneck: Int,
        nonLinearity: BottleneckAdapter.NonLinearity = .relu, readsNormalizedSum: Bool = false,
        seed: UInt64 = 0
    ) throws -> Int {
        var added = 0
        func make(_ s: UInt64) throws -> BottleneckAdapter {
            let a = try BottleneckAdapter(size: size, bottleneck: bottleneck, nonLinearity: nonLinearity, seed: s)
            a.readsNormalizedSum = readsNormalizedSum
            return a
        }
        for (i, block) in blockAdapters.enumerated() {
            if placement == .houlsby {
                block.afterAttention.add(name, try make(seed + UInt64(4 * i)))
                added += 1
            }
            block.afterFeedForward.add(name, try make(seed + UInt64(4 * i + 2)))
            added += 1
        }
        return added
    }

    /// BitFit (Ben Zaken et al., arXiv 2106.10199): freezes everything except the biases (and, by `alsoTrain`, a head).
    public func applyBitFit(alsoTrain: (String) -> Bool = { _ in false }) {
        freeze()
        unfreeze { $0.hasSuffix(".bias") || alsoTrain($0) }
    }
}

extension Module {
    /// Adds AdapterBias named `name` to every block (parallel to the FFN's second layer) and activates it.
    @discardableResult
    public func addAdapterBias(_ name: String, intermediate: Int, size: Int, seed: UInt64 = 0) throws -> Int {
        for (i, block) in blockAdapters.enumerated() {
            block.feedForwardBias.add(
                name, try AdapterBias(intermediate: intermediate, size: size, seed: seed + UInt64(i)))
        }
        return blockAdapters.count
    }

    /// Adds a parallel adapter named `name` beside every block's FFN and activates it.
    @discardableResult
    public func addParallelAdapter(_ name: String, size: Int, bottleneck: Int, scale: Float = 4, seed: UInt64 = 0)
        throws -> Int
    {
        for (i, block) in blockAdapters.enumerated() {
            block.parallelFeedForward.add(
                name, try ParallelAdapter(size: size, bottleneck: bottleneck, scale: scale, seed: seed + UInt64(2 * i)))
        }
        return blockAdapters.count
    }
}
