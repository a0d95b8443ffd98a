import CReinsKernels
import Foundation
import ReinsTensor

extension Tensor {
    /// Attention of one new position per row, each row against its own cache — the rows of a continuous batch have
    /// different lengths — from the layer's projections of the new positions, heads side by side: `query:
    /// [B, 1, NH·hs]`, `key` and `value: [B, 1, NKV·hs]`, and for a rotary model `angles` (cos, sin `[B, 1, hs/2]`),
    /// by which queries and keys are rotated. Each row's key and value go into `caches[b]` at its next position, and
    /// its query attends to that cache as it then stands (causal: everything cached before is earlier). Rows may share
    /// a cache: consecutive positions of one prompt, in row order, each seeing itself and the positions before it.
    /// Returns `[B, 1, NH·hs]`, the heads side by side.
    ///
    /// One parallel region does it all when there are rows enough and no shared cache: each row's rotation, its key
    /// and value written straight into its cache, and its heads' attention, with no tensor in between.
    static func attendingRowCaches(
        query q: Tensor, key k: Tensor, value v: Tensor, heads NH: Int, keyValueHeads NKV: Int,
        angles: (cos: Tensor, sin: Tensor)?, caches: [KVCache.Layer], scale: Float? = nil, window: Int? = nil
    ) throws -> Tensor {
        let B = caches.count
        guard !Autograd.isEnabled, NH > 0, NKV > 0, NH % NKV == 0, q.rank == 3, q.shape[0] == B, q.shape[1] == 1,
            q.shape[2] % NH == 0, q.shape[2] > 0
        else {
            throw ModelError.badInput(
                "row caches decode one new position per row without gradients: \(B) caches for queries \(q.shape)"
                    + " of \(NH) heads over \(NKV) key/value heads")
        }
        let hs = q.shape[2] / NH
        guard k.shape == [B, 1, NKV * hs], v.shape == k.shape else {
            throw ModelError.badInput("row caches: queries \(q.shape) with keys \(k.shape) and values \(v.shape)")
        }
        if let angles, hs % 2 != 0 || angles.cos.shape != [B, 1, hs / 2] || angles.sin.shape != angles.cos.shape {
            throw ModelError.badInput(
                "row caches: rotary angles \(angles.cos.shape), \(angles.sin.shape) for \(B) rows of head size \(hs)")
        }
        if let window, window < 1 { throw ModelError.badInput("sliding window \(window) is not positive") }
        // Each row's position, claimed in row order (rows sharing a cache take consecutive ones); the stores are read
        // after every claim, since a claim may move its cache to larger storage.
        var slots = [Int](repeating: 0, count: B)
        for b in 0..<B { slots[b] = try caches[b].claimPosition(heads: NKV, headSize: hs) }
        let stores = try caches.map { c in
            guard let keys = c.keys, let values = c.values else {
                throw ModelError.badInput("a row cache without storage")
            }
            return (keys, values)
        }
        // Whether two rows share a cache (pairs compared for a decoding step's few rows, a set for a prompt's many).
        let shared =
            B <= 16
            ? caches.indices.contains { b in caches[..<b].contains { $0 === caches[b] } }
            : Set(caches.map(ObjectIdentifier.init)).count < B
        let result = try Tensor.zeros([B, 1, NH * hs])
        // Rotated queries need a buffer of their own; without rotation the projections are read where they are.
        let rotated = try angles.map { _ in try Tensor.zeros([B, NH, hs]) }
        let queries = rotated?.storage.pointer ?? q.storage.pointer
        var lse = [Float](repeating: 0, count: B * NH)
        let longest = (slots.max() ?? 0) + 1
        let s = scale ?? 1 / Float(hs).squareRoot()
        let angle = angles.map { ($0.cos.detached(), $0.sin.detached()) }
        let half = hs / 2
        // Row b's query rotated, and its key (rotated) and value written at its position in its cache.
        func write(_ b: Int) {
            let (keys, values) = stores[b]
            let capacity = keys.shape[2]
            let qp = q.storage.pointer + b * NH * hs
            let (kp, vp) = (k.storage.pointer + b * NKV * hs, v.storage.pointer + b * NKV * hs)
            for h in 0..<NKV {
                let at = (h * capacity + slots[b]) * hs
                if let (c, sn) = angle {
                    rk_rope_forward(
                        keys.storage.pointer + at, kp + h * hs, c.storage.pointer + b * half,
                        sn.storage.pointer + b * half, 1, 1, 1, Int32(hs))
                } else {
                    (keys.storage.pointer + at).update(from: kp + h * hs, count: hs)
                }
                (values.storage.pointer + at).update(from: vp + h * hs, count: hs)
            }
            if let (c, sn) = angle {
                for h in 0..<NH {
                    rk_rope_forward(
                        queries + (b * NH + h) * hs, qp + h * hs, c.storage.pointer + b * half,
                        sn.storage.pointer + b * half, 1, 1, 1, Int32(hs))
                }
            }
        }
        withExtendedLifetime((stores, q, k, v, result, rotated, angle)) {
            lse.withUnsafeMutableBufferPointer { l in
                let lp = l.baseAddress!
                // Head h of row b against the first `slots[b] + 1` positions of its cache.
                func attend(_ b: Int, _ h: Int, _ scratch: UnsafeMutablePointer<Float>) {
                    let (keys, values) = stores[b]
                    let length = slots[b] + 1
                    let slide = Int32(min(window ?? 0, length + 2))
                    rk_attention_forward_rows(
                        result.storage.pointer + b * NH * hs, lp + b * NH, queries + b * NH * hs,
                        keys.storage.pointer, values.storage.pointer, nil, 1, Int32(NH), Int32(NKV), 1, Int32(length),
                        Int32(keys.shape[2]), Int32(hs), s, 1, Int32(length - 1), slide, nil, Int32(h), Int32(h + 1),
                        scratch)
                }
                if !shared, B >= 2 * Parallel.threadCount {
                    // A row per piece, claimed as the threads finish (rows with long caches — a prefix adapter's
                    // virtual tokens — cost more): its writes, then its heads.
                    Parallel.forPieces(B, piece: 1) { rows in
                        withUnsafeTemporaryAllocation(of: Float.self, capacity: longest) { scratch in
                            for b in rows {
                                write(b)
                                for h in 0..<NH { attend(b, h, scratch.baseAddress!) }
                            }
                        }
                    }
                    return
                }
                // Few rows, or rows that read each other's positions: every write first, then single heads per piece.
                if B >= 2 * Parallel.threadCount {
                    Parallel.forPieces(B, piece: 1) { rows in for b in rows { write(b) } }
                } else {
                    for b in 0..<B { write(b) }
                }
                Parallel.forPieces(B * NH, piece: 1) { r in
                    withUnsafeTemporaryAllocation(of: Float.self, capacity: longest) { scratch in
                        for bh in r { attend(bh / NH, bh % NH, scratch.baseAddress!) }
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
    ///
    /// Rows may share a cache: a prompt's tokens in order, one per row, at `positions` (by default each cache's
    /// length, which suits one row per cache); `keep` picks the rows whose logits are wanted (by default all) — a
    /// prompt needs only its last.
    func rowLogits(_ tokens: [Int32], caches: [KVCache], positions given: [Int32]? = nil, keep: [Int]? = nil) throws
        -> Tensor
    {
        let h = try keptRowStates(tokens, caches: caches, positions: given, keep: keep)
        guard let keep else { return try outputLogits(h).reshaped([tokens.count, vocabularySize]) }
        return try keptLogits(h, keep: keep)
    }

    /// The logits `[K, V]` of the kept rows' final states `h` (``keptRowStates(_:caches:positions:keep:)``), the
    /// routing of every row (if any) narrowed to the kept ones: the output layer sees those only (an adapter on it).
    func keptLogits(_ h: Tensor, keep: [Int]) throws -> Tensor {
        let routing = AdapterRouting.current.map { r in
            AdapterRouting(keep.map { r.rows[$0] }, loraCopies: r.loraCopies, lane: r.lane)
        }
        return try AdapterRouting.$current.withValue(routing) {
            try outputLogits(h).reshaped([keep.count, vocabularySize])
        }
    }

    /// The final hidden states `[K, 1, C]` of ``rowLogits(_:caches:positions:keep:)``'s kept rows (all without
    /// `keep`), before the output layer.
    func keptRowStates(_ tokens: [Int32], caches: [KVCache], positions given: [Int32]?, keep: [Int]?) throws
        -> Tensor
    {
        guard tokens.count == caches.count, !tokens.isEmpty else {
            throw ModelError.badInput("\(tokens.count) tokens for \(caches.count) row caches")
        }
        if let bad = caches.first(where: { $0.layers.count != layerCount }) {
            throw ModelError.badInput("a row cache has \(bad.layers.count) layers, the model \(layerCount)")
        }
        if let given, given.count != tokens.count {
            throw ModelError.badInput("\(given.count) positions for \(tokens.count) rows")
        }
        if let keep, let bad = keep.first(where: { $0 < 0 || $0 >= tokens.count }) {
            throw ModelError.badInput("row \(bad) kept of \(tokens.count)")
        }
        let ids = try IntTensor(shape: [tokens.count, 1], values: tokens)
        let positions = given ?? caches.map { Int32($0.length) }
        let h: Tensor
        if let m = self as? LlamaForCausalLM {
            h = try m.model.rowStates(ids, positions: positions, caches: caches)
        } else if let m = self as? GPT2LMHeadModel {
            h = try m.transformer.rowStates(ids, positions: positions, caches: caches)
        } else {
            throw ModelError.badInput("\(type(of: self)) cannot decode rows with their own caches")
        }
        return try h.picking(keep)
    }
}

extension CausalLanguageModel {
    /// The decoder's virtual-token host (GPT-2's or the Llama family's).
    var decoderHost: (any VirtualTokenHost)? {
        (self as? LlamaForCausalLM)?.model ?? (self as? GPT2LMHeadModel)?.transformer
    }

    /// Writes the active adapter's learned prefix (keys and values of every layer) into an empty `cache`, as a first
    /// pass would, so that the prompt's tokens can follow as rows over it; false (the cache untouched) when the
    /// active adapter brings prompt vectors, which only a pass of their own can feed.
    func seedPrefix(_ cache: KVCache) throws -> Bool {
        guard let host = decoderHost, host.promptLength == 0, cache.length == 0, cache.layers.count == layerCount
        else { return false }
        guard let prefix = host.prefix else { return true }
        let layers = try Autograd.withoutGradients { try prefix.keysValues(batch: 1) }
        guard layers.count == cache.layers.count else { return false }
        for (layer, kv) in zip(cache.layers, layers) { try layer.append(kv.keys, kv.values) }
        return true
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
/// and token budget, join the running batch and leave it at token boundaries. Every step decodes one token for every
/// running request in one pass over the shared base, each row with its own adapter
/// (``Module/withAdapters(perRow:_:)``) and its own cache.
///
/// A request joins in one of two ways. ``enqueue(prompt:adapter:options:)`` folds its prompt into the next steps: the
/// prompt's tokens become rows of the step beside the running requests' (each over the request's own new cache, each
/// seeing the positions before it), up to ``prefillChunk`` prompt tokens a step, so the running requests do not wait
/// for it and the pass's fixed cost is paid once; its first token comes out of the step that feeds its last prompt
/// token. A prefix-tuning adapter's learned keys and values are written into the request's cache when it is enqueued
/// (its prompt's positions follow them); a request whose adapter brings prompt vectors (prompt tuning), which only a
/// pass of their own can feed, is prefilled alone at the start of the next step. ``add(prompt:adapter:options:)``
/// prefills at once, alone.
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
        /// The prompt's first tokens whose keys and values came from the ``ContinuousBatch/promptCache`` (0 without).
        public internal(set) var cachedTokens = 0
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
    /// The most requests decoded together (joining ones included).
    public let capacity: Int
    /// The most prompt tokens of joining requests a step takes (a long prompt is fed over several steps).
    public var prefillChunk = 256 {
        didSet { prefillChunk = max(1, prefillChunk) }
    }
    /// Rows per thread from which a step runs as lanes: its rows cut, between requests, into one group per thread,
    /// each group a whole pass over the base on its own core (``Parallel/lanes(_:_:)``), instead of one pass whose
    /// every product is shared out over the cores. Each core then streams every weight, but its pass never waits for
    /// the other's: a step of one pass hands work between the cores some 500 times, ~0.4 µs each when the cores are
    /// close and ~1.6 µs when the host has placed them far apart, and each product's output rows then cross between
    /// their caches. 0 turns lanes off. The rows' results are those of one pass, float rounding aside.
    public var laneRows = ContinuousBatch.defaultLaneRows {
        didSet { laneRows = max(0, laneRows) }
    }
    /// ``laneRows``'s default: 3. Measured on a 2-core VM, 8-bit LoRA copies, SmolLM2 Q4_1, a step against one pass:
    /// 6 rows 8.7 ms against 9.5-11.0, 4 rows 5.8-6.2 against 5.3-5.8 with the cores close (6.9 against 7.8 far).
    public static let defaultLaneRows = 3
    /// The lanes a step is cut into when it has rows enough: one per thread (tests set more than the machine has).
    var laneThreads = Parallel.threadCount
    /// The lanes the last ``step()`` ran in (1: one pass).
    public private(set) var lastStepLanes = 1
    /// Set, the steps read every plain LoRA's weights from these copies (half or a quarter of the adapter bytes per
    /// step; each LoRA's update then differs from float32's by the weights' rounding: ~1e-3 relative in half
    /// precision, up to ~1e-2 in 8-bit integers). Nil (the default): float32, each request's tokens those it gets
    /// alone.
    public var loraCopies: LoRACopies?
    /// Set, a request joining with ``enqueue(prompt:adapter:options:)`` takes the keys and values of the longest start
    /// of its prompt that an earlier request of its adapter fed (all but its last token), and its prompt is kept there
    /// once fed (``PromptCache``). Its tokens are those it gets without the cache, float rounding aside (the kept
    /// positions were computed in other steps' batches). Nil (the default): every prompt is computed whole.
    public var promptCache: PromptCache?
    /// A request in the batch: its cache and generator; while it joins, how much of its prompt is fed, after `start`
    /// cached positions (a prefix's), and `alone` when its adapter brings prompt vectors (a pass of its own); once it
    /// runs, `next`, its last token (the next step's input); `owner`, what its prompt's positions are kept under in
    /// the prompt cache.
    private struct Slot {
        var request: Request
        let cache: KVCache
        var rng: SeededGenerator
        var next: Int32 = 0
        var fed = 0
        var start = 0
        var alone = false
        var owner: PromptCache.Owner? = nil
    }
    private var running: [Slot] = []
    /// Requests waiting for (the rest of) their prompt to be fed.
    private var joining: [Slot] = []
    private var nextID = 0

    public init(model: any CausalLanguageModel, capacity: Int = 16) throws {
        guard capacity > 0 else { throw ModelError.badInput("a continuous batch needs room for at least one request") }
        self.model = model
        self.capacity = capacity
    }

    /// Requests in the batch, joining ones included.
    public var count: Int { running.count + joining.count }
    /// The rows the last ``step()`` computed: a token of each running request and the prompt tokens fed with them.
    public private(set) var lastStepRows = 0
    public var isFull: Bool { count >= capacity }
    /// The requests in the batch: running ones, then joining ones.
    public var requests: [Request] { running.map(\.request) + joining.map(\.request) }

    /// Checks a request and makes its state: nil when it asks for no tokens. Also returns the model's adapter sites
    /// (one walk of the model per request: a server admits many).
    private func admit(prompt: [Int32], adapter: String?, options: GenerationOptions, seeding: Bool = false) throws
        -> (request: Request, cache: KVCache, seeded: Bool, sites: [any AdapterSite])?
    {
        guard !isFull else { throw ModelError.badInput("the batch is full (\(capacity) requests)") }
        guard !prompt.isEmpty else { throw ModelError.badInput("every prompt needs at least one token") }
        try options.validate()
        let sites = model.adapterSites
        if let adapter, !sites.contains(where: { $0.holds(adapter) }) {
            throw ModelError.badInput("no adapter named '\(adapter)' (the model has \(model.adapterNames.sorted()))")
        }
        if sites.contains(where: { ($0 as? LoRASite)?.host.isMerged == true }) {
            throw ModelError.badInput(
                "\(model.mergedModuleKey ?? "a layer") has an adapter merged into its weight: unmerge it before"
                    + " decoding requests for many adapters")
        }
        if let bad = prompt.first(where: { $0 < 0 || Int($0) >= model.vocabularySize }) {
            throw ModelError.badInput("token id \(bad) is outside the vocabulary (\(model.vocabularySize) tokens)")
        }
        // The batch keeps no adapter active between its passes: each row's is routed to it.
        for site in sites { site.activate(adapter) }
        defer { for site in sites { site.activate(nil) } }
        let limit = model.positionLimit ?? Int(Int32.max)
        let virtual = model.virtualTokenCount
        guard prompt.count <= limit - virtual else {
            throw ModelError.sequenceTooLong(length: prompt.count + virtual, maximum: limit)
        }
        guard options.maxNewTokens > 0 else { return nil }
        let id = nextID
        nextID += 1
        let cache = KVCache(layers: model.layerCount, reserve: min(virtual + prompt.count + options.maxNewTokens, 4096))
        let seeded = seeding ? try model.seedPrefix(cache) : false
        return (Request(id: id, adapter: adapter, prompt: prompt, options: options), cache, seeded, sites)
    }

    /// Prefills `prompt` alone under `adapter` and adds it to the batch; returns its id and first event (its first
    /// new token — the request may already be finished by it), nil when it asks for no tokens.
    /// - Throws: ``ModelError/badInput(_:)`` for a full batch, an unknown adapter, an empty prompt, bad options, ids
    ///   outside the vocabulary, or a prompt plus budget beyond the model's positions.
    public func add(prompt: [Int32], adapter: String?, options: GenerationOptions) throws -> Event? {
        guard let (request, cache, _, _) = try admit(prompt: prompt, adapter: adapter, options: options) else {
            return nil
        }
        return try prefillAlone(request, cache: cache)
    }

    /// Adds a request whose prompt the next steps feed beside the running requests; returns its id (its first token
    /// comes from ``step()``), nil when it asks for no tokens. Throws as ``add(prompt:adapter:options:)``.
    public func enqueue(prompt: [Int32], adapter: String?, options: GenerationOptions) throws -> Int? {
        guard let (request, cache, seeded, sites) = try admit(
            prompt: prompt, adapter: adapter, options: options, seeding: true)
        else { return nil }
        var slot = Slot(
            request: request, cache: cache, rng: SeededGenerator(seed: options.seed), start: cache.length,
            alone: !seeded)
        if seeded, let promptCache {
            let owner = PromptCache.Owner(
                model: model, adapter: adapter,
                weights: adapter.map { sites.parameters(of: $0).map(\.value.storage) } ?? [],
                precision: loraCopies?.precision)
            slot.fed = try promptCache.restore(prompt, owner: owner, into: cache)
            slot.request.cachedTokens = slot.fed
            slot.owner = owner
        }
        joining.append(slot)
        return request.id
    }

    /// The prompt in one pass with the request's adapter active; its first token; the request runs on unless done.
    private func prefillAlone(_ r: Request, cache: KVCache) throws -> Event {
        var request = r
        model.activateAdapter(request.adapter)
        defer { model.activateAdapter(nil) }
        var rng = SeededGenerator(seed: request.options.seed)
        // OpenBLAS held to one thread: a prompt's float products big enough for its threads (a LoRA's on a 1536-wide
        // layer) would wake them, and they then spin, yielding, for ~0.1 s: through the next dozen steps they take
        // turns on the cores with the steps' own threads (measured in the 8-LoRA-row bench, which adds its requests
        // this way: the calling thread preempted ~1000 times a second; none when held).
        let token: Int32 = try Parallel.withSingleThreadedBLAS {
            try Autograd.withoutGradients {
                let h = try model.decoderStates(
                    try IntTensor(shape: [1, request.prompt.count], values: request.prompt), attentionMask: nil,
                    positionIDs: nil, cache: cache)
                let last = h.shape[1] - 1
                var row = try model.outputLogits(h.slice(axis: 1, last..<(last + 1))).scalars
                return pickToken(&row, history: request.prompt, options: request.options, rng: &rng)
            }
        }
        request.tokens.append(token)
        let finish = finishReason(request, token: token, cache: cache)
        if finish == nil { running.append(Slot(request: request, cache: cache, rng: rng, next: token)) }
        return Event(id: request.id, token: token, finish: finish)
    }

    /// The request `id` while it is in the batch (running or joining).
    public func request(_ id: Int) -> Request? {
        (joining.last { $0.request.id == id } ?? running.first { $0.request.id == id })?.request
    }

    /// Removes a request (a client that went away), running or joining; nothing when it is in neither.
    public func cancel(_ id: Int) {
        running.removeAll { $0.request.id == id }
        joining.removeAll { $0.request.id == id }
    }

    /// One token for every running request, in one pass that also feeds joining requests' prompts (up to
    /// ``prefillChunk`` tokens; a request whose prompt is all fed gets its first token); finished requests leave.
    public func step() throws -> [Event] {
        var events: [Event] = []
        // Prompt-tuning requests: prefilled alone first (their prompt vectors need a pass of their own).
        let alone = joining.filter(\.alone)
        joining.removeAll { $0.alone }
        for j in alone { events.append(try prefillAlone(j.request, cache: j.cache)) }
        // The rows: one per running request, then joining prompts' tokens in order while the chunk allows.
        var tokens = running.map(\.next), caches = running.map(\.cache), adapters = running.map(\.request.adapter)
        var positions = running.map { Int32($0.cache.length) }
        var keep = Array(running.indices)
        var fed: [(joiner: Int, count: Int)] = []
        var budget = prefillChunk
        for (i, j) in joining.enumerated() where budget > 0 {
            let n = min(j.request.prompt.count - j.fed, budget)
            for t in j.fed..<(j.fed + n) {
                tokens.append(j.request.prompt[t])
                caches.append(j.cache)
                adapters.append(j.request.adapter)
                positions.append(Int32(j.start + t))
            }
            budget -= n
            fed.append((i, n))
            if j.fed + n == j.request.prompt.count { keep.append(tokens.count - 1) }
        }
        lastStepRows = tokens.count
        guard !tokens.isEmpty else { return events }
        // Rows whose logits are drawn from: running requests, then joining ones whose prompt is now all fed (when
        // there are none, a pass that only feeds prompts still computes one row's logits and drops them).
        let drawn = keep.count
        let logits = try rowLogits(
            tokens, caches: caches, adapters: adapters, positions: positions,
            keep: drawn > 0 ? keep : [tokens.count - 1])
        for (i, n) in fed { joining[i].fed += n }
        let completed = fed.map(\.joiner).filter { joining[$0].fed == joining[$0].request.prompt.count }
        if let promptCache {
            // A prompt that cannot be kept (no memory for its copy) is only not kept: the step goes on.
            for j in completed.map({ joining[$0] }) {
                guard let owner = j.owner else { continue }
                try? promptCache.keep(j.request.prompt, owner: owner, from: j.cache, start: j.start)
            }
        }
        // Who draws each kept row: its request, its history, its generator.
        let requests = running.map(\.request) + completed.map { joining[$0].request }
        var rngs = running.map(\.rng) + completed.map { joining[$0].rng }
        var picked = [Int32](repeating: 0, count: drawn)
        let V = model.vocabularySize
        // Each row's token drawn on its own thread share (a draw at a temperature exponentiates the whole vocabulary).
        logits.withUnsafeBufferPointer { all in
            rngs.withUnsafeMutableBufferPointer { rp in
                picked.withUnsafeMutableBufferPointer { tp in
                    // A share of the rows per thread (one chunk per row would leave the pool for Dispatch's threads).
                    // One scratch row per share; a row's logits are read where they lie.
                    Parallel.forRanges(drawn) { rows, _ in
                        withUnsafeTemporaryAllocation(of: Float.self, capacity: V) { scratch in
                            for b in rows {
                                let r = requests[b]
                                tp[b] = pickToken(
                                    UnsafeBufferPointer(rebasing: all[(b * V)..<((b + 1) * V)]), scratch: scratch,
                                    history: { r.prompt + r.tokens }, options: r.options, rng: &rp[b])
                            }
                        }
                    }
                }
            }
        }
        var next: [Slot] = []
        for b in 0..<drawn {
            let token = picked[b]
            var entry = b < running.count ? running[b] : joining[completed[b - running.count]]
            entry.rng = rngs[b]
            entry.request.tokens.append(token)
            entry.next = token
            let finish = finishReason(entry.request, token: token, cache: entry.cache)
            events.append(Event(id: entry.request.id, token: token, finish: finish))
            if finish == nil { next.append(entry) }
        }
        running = next
        let done = Set(completed)
        joining = joining.indices.filter { !done.contains($0) }.map { joining[$0] }
        return events
    }

    /// The lanes a step of `rows` rows runs in: one per thread (``laneThreads``) when each gets ``laneRows`` rows,
    /// else one.
    func laneCount(rows: Int) -> Int {
        laneRows > 0 && laneThreads > 1 && rows >= laneRows * laneThreads ? laneThreads : 1
    }

    /// Where a step's rows are cut into `lanes` lanes of about equal rows, each cut between two requests (a prompt's
    /// rows share a cache and see each other: they stay in one lane): the lanes' first rows and the end, or nil when
    /// no cut is within two rows of an equal share (a long prompt fed beside a few running requests: one pass then
    /// shares it better).
    static func laneBounds(_ caches: [KVCache], lanes: Int) -> [Int]? {
        let n = caches.count
        var bounds = [0]
        for l in 1..<lanes {
            let even = n * l / lanes
            // The nearest row at or past the last cut where a new request starts.
            let starts = (bounds[bounds.count - 1] + 1)..<n
            let cuts = starts.filter { caches[$0] !== caches[$0 - 1] }
            guard let cut = cuts.min(by: { abs($0 - even) < abs($1 - even) }) else { return nil }
            bounds.append(cut)
        }
        bounds.append(n)
        let share = (n + lanes - 1) / lanes
        return zip(bounds, bounds.dropFirst()).allSatisfy { $1 - $0 <= share + 2 } ? bounds : nil
    }

    /// The kept rows' logits of a step, in one pass over every row, or — with rows enough (``laneRows``) — in one lane
    /// per thread, each a pass over its own rows on its own core.
    private func rowLogits(
        _ tokens: [Int32], caches: [KVCache], adapters: [String?], positions: [Int32], keep: [Int]
    ) throws -> Tensor {
        let lanes = laneCount(rows: tokens.count)
        lastStepLanes = 1
        guard lanes > 1, let bounds = Self.laneBounds(caches, lanes: lanes) else {
            return try Autograd.withoutGradients {
                try model.routingRows(adapters, loraCopies: loraCopies) {
                    try model.rowLogits(tokens, caches: caches, positions: positions, keep: keep)
                }
            }
        }
        lastStepLanes = lanes
        // Each lane's kept rows' final states; the output layer (the largest weight) then runs once, over every
        // kept row, its product shared out over the cores.
        var states = [Tensor?](repeating: nil, count: lanes)
        let failures = UnsafeMutableBufferPointer<(any Error)?>.allocate(capacity: lanes)
        failures.initialize(repeating: nil)
        defer { failures.deinitialize().deallocate() }
        states.withUnsafeMutableBufferPointer { states in
            Parallel.lanes(lanes) { lane in
                do {
                    states[lane] = try laneStates(
                        bounds[lane]..<bounds[lane + 1], tokens: tokens, caches: caches, adapters: adapters,
                        positions: positions, keep: keep, lane: lane)
                } catch {
                    failures[lane] = error
                }
            }
        }
        if let error = failures.compactMap({ $0 }).first { throw error }
        let h = try Tensor.concatenate(states.compactMap { $0 }, axis: 0)
        return try Autograd.withoutGradients {
            try model.routingRows(adapters, loraCopies: loraCopies) { try model.keptLogits(h, keep: keep) }
        }
    }

    /// Lane `lane`'s pass over the step's rows `rows`: the final states of its kept rows (nil when it has none).
    private func laneStates(
        _ rows: Range<Int>, tokens: [Int32], caches: [KVCache], adapters: [String?], positions: [Int32], keep: [Int],
        lane: Int
    ) throws -> Tensor? {
        // Its kept rows, counted from its first; a lane with none still computes its rows (feeding prompts).
        let kept = keep.filter { rows.contains($0) }.map { $0 - rows.lowerBound }
        let h = try Autograd.withoutGradients {
            try model.routingRows(Array(adapters[rows]), loraCopies: loraCopies, lane: lane) {
                try model.keptRowStates(
                    Array(tokens[rows]), caches: Array(caches[rows]), positions: Array(positions[rows]),
                    keep: kept.isEmpty ? [rows.count - 1] : kept)
            }
        }
        return kept.isEmpty ? nil : h
    }

    private func finishReason(_ r: Request, token: Int32, cache: KVCache) -> Event.Finish? {
        if r.options.stopTokens.contains(token) { return .stop }
        if r.tokens.count >= r.options.maxNewTokens { return .length }
        // The next token would need one more position than the model has.
        if let limit = model.positionLimit, cache.length >= limit { return .length }
        return nil
    }
}
