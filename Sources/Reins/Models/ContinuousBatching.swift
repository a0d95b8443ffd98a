import CReinsKernels
import Foundation
import ReinsTensor

extension Tensor {
    /// Attention of one new position per row, each row against its own cache — the rows of a continuous batch have
    /// different lengths. `query: [B, NH, 1, hs]`, `key`/`value: [B, NKV, 1, hs]`: each row's key and value are appended
    /// to `caches[b]` and its query attends to all of that cache (causal: everything cached is earlier).
    static func attendingRowCaches(
        query q: Tensor, key k: Tensor, value v: Tensor, caches: [KVCache.Layer], scale: Float? = nil,
        window: Int? = nil
    ) throws -> Tensor {
        let B = q.shape[0]
        guard caches.count == B, q.shape[2] == 1, k.shape[2] == 1, !Autograd.isEnabled else {
            throw ModelError.badInput(
                "row caches decode one new position per row without gradients: \(caches.count) caches for queries \(q.shape)")
        }
        let (NH, hs, NKV) = (q.shape[1], q.shape[3], k.shape[1])
        guard k.shape[0] == B, v.shape == k.shape, NKV > 0, NH % NKV == 0, k.shape[3] == hs else {
            throw ModelError.badInput("row caches: queries \(q.shape) with keys \(k.shape) and values \(v.shape)")
        }
        if let window, window < 1 { throw ModelError.badInput("sliding window \(window) is not positive") }
        for (b, cache) in caches.enumerated() { try cache.append(k, v, row: b) }
        // Every row's heads in one parallel region (a region per row would cost more in hand-offs than the work):
        // row b's query heads against its own cache, all of it visible.
        let result = try Tensor.zeros([B, NH, 1, hs])
        var lse = [Float](repeating: 0, count: B * NH)
        let longest = caches.map(\.length).max() ?? 0
        var scratch = [Float](repeating: 0, count: Parallel.threadCount * max(longest, 1))
        let s = scale ?? 1 / Float(hs).squareRoot()
        let stores = caches.map { ($0.keys!, $0.values!, $0.length) }
        withExtendedLifetime((stores, q, result)) {
            lse.withUnsafeMutableBufferPointer { l in
                scratch.withUnsafeMutableBufferPointer { sp in
                    let (lp, scr) = (l.baseAddress!, sp.baseAddress!)
                    Parallel.forRanges(B * NH) { r, chunk in
                        for bh in r {
                            let (b, h) = (bh / NH, bh % NH)
                            let (keys, values, length) = stores[b]
                            let slide = Int32(min(window ?? 0, length + 2))
                            rk_attention_forward_rows(
                                result.storage.pointer + b * NH * hs, lp + b * NH, q.storage.pointer + b * NH * hs,
                                keys.storage.pointer, values.storage.pointer, nil, 1, Int32(NH), Int32(NKV), 1, Int32(length),
                                Int32(keys.shape[2]), Int32(hs), s, 1, Int32(length - 1), slide, nil, Int32(h), Int32(h + 1),
                                scr + chunk * max(longest, 1))
                        }
                    }
                }
            }
        }
        return result
    }
}

extension LlamaModel {
    /// Final hidden states `[B, 1, C]` for one new token per row, row `b` at position `positions[b]` with its own
    /// cache (prefix, prompt and earlier tokens in it already).
    func rowStates(_ ids: IntTensor, positions: [Int32], caches: [KVCache]) throws -> Tensor {
        try checkTokens(ids, vocabularySize: config.vocabularySize)
        let angles = try rotary.angles(try IntTensor(shape: [positions.count, 1], values: positions))
        var x = try tokenEmbedding(ids)
        for (i, layer) in layers.enumerated() {
            x = try layer(x, angles: angles, rowCaches: caches.map { $0.layers[i] })
        }
        return try finalNorm(x)
    }
}

extension GPT2Model {
    /// Final hidden states `[B, 1, C]` for one new token per row (as ``LlamaModel``'s).
    func rowStates(_ ids: IntTensor, positions: [Int32], caches: [KVCache]) throws -> Tensor {
        try checkTokens(ids, vocabularySize: config.vocabularySize)
        if let p = positions.first(where: { $0 < 0 || Int($0) >= config.positions }) {
            throw ModelError.sequenceTooLong(length: Int(p) + 1, maximum: config.positions)
        }
        var x = try tokenEmbedding(ids) + positionEmbedding(try IntTensor(shape: [positions.count, 1], values: positions))
        for (i, block) in blocks.enumerated() { x = try block(x, rowCaches: caches.map { $0.layers[i] }) }
        return try finalNorm(x)
    }
}

