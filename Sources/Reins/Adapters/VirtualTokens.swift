import Foundation
import ReinsTensor

/// Prefixes by adapter name.
public typealias PrefixSet = NamedSet<Prefix>
/// Prompt-tuning vectors `[P, C]` by adapter name.
public typealias PromptSet = NamedSet<Parameter>

extension NamedSet where Value == Prefix {
    func add(_ name: String, _ prefix: Prefix, layers: Int, hidden: Int, heads: Int) throws {
        guard prefix.layers == layers, prefix.hidden == hidden, prefix.heads == heads else {
            throw ModelError.badInput(
                "the prefix was built for \(prefix.layers) layers of width \(prefix.hidden), the model has \(layers) of \(hidden)"
            )
        }
        add(name, prefix)
    }
}

/// An encoder with the virtual-token insertion points: key/value prefixes in every layer and prompt vectors before the
/// input embeddings, each a named set (one adapter each) with one member active.
public protocol VirtualTokenHost: AnyObject {
    var prefixes: PrefixSet { get }
    var prompts: PromptSet { get }
    /// Layers, width and heads, which prefixes and prompts must fit.
    var virtualTokenShape: (layers: Int, hidden: Int, heads: Int) { get }
    /// The width of the feed-forward network's hidden layer (what AdapterBias reads).
    var feedForwardSize: Int { get }
    /// Hugging Face's `model_type` (`gpt2`, `bert`): the key of the default-target tables (``AdapterDefaults``).
    var modelType: String { get }
    /// Layers, width and heads of each layer's key/value prefix: the model's width and heads, except under
    /// grouped-query attention, where PEFT builds prefixes for the key/value heads only.
    var prefixShape: (layers: Int, width: Int, heads: Int) { get }
}

extension VirtualTokenHost {
    public var prefixShape: (layers: Int, width: Int, heads: Int) {
        let s = virtualTokenShape
        return (s.layers, s.hidden, s.heads)
    }
}

extension GPT2Model { public var modelType: String { "gpt2" } }
extension BertModel { public var modelType: String { "bert" } }

extension GPT2Model { public var feedForwardSize: Int { config.inner } }
extension BertModel { public var feedForwardSize: Int { config.intermediate } }
extension GPT2Model {
    public var virtualTokenShape: (layers: Int, hidden: Int, heads: Int) {
        (config.layers, config.hidden, config.heads)
    }
}
extension BertModel {
    public var virtualTokenShape: (layers: Int, hidden: Int, heads: Int) {
        (config.layers, config.hidden, config.heads)
    }
}

extension VirtualTokenHost {
    /// The active prefix, if any.
    public var prefix: Prefix? { prefixes.current }
    /// The active prompt, if any.
    public var prompt: Parameter? { prompts.current }
    /// The number of prompt vectors (0 without a prompt).
    public var promptLength: Int { prompt?.value.shape[0] ?? 0 }

    /// Attaches learned prefixes `[P, layers · 2 · C]` under `name` (replacing one of that name) and activates them.
    /// - Throws: ``ModelError/badInput(_:)`` for another shape.
    public func attachPrefix(_ embeddings: Parameter, name: String = "default") throws {
        let s = prefixShape
        prefixes.add(name, try Prefix(embeddings, layers: s.layers, hidden: s.width, heads: s.heads))
    }

    /// Attaches a prefix (for example one built with an MLP reparameterisation) under `name` and activates it.
    public func attach(_ prefix: Prefix, name: String = "default") throws {
        let s = prefixShape
        try prefixes.add(name, prefix, layers: s.layers, hidden: s.width, heads: s.heads)
    }

    /// Removes the prefix `name` (every prefix when `nil`).
    public func detachPrefix(_ name: String? = nil) { prefixes.remove(name) }

    /// Attaches learned prompt embeddings `[P, C]` under `name` (replacing one of that name) and activates them.
    /// - Throws: ``ModelError/badInput(_:)`` for another shape.
    public func attachPrompt(_ embeddings: Parameter, name: String = "default") throws {
        let C = virtualTokenShape.hidden
        guard embeddings.value.rank == 2, embeddings.value.shape[0] > 0, embeddings.value.shape[1] == C else {
            throw ModelError.badInput("prompt \(embeddings.value.shape) does not fit this model: expected [P, \(C)]")
        }
        prompts.add(name, embeddings)
    }

    /// Removes the prompt `name` (every prompt when `nil`).
    public func detachPrompt(_ name: String? = nil) { prompts.remove(name) }

