import Foundation
import ReinsTensor

/// The keys and values of prompts a ``ContinuousBatch`` has fed, kept so that a later request whose prompt starts
/// with the same tokens, under the same adapter, takes those positions from here instead of computing them again: a
/// server's shared instructions, chat template or few-shot examples are then computed once per adapter, not once per
/// request. A request takes the longest start it shares with one kept prompt, all but its own last token (whose
/// logits give its first new token); its prompt is kept in turn once fed. The least recently used prompts go when the
/// kept keys and values pass ``capacity`` bytes.
///
/// Positions belong to an adapter: LoRA and IA3 on the projections change the keys and values, and so does prefix
/// tuning through the learned positions before the prompt. So a prompt is kept for the model, the adapter and the
/// LoRA copies' precision that fed it, and for that adapter's weights as they are: the kept prompts hold the weights'
/// storage weakly, so that an adapter removed and loaded again under its name never meets the old one's positions
/// (those go at the name's next lookup, or as the least recently used). Weights changed in place (a training step
/// between requests) are not seen: call ``removeAll()`` then.
///
/// Not thread-safe: the batch's one caller uses it.
public final class PromptCache {
    /// What a prompt's positions depend on besides its tokens: the model, the adapter by name and by its weights'
    /// storage, and the precision of the LoRA copies the steps read.
    struct Owner {
        let model: AnyObject
        let adapter: String?
        let weights: [TensorStorage]
        let precision: LoRACopies.Precision?
    }

    private final class Weak {
        weak var object: AnyObject?
        init(_ object: AnyObject) { self.object = object }
    }

    /// One kept prompt: its tokens and each layer's keys and values at their positions (after an adapter's learned
    /// prefix, which the cache a request starts from already holds).
    private struct Entry {
        let tokens: [Int32]
        let layers: [(keys: Tensor, values: Tensor)]
        let bytes: Int
        var used: Int
    }

    /// One owner's kept prompts. It holds the model and the adapter's weights weakly: when they are gone, or the
    /// adapter's name has other weights now, the prompts can never be taken again.
    private final class Kept {
        let adapter: String?
        let precision: LoRACopies.Precision?
        let referents: [Weak]
        var entries: [Entry] = []

        init(_ owner: Owner) {
            (adapter, precision) = (owner.adapter, owner.precision)
            referents = [Weak(owner.model)] + owner.weights.map { Weak($0) }
        }

        func isNamed(as owner: Owner) -> Bool { adapter == owner.adapter && precision == owner.precision }

        func belongs(to owner: Owner) -> Bool {
            guard isNamed(as: owner), referents.count == owner.weights.count + 1, referents[0].object === owner.model
            else { return false }
            return zip(referents.dropFirst(), owner.weights).allSatisfy { $0.object === $1 }
        }
    }

    /// The most bytes of keys and values kept.
    public let capacity: Int
    /// Per owner (an adapter by name and precision, at most one record each).
    private var kept: [Kept] = []
    private var clock = 0

    /// The bytes of keys and values kept now.
    public private(set) var bytes = 0
    /// Requests that looked for their prompt's start, and those that found some of it.
    public private(set) var lookups = 0
    public private(set) var hits = 0
    /// Prompt tokens taken from here, over every request.
    public private(set) var reusedTokens = 0
    /// The prompts kept now.
    public var count: Int { kept.reduce(0) { $0 + $1.entries.count } }

    /// - Parameter capacity: the most bytes of keys and values to keep (0 keeps nothing).
    /// - Throws: ``ModelError/badInput(_:)`` for a negative capacity.
    public init(capacity: Int) throws {
        guard capacity >= 0 else {
            throw ModelError.badInput("a prompt cache's capacity must not be negative, got \(capacity)")
        }
        self.capacity = capacity
    }

    /// Forgets every kept prompt (the counts stay).
    public func removeAll() {
        kept.removeAll()
        bytes = 0
    }