extension CausalLanguageModel {
    /// Next-token logits `[B, V]` for one new token per row, each row with its own cache and (inside
    /// ``Module/withAdapters(perRow:_:)``) its own adapter; positions continue each row's cache.
    func rowLogits(_ tokens: [Int32], caches: [KVCache]) throws -> Tensor {
        guard tokens.count == caches.count, !tokens.isEmpty else {
            throw ModelError.badInput("\(tokens.count) tokens for \(caches.count) row caches")
        }
        if let bad = caches.first(where: { $0.layers.count != layerCount }) {
            throw ModelError.badInput("a row cache has \(bad.layers.count) layers, the model \(layerCount)")
        }
        let ids = try IntTensor(shape: [tokens.count, 1], values: tokens)
        let positions = caches.map { Int32($0.length) }
        let h: Tensor
        if let m = self as? LlamaForCausalLM {
            h = try m.model.rowStates(ids, positions: positions, caches: caches)
        } else if let m = self as? GPT2LMHeadModel {
            h = try m.transformer.rowStates(ids, positions: positions, caches: caches)
        } else {
            throw ModelError.badInput("\(type(of: self)) cannot decode rows with their own caches")
        }
        return try outputLogits(h).reshaped([tokens.count, vocabularySize])
    }
}

extension GenerationOptions {
    /// Throws a named error for settings generation cannot run with.
    func validate() throws {
        guard temperature > 0 || greedy else { throw ModelError.badInput("temperature must be positive when sampling") }
        guard maxNewTokens >= 0 else {
            throw ModelError.badInput("maxNewTokens must not be negative, got \(maxNewTokens)")
        }
        guard temperature.isFinite else { throw ModelError.badInput("temperature must be finite, got \(temperature)") }
        if let k = topK, k < 1 { throw ModelError.badInput("topK must be at least 1, got \(k)") }
        if let p = topP, !(p > 0 && p <= 1) { throw ModelError.badInput("topP must be in (0, 1], got \(p)") }
        guard repetitionPenalty.isFinite, repetitionPenalty > 0 else {
            throw ModelError.badInput("repetitionPenalty must be positive and finite, got \(repetitionPenalty)")
        }
    }
}

/// Continuous batching for generation: requests, each with its own adapter, prompt, sampling settings, stop tokens
/// and token budget, join the running batch and leave it at token boundaries. A request joining is prefilled alone
/// with its adapter active (its prefix or prompt vectors enter its own KV cache); then every step decodes one token
/// for every running request in one pass over the shared base, each row with its own adapter
/// (``Module/withAdapters(perRow:_:)``) and its own cache.
///
/// Each request's tokens equal what ``CausalLanguageModel/generate(prompts:options:onToken:)`` gives for it alone
/// with its adapter active (float rounding aside: the base product is shared by the batch). While it runs, the batch
/// owns the model's adapter activation (it leaves none active). Not thread-safe: one caller (a server's engine loop)
/// drives it.
public final class ContinuousBatch {
    /// One request's state.
    public struct Request: Sendable {
        public let id: Int
        public let adapter: String?
        public let prompt: [Int32]
        public let options: GenerationOptions
        /// The new tokens so far.
        public internal(set) var tokens: [Int32] = []
    }

    /// What one request did in a step.
    public struct Event: Sendable, Equatable {
        public enum Finish: String, Sendable { case stop, length }
        public let id: Int
        public let token: Int32
        /// Set when the request left the batch with this token: a stop token, or its budget (or the model's positions).
        public let finish: Finish?
    }

    public let model: any CausalLanguageModel
    /// The most requests decoded together.
    public let capacity: Int
    private var running: [(request: Request, cache: KVCache, rng: SeededGenerator, next: Int32)] = []
    private var nextID = 0

    public init(model: any CausalLanguageModel, capacity: Int = 16) throws {
        guard capacity > 0 else { throw ModelError.badInput("a continuous batch needs room for at least one request") }
        self.model = model
        self.capacity = capacity
    }

    /// Requests in the batch.
    public var count: Int { running.count }
    public var isFull: Bool { running.count >= capacity }
    public var requests: [Request] { running.map(\.request) }