    /// The attention mask over prompt and tokens `[B, P + T]` (ones for the prompt; `mask` nil means all tokens are
    /// real), or `mask` itself without a prompt.
    func maskWithPrompt(_ mask: IntTensor?, batch B: Int, length T: Int) throws -> IntTensor? {
        // A batch routed to adapters with virtual tokens: each row's prompt slots (its padding 0), then `mask`.
        if let routed = try routedVirtualTokens(rows: B) { return try routed.keyMask(mask, length: T, prefix: false) }
        let Q = promptLength
        guard Q > 0 else { return mask }
        var values: [Int32] = []
        for b in 0..<B {
            values +=
                [Int32](repeating: 1, count: Q)
                + (mask.map { Array($0.values[(b * T)..<((b + 1) * T)]) } ?? [Int32](repeating: 1, count: T))
        }
        return try IntTensor(shape: [B, Q + T], values: values)
    }
}

/// Prefix tuning (Li & Liang, arXiv 2101.00190), the attention key/value insertion point: `P` learned keys and values
/// per layer that every query attends to, stored as PEFT does (`[P, layers · 2 · hidden]`, layer l's keys in slot 2l
/// and values in slot 2l + 1). As PEFT on transformers, the model's positions then start at `P`.
public final class Prefix {
    public let embeddings: Parameter
    /// The optional reparameterisation used while training (Li & Liang): `P` vectors of the model width passed through
    /// `Linear(C, m) → tanh → Linear(m, layers · 2 · C)`. ``fold()`` replaces it by its output.
    public private(set) var encoder: (seed: Parameter, first: Linear, second: Linear)?
    let layers: Int, hidden: Int, heads: Int

    /// - Throws: ``ModelError/badInput(_:)`` if `embeddings` is not `[P, layers · 2 · hidden]`.
    public init(_ embeddings: Parameter, layers: Int, hidden: Int, heads: Int) throws {
        guard embeddings.value.rank == 2, embeddings.value.shape[0] > 0,
            embeddings.value.shape[1] == layers * 2 * hidden
        else {
            throw ModelError.badInput(
                "prefix \(embeddings.value.shape) does not fit this model: expected [P, \(layers * 2 * hidden)] (layers · 2 · hidden)"
            )
        }
        self.embeddings = embeddings
        (self.layers, self.hidden, self.heads) = (layers, hidden, heads)
    }

    /// A prefix produced by an MLP from `P` learned vectors (prefix projection); `embeddings` is then derived.
    public convenience init(
        reparameterizedLength P: Int, encoderHidden m: Int, layers: Int, hidden: Int, heads: Int, seed: UInt64
    ) throws {
        let first = try Linear(inputs: hidden, outputs: m, seed: seed),
            second = try Linear(inputs: m, outputs: layers * 2 * hidden, seed: seed + 1)
        let input = Parameter("prefix_encoder.embedding", try Tensor.normal([P, hidden], seed: seed + 2))
        try self.init(
            Parameter("prompt_embeddings", try Tensor.zeros([P, layers * 2 * hidden]), trainable: false),
            layers: layers, hidden: hidden, heads: heads)
        encoder = (input, first, second)
    }

    /// `P`.
    public var length: Int { embeddings.value.shape[0] }

    /// Registers what trains, under PEFT's keys: the MLP (`prefix_encoder.*`) while it exists, else
    /// `prompt_embeddings`.
    func visitParameters(_ visit: inout ParameterVisitor) {
        guard let e = encoder else { return visit.parameter("prompt_embeddings", embeddings) }
        visit.parameter("prefix_encoder.embedding", e.seed)
        visit.module("prefix_encoder.transform.0", e.first)
        visit.module("prefix_encoder.transform.2", e.second)
    }

    /// The parameters that train: the encoder's while it exists, else the prefix itself.
    public var parameters: [Parameter] {
        guard let e = encoder else { return [embeddings] }
        return [e.seed, e.first.weight, e.first.bias!, e.second.weight, e.second.bias!]
    }

    /// The prefix `[P, layers · 2 · C]` the attention sees.
    func current() throws -> Tensor {
        guard let e = encoder else { return embeddings.value }
        return try e.second(e.first(e.seed.value).tanh())
    }

    /// Replaces the encoder by the plain prefix it produces (what is saved; inference then skips the MLP).
    public func fold() throws {
        guard encoder != nil else { return }
        let folded = try Autograd.withoutGradients { try current() }
        embeddings.value = folded.requiringGradient()
        encoder = nil
    }