    /// `owner`'s record; a record under its name whose weights are not `owner`'s (an adapter removed, or replaced
    /// under its name) goes with its prompts. With `making`, a new record when there is none.
    private func record(_ owner: Owner, making: Bool) -> Kept? {
        if let i = kept.firstIndex(where: { $0.isNamed(as: owner) }) {
            if kept[i].belongs(to: owner) { return kept[i] }
            bytes -= kept[i].entries.reduce(0) { $0 + $1.bytes }
            kept.remove(at: i)
        }
        guard making else { return nil }
        kept.append(Kept(owner))
        return kept.last
    }

    /// Appends to `cache`, which holds only what precedes a prompt (nothing, or the adapter's learned prefix), the
    /// kept positions of the longest start of `prompt` that a kept prompt of `owner` shares, leaving at least the
    /// prompt's last token to compute; returns how many positions it appended.
    func restore(_ prompt: [Int32], owner: Owner, into cache: KVCache) throws -> Int {
        lookups += 1
        guard let record = record(owner, making: false) else { return 0 }
        var best: (index: Int, count: Int)?
        for (i, e) in record.entries.enumerated() where e.layers.count == cache.layers.count {
            var n = 0
            while n < min(e.tokens.count, prompt.count - 1), e.tokens[n] == prompt[n] { n += 1 }
            if n > (best?.count ?? 0) { best = (i, n) }
        }
        guard let (index, n) = best else { return 0 }
        for (layer, kv) in zip(cache.layers, record.entries[index].layers) {
            try layer.append(kv.keys, kv.values, count: n)
        }
        clock += 1
        record.entries[index].used = clock
        hits += 1
        reusedTokens += n
        return n
    }

    /// Keeps the positions of `prompt` in `cache` (after its first `start`, an adapter's learned prefix) for `owner`:
    /// nothing when a kept prompt of `owner` already starts with `prompt`; a kept prompt that `prompt` extends is
    /// replaced. The least recently used prompts go until the capacity holds; a prompt larger than the capacity is
    /// not kept.
    func keep(_ prompt: [Int32], owner: Owner, from cache: KVCache, start: Int) throws {
        clock += 1
        guard capacity > 0, let record = record(owner, making: true) else { return }
        if let i = record.entries.firstIndex(where: { $0.tokens.starts(with: prompt) }) {
            record.entries[i].used = clock
            return
        }
        guard !prompt.isEmpty, cache.length >= start + prompt.count else { return }
        let perPosition = cache.layers.reduce(0) { total, layer in
            total + 2 * (layer.keys.map { $0.count / max($0.shape[2], 1) } ?? 0) * MemoryLayout<Float>.stride
        }
        let (size, overflow) = perPosition.multipliedReportingOverflow(by: prompt.count)
        guard !overflow, size <= capacity else { return }
        let layers = try cache.layers.map { try $0.positions(start..<(start + prompt.count)) }
        bytes -= record.entries.filter { prompt.starts(with: $0.tokens) }.reduce(0) { $0 + $1.bytes }
        record.entries.removeAll { prompt.starts(with: $0.tokens) }
        record.entries.append(Entry(tokens: prompt, layers: layers, bytes: size, used: clock))
        bytes += size
        // The least recently used prompts go, whoever's (a removed adapter's are never used again): every kept
        // prompt ordered once, oldest first. A record's prompts differ (none starts another), so tokens name them.
        if bytes > capacity {
            let order = kept.flatMap { r in r.entries.map { (record: r, entry: $0) } }
                .sorted { $0.entry.used < $1.entry.used }
            var gone: [ObjectIdentifier: Set<[Int32]>] = [:]
            for (r, entry) in order where bytes > capacity {
                bytes -= entry.bytes
                gone[ObjectIdentifier(r), default: []].insert(entry.tokens)
            }
            for r in kept {
                if let tokens = gone[ObjectIdentifier(r)] { r.entries.removeAll { tokens.contains($0.tokens) } }
            }
        }
        kept.removeAll { $0.entries.isEmpty && $0 !== record }
    }
}