    /// Prefills `prompt` alone under `adapter` and adds it to the batch; returns its id and first event (its first
    /// new token — the request may already be finished by it).
    /// - Throws: ``ModelError/badInput(_:)`` for a full batch, an unknown adapter, an empty prompt, bad options, ids
    ///   outside the vocabulary, or a prompt plus budget beyond the model's positions.
    public func add(prompt: [Int32], adapter: String?, options: GenerationOptions) throws -> Event? {
        guard !isFull else { throw ModelError.badInput("the batch is full (\(capacity) requests)") }
        guard !prompt.isEmpty else { throw ModelError.badInput("every prompt needs at least one token") }
        try options.validate()
        if let adapter, !model.adapterNames.contains(adapter) {
            throw ModelError.badInput("no adapter named '\(adapter)' (the model has \(model.adapterNames.sorted()))")
        }
        if let merged = model.mergedModuleKey {
            throw ModelError.badInput(
                "\(merged) has an adapter merged into its weight: unmerge it before decoding requests for many adapters")
        }
        let id = nextID
        nextID += 1
        var request = Request(id: id, adapter: adapter, prompt: prompt, options: options)
        // The batch keeps no adapter active between its passes: each row's is routed to it.
        model.activateAdapter(adapter)
        defer { model.activateAdapter(nil) }
        let limit = model.positionLimit ?? Int(Int32.max)
        let virtual = model.virtualTokenCount
        guard prompt.count <= limit - virtual else {
            throw ModelError.sequenceTooLong(length: prompt.count + virtual, maximum: limit)
        }
        guard options.maxNewTokens > 0 else { return nil }
        let cache = KVCache(layers: model.layerCount, reserve: min(virtual + prompt.count + options.maxNewTokens, 4096))
        var rng = SeededGenerator(seed: options.seed)
        let token: Int32 = try Autograd.withoutGradients {
            let h = try model.decoderStates(
                try IntTensor(shape: [1, prompt.count], values: prompt), attentionMask: nil, positionIDs: nil,
                cache: cache)
            let last = h.shape[1] - 1
            var row = try model.outputLogits(h.slice(axis: 1, last..<(last + 1))).scalars
            return pickToken(&row, history: prompt, options: options, rng: &rng)
        }
        request.tokens.append(token)
        let finish = finishReason(request, token: token, cache: cache)
        if finish == nil { running.append((request, cache, rng, token)) }
        return Event(id: id, token: token, finish: finish)
    }

    /// Removes a request (a client that went away); nothing when it is not running.
    public func cancel(_ id: Int) { running.removeAll { $0.request.id == id } }

    /// One token for every running request, in one pass; finished requests leave the batch.
    public func step() throws -> [Event] {
        guard !running.isEmpty else { return [] }
        let logits = try Autograd.withoutGradients {
            try model.routingRows(running.map(\.request.adapter)) {
                try model.rowLogits(running.map(\.next), caches: running.map(\.cache))
            }
        }
        let V = model.vocabularySize
        // Each row's token drawn on its own thread share (a draw at a temperature exponentiates the whole vocabulary).
        let requests = running.map(\.request)
        var rngs = running.map(\.rng)
        var tokens = [Int32](repeating: 0, count: running.count)
        logits.withUnsafeBufferPointer { all in
            rngs.withUnsafeMutableBufferPointer { rp in
                tokens.withUnsafeMutableBufferPointer { tp in
                    // A share of the rows per thread (one chunk per row would leave the pool for Dispatch's threads).
                    Parallel.forRanges(requests.count) { rows, _ in
                        for b in rows {
                            var row = Array(all[(b * V)..<((b + 1) * V)])
                            let r = requests[b]
                            tp[b] = pickToken(&row, history: r.prompt + r.tokens, options: r.options, rng: &rp[b])
                        }
                    }
                }
            }
        }
        var events: [Event] = [], keep: [Int] = []
        for b in running.indices {
            let token = tokens[b]
            running[b].rng = rngs[b]
            running[b].request.tokens.append(token)
            running[b].next = token
            let finish = finishReason(running[b].request, token: token, cache: running[b].cache)
            events.append(Event(id: requests[b].id, token: token, finish: finish))
            if finish == nil { keep.append(b) }
        }
        running = keep.map { running[$0] }
        return events
    }

    private func finishReason(_ r: Request, token: Int32, cache: KVCache) -> Event.Finish? {
        if r.options.stopTokens.contains(token) { return .stop }
        if r.tokens.count >= r.options.maxNewTokens { return .length }
        // The next token would need one more position than the model has.
        if let limit = model.positionLimit, cache.length >= limit { return .length }
        return nil
    }
}