    /// Every layer's keys and values, `[B, NH, P, hs]` each, from one evaluation of the prefix (and its MLP, if any).
    func keysValues(batch B: Int) throws -> [(keys: Tensor, values: Tensor)] {
        let p = try current(), P = length
        func slot(_ s: Int) throws -> Tensor {
            let one = try p.slice(axis: 1, (s * hidden)..<((s + 1) * hidden)).reshaped([1, P, heads, hidden / heads])
                .permuted([0, 2, 1, 3])
            return try one.repeatedOverBatch(B)
        }
        return try (0..<layers).map { l in (try slot(2 * l), try slot(2 * l + 1)) }
    }

    /// A `[B, width]` attention mask with `P` leading ones (the prefix is always attended to); `nil` stays `nil`.
    func extend(_ mask: IntTensor?, batch B: Int, width: Int) throws -> IntTensor? {
        guard let mask else { return nil }
        var values: [Int32] = []
        values.reserveCapacity(B * (length + width))
        for b in 0..<B {
            values += [Int32](repeating: 1, count: length)
            values += mask.values[(b * width)..<((b + 1) * width)]
        }
        return try IntTensor(shape: [B, length + width], values: values)
    }
}

extension Tensor {
    /// `[1, ...]` repeated to `[B, ...]` (differentiable: the gradients of the copies add up) — virtual tokens shared by
    /// every sequence of a batch.
    func repeatedOverBatch(_ B: Int) throws -> Tensor {
        B == 1 ? self : try Tensor.concatenate([Tensor](repeating: self, count: B), axis: 0)
    }
}

extension CausalLanguageModel {
    /// Starts the prefix of adapter `name` from the keys and values the bare base computes for `ids`, one id per
    /// virtual token — Li & Liang's initialization from the activations of real words (arXiv 2101.00190, §7.2). With
    /// it the model computes what the base computes with `ids` written before every input (real tokens take the
    /// positions after the prefix), so training starts from a prompt that already works instead of from noise that
    /// dilutes every attention row. A prefix MLP is folded first.
    /// - Throws: ``ModelError/badInput(_:)`` when the model has no prefix named `name` or `ids` is not one id per
    ///   virtual token; ``ModelError`` for ids outside the vocabulary.
    public func initializePrefix(_ name: String, fromTokens ids: [Int]) throws {
        guard let prefix = encoderShape?.prefixes.members[name] else {
            throw ModelError.badInput("the model has no prefix adapter named '\(name)'")
        }
        guard ids.count == prefix.length else {
            throw ModelError.badInput(
                "the prefix '\(name)' has \(prefix.length) virtual tokens; \(ids.count) ids cannot initialize it (one per virtual token)")
        }
        if let bad = ids.first(where: { $0 < 0 || $0 >= vocabularySize }) {
            throw ModelError.badInput("token id \(bad) is outside the vocabulary (0..<\(vocabularySize))")
        }
        let input = try IntTensor(shape: [1, ids.count], values: ids.map { Int32($0) })
        try prefix.fold()
        let previous = activeAdapterName
        activateAdapter(nil)  // the bare base computes the activations
        defer { activateAdapter(previous) }
        let cache = KVCache(layers: layerCount, reserve: ids.count)
        _ = try Autograd.withoutGradients {
            try decoderStates(input, attentionMask: nil, positionIDs: nil, cache: cache)
        }
        let (P, L, width, heads) = (prefix.length, prefix.layers, prefix.hidden, prefix.heads)
        let hs = width / heads, row = L * 2 * width
        var values = [Float](repeating: 0, count: P * row)
        guard cache.layers.count == L else {
            throw ModelError.badInput("the prefix has \(L) layers, the model's cache \(cache.layers.count)")
        }
        for (l, layer) in cache.layers.enumerated() {
            for (slot, tensor) in [(2 * l, layer.keys), (2 * l + 1, layer.values)] {
                guard let t = tensor, layer.length == P, t.shape.count == 4, t.shape[0] == 1, t.shape[1] == heads,
                    t.shape[3] == hs
                else {
                    throw ModelError.badInput(
                        "layer \(l) cached \(tensor?.shape ?? []) for \(P) positions; the prefix needs [1, \(heads), \(P), \(hs)]")
                }
                let rows = t.shape[2]
                t.withUnsafeBufferPointer { src in
                    for p in 0..<P {
                        for h in 0..<heads {
                            for d in 0..<hs { values[p * row + slot * width + h * hs + d] = src[(h * rows + p) * hs + d] }
                        }
                    }
                }
            }
        }
        prefix.embeddings.replaceValue(try Tensor(shape: [P, row], values: values))
    }
}
