import Foundation
import ReinsTensor

/// Named adapters at one insertion point, one of them active. Used by the blocks' fixed insertion points, so that many
/// task adapters can sit on one frozen base and be switched at run time.
public final class AdapterSlot<Adapter: Module>: Module {
    public private(set) var adapters: [String: Adapter] = [:]
    public var active: String?

    public init() {}

    public func visitParameters(_ visit: inout ParameterVisitor) {
        for name in adapters.keys.sorted() { visit.module(name, adapters[name]) }
    }

    /// Adds (or replaces) `adapter` under `name` and activates it.
    public func add(_ name: String, _ adapter: Adapter) {
        adapters[name] = adapter
        active = name
    }

    public func remove(_ name: String) {
        adapters[name] = nil
        if active == name { active = nil }
    }

    /// The active adapter, if any.
    public var current: Adapter? { active.flatMap { adapters[$0] } }
}

/// The down- and up-projection of a bottleneck (`size → bottleneck → size`), with the up-projection's weight and bias at
/// zero so that the adapter starts as a no-op. Shared by the sequential and the parallel bottleneck adapters.
func zeroStartBottleneck(size: Int, bottleneck: Int, seed: UInt64) throws -> (down: Linear, up: Linear) {
    guard bottleneck > 0, size > 0 else { throw ModelError.badInput("bottleneck adapter sizes must be positive (\(size) -> \(bottleneck))") }
    let down = try Linear(inputs: size, outputs: bottleneck, std: 0.01, seed: seed)
    let up = try Linear(inputs: bottleneck, outputs: size, seed: seed + 1)
    up.weight.value = try Tensor.zeros([size, bottleneck]).requiringGradient()
    return (down, up)
}

/// A bottleneck adapter (Houlsby et al., arXiv 1902.00751): `h + W_up · f(W_down · h + b_down) + b_up`.
///
/// `W_up` and `b_up` start at zero, so a new adapter leaves the model unchanged. Houlsby places one after the attention
/// output projection and one after the feed-forward network, each before its residual add; Pfeiffer only the second.
public final class BottleneckAdapter: Module {
    public let down: Linear
    public let up: Linear
    public let nonLinearity: NonLinearity
    /// What the bottleneck reads: the sublayer's output `h` (false, the default: `h + up(f(down(h)))`), or — as the
    /// `adapters` library's `original_ln_before` (its Pfeiffer default) — the block's own layer norm of `h + x`,
    /// `h + up(f(down(LN(h + x))))` (no norm in pre-LN blocks: `h + x`). The residual add and norm after it are the
    /// block's own either way.
    public var readsNormalizedSum = false

    /// `swish` is x·sigmoid(x) (the `adapters` library's Houlsby default).
    public enum NonLinearity: String, Sendable { case relu, gelu, tanh, swish }

    /// - Parameters:
    ///   - size: the model width; `bottleneck`: the reduced width (e.g. size / 16).
    public init(size: Int, bottleneck: Int, nonLinearity: NonLinearity = .relu, seed: UInt64) throws {
        (down, up) = try zeroStartBottleneck(size: size, bottleneck: bottleneck, seed: seed)
        self.nonLinearity = nonLinearity
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("adapter_down", down)
        visit.module("adapter_up", up)
    }

    public func callAsFunction(_ h: Tensor) throws -> Tensor { try h + delta(h) }

    /// `h + up(f(down(input)))` with the input this adapter reads (``readsNormalizedSum``): `h`, or the norm of `h + x`.
    func callAsFunction(_ h: Tensor, residual x: Tensor, norm: LayerNorm?) throws -> Tensor {
        guard readsNormalizedSum else { return try self(h) }
        let sum = try h + x
        return try h + delta(norm.map { try $0(sum) } ?? sum)
    }

    func delta(_ input: Tensor) throws -> Tensor {
        let z = try down(input)
        let a: Tensor
        switch nonLinearity {
        case .relu: a = z.relu()
        case .gelu: a = z.gelu()
        case .tanh: a = z.tanh()
        case .swish: a = try z * z.sigmoid()
        }
        return try up(a)
    }
}

/// AdapterBias (Fu, Chen, Lee, Lee, arXiv 2205.00305): a token-dependent shift `α(z)·v` added to the feed-forward
/// output, parallel to its second layer. `v` is one vector of the model width; `α` is a linear map from the FFN's
/// intermediate activation `z` to one scalar per token (the authors' code reads that activation). `v` starts at zero,
/// so attaching changes nothing.
public final class AdapterBias: Module {
    public let alpha: Linear
    public let vector: Parameter

    public init(intermediate: Int, size: Int, seed: UInt64) throws {
        alpha = try Linear(inputs: intermediate, outputs: 1, std: 0.01, seed: seed)
        vector = Parameter("adapter_vector", try Tensor.zeros([size]))
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("adapter_alpha", alpha)
        visit.parameter("adapter_vector", vector)
    }

    /// The shift `[..., C]` for the intermediate activation `z: [..., I]`: the outer product of α(z) and v.
    func shift(_ z: Tensor) throws -> Tensor {
        let a = try alpha(z)                      // [..., 1]
        let rows = a.count, C = vector.value.count
        let outer = try Tensor.matmul(a.reshaped([rows, 1]), vector.value.reshaped([1, C]))
        return try outer.reshaped(Array(a.shape.dropLast()) + [C])
    }
}

/// A parallel adapter (He et al., arXiv 2110.04366): a bottleneck beside the feed-forward network, reading the FFN's
/// input and adding `scale · W_up · f(W_down · h)` to its output. `W_up` starts at zero.
public final class ParallelAdapter: Module {
    public let down: Linear
    public let up: Linear
    public let scale: Float

    public init(size: Int, bottleneck: Int, scale: Float = 4, seed: UInt64) throws {
        (down, up) = try zeroStartBottleneck(size: size, bottleneck: bottleneck, seed: seed)
        self.scale = scale
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("adapter_down", down)
        visit.module("adapter_up", up)
    }

    func delta(_ h: Tensor) throws -> Tensor { try up(down(h).relu()).scaled(by: scale) }
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
    func parallel(_ f: Tensor, input h: Tensor, intermediate z: Tensor) throws -> Tensor {
        var out = f
        if let b = feedForwardBias.current { out = try out + b.shift(z) }
        if let p = parallelFeedForward.current { out = try out + p.delta(h) }
        return out
    }

    /// The attention sublayer's output `h` through the active "after attention" adapter; `residual` is the sublayer's
    /// input and `norm` the block's norm after the residual add (nil in pre-LN blocks).
    func attention(_ h: Tensor, residual: Tensor, norm: LayerNorm? = nil) throws -> Tensor {
        try afterAttention.current.map { try $0(h, residual: residual, norm: norm) } ?? h
    }
    /// The same for the feed-forward sublayer and the "after FFN" adapter.
    func feedForward(_ h: Tensor, residual: Tensor, norm: LayerNorm? = nil) throws -> Tensor {
        try afterFeedForward.current.map { try $0(h, residual: residual, norm: norm) } ?? h
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
    public func addBottleneckAdapter(_ name: String, placement: BottleneckPlacement, size: Int, bottleneck: Int,
                                     nonLinearity: BottleneckAdapter.NonLinearity = .relu, readsNormalizedSum: Bool = false,
                                     seed: UInt64 = 0) throws -> Int {
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

/// Named values at one insertion point that has no base value (prefixes, prompts), one active: an adapter set's
/// prefix-tuning or prompt-tuning adapters.
public final class NamedSet<Value: AnyObject> {
    public private(set) var members: [String: Value] = [:]
    public var active: String?

    /// The active value, if any.
    public var current: Value? { active.flatMap { members[$0] } }

    func add(_ name: String, _ value: Value) {
        members[name] = value
        active = name
    }

    func remove(_ name: String?) {
        guard let name else { members = [:]; active = nil; return }
        members[name] = nil
        if active == name { active = nil }
    }

    /// Activates `name` if it exists here, else nothing.
    public func activate(_ name: String?) { active = name.flatMap { members[$0] != nil ? $0 : nil } }
}

/// Prefixes by adapter name.
public typealias PrefixSet = NamedSet<Prefix>
/// Prompt-tuning vectors `[P, C]` by adapter name.
public typealias PromptSet = NamedSet<Parameter>

extension NamedSet where Value == Prefix {
    func add(_ name: String, _ prefix: Prefix, layers: Int, hidden: Int, heads: Int) throws {
        guard prefix.layers == layers, prefix.hidden == hidden, prefix.heads == heads else {
            throw ModelError.badInput("the prefix was built for \(prefix.layers) layers of width \(prefix.hidden), the model has \(layers) of \(hidden)")
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
}

extension GPT2Model { public var feedForwardSize: Int { config.inner } }
extension BertModel { public var feedForwardSize: Int { config.intermediate } }
extension GPT2Model { public var virtualTokenShape: (layers: Int, hidden: Int, heads: Int) { (config.layers, config.hidden, config.heads) } }
extension BertModel { public var virtualTokenShape: (layers: Int, hidden: Int, heads: Int) { (config.layers, config.hidden, config.heads) } }

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
        let s = virtualTokenShape
        prefixes.add(name, try Prefix(embeddings, layers: s.layers, hidden: s.hidden, heads: s.heads))
    }

    /// Attaches a prefix (for example one built with an MLP reparameterisation) under `name` and activates it.
    public func attach(_ prefix: Prefix, name: String = "default") throws {
        let s = virtualTokenShape
        try prefixes.add(name, prefix, layers: s.layers, hidden: s.hidden, heads: s.heads)
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
        let Q = promptLength
        guard Q > 0 else { return mask }
        var values: [Int32] = []
        for b in 0..<B { values += [Int32](repeating: 1, count: Q) + (mask.map { Array($0.values[(b * T)..<((b + 1) * T)]) } ?? [Int32](repeating: 1, count: T)) }
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
        guard embeddings.value.rank == 2, embeddings.value.shape[0] > 0, embeddings.value.shape[1] == layers * 2 * hidden else {
            throw ModelError.badInput("prefix \(embeddings.value.shape) does not fit this model: expected [P, \(layers * 2 * hidden)] (layers · 2 · hidden)")
        }
        self.embeddings = embeddings
        (self.layers, self.hidden, self.heads) = (layers, hidden, heads)
    }

    /// A prefix produced by an MLP from `P` learned vectors (prefix projection); `embeddings` is then derived.
    public convenience init(reparameterizedLength P: Int, encoderHidden m: Int, layers: Int, hidden: Int, heads: Int, seed: UInt64) throws {
        let first = try Linear(inputs: hidden, outputs: m, seed: seed), second = try Linear(inputs: m, outputs: layers * 2 * hidden, seed: seed + 1)
        let input = Parameter("prefix_encoder.embedding", try Tensor.normal([P, hidden], seed: seed + 2))
        try self.init(Parameter("prompt_embeddings", try Tensor.zeros([P, layers * 2 * hidden]), trainable: false), layers: layers, hidden: hidden, heads: heads)
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
            let one = try p.slice(axis: 1, (s * hidden)..<((s + 1) * hidden)).reshaped([1, P, heads, hidden / heads]).permuted([0, 2, 1, 3])
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

/// What a LoRA adapter targets and how it scales (one documented field each, as PEFT's `LoraConfig`).
public struct LoRAConfig: Sendable {
    /// The rank r.
    public var rank: Int
    /// α: the update is scaled by α / r (or α / √r with ``rsLoRA``).
    public var alpha: Float
    /// Rank-stabilised scaling α / √r (Kalajdzievski, arXiv 2312.03732).
    public var rsLoRA: Bool
    /// Linear layers to adapt, matched as PEFT does: a key equal to a target or ending in `.` + target
    /// (`c_attn`, `query`, `attention.output.dense`).
    public var targets: [String]
    /// Only these layer numbers (the `.N.` in `h.N.` or `layer.N.`); all layers when `nil`.
    public var layers: Set<Int>?
    /// Dropout on the adapter branch's input while training (`lora_dropout`).
    public var dropout: Float
    /// DoRA (Liu et al., arXiv 2402.09353; PEFT's `use_dora`): a learned magnitude per output on top of the low-rank
    /// direction update; see ``LoRA``.
    public var dora: Bool

    public init(rank: Int = 8, alpha: Float = 16, rsLoRA: Bool = false, targets: [String], layers: Set<Int>? = nil, dropout: Float = 0,
                dora: Bool = false) {
        (self.rank, self.alpha, self.rsLoRA, self.targets, self.layers, self.dropout) = (rank, alpha, rsLoRA, targets, layers, dropout)
        self.dora = dora
    }

    func matches(_ key: String) -> Bool {
        guard targets.contains(where: { key == $0 || key.hasSuffix("." + $0) }) else { return false }
        guard let layers else { return true }
        let parts = key.split(separator: ".")
        for (i, p) in parts.enumerated() where (p == "h" || p == "layer") && i + 1 < parts.count {
            if let n = Int(parts[i + 1]) { return layers.contains(n) }
        }
        return false
    }
}

extension Module {
    /// Attaches a new LoRA adapter named `name` to every linear layer and embedding table `config` targets (tables as
    /// PEFT's `lora_embedding_A/B`, e.g. targets `wte` or `word_embeddings`), and activates it.
    /// - Returns: the keys of the adapted layers.
    /// - Throws: ``ModelError/badInput(_:)`` if no layer matches (naming the targets), or for DoRA or dropout on a table.
    @discardableResult
    public func addLoRA(_ name: String, _ config: LoRAConfig, seed: UInt64 = 0) throws -> [String] {
        let matched = namedModules().compactMap { key, m -> (String, any LoRAHost)? in
            (m as? any LoRAHost).flatMap { config.matches(key) ? (key, $0) : nil }
        }
        guard !matched.isEmpty else {
            throw ModelError.badInput("no linear layer or embedding matches the LoRA targets \(config.targets)\(config.layers.map { " in layers \($0.sorted())" } ?? "")")
        }
        guard (0..<1).contains(config.dropout) else { throw ModelError.badInput("LoRA dropout \(config.dropout) is outside [0, 1)") }
        if let table = matched.first(where: { $0.1 is Embedding }), config.dora || config.dropout > 0 {
            throw ModelError.badInput("LoRA target '\(table.0)' is an embedding table: \(config.dora ? "DoRA" : "dropout") is not supported there")
        }
        for (i, (_, layer)) in matched.enumerated() {
            let seed = seed &+ UInt64(i)
            let lora = layer is Embedding
                ? try LoRA(embeddingCount: layer.loraInputs, size: layer.loraOutputs, rank: config.rank, alpha: config.alpha, rsLoRA: config.rsLoRA, seed: seed)
                : try LoRA(inputs: layer.loraInputs, outputs: layer.loraOutputs, rank: config.rank, alpha: config.alpha,
                           rsLoRA: config.rsLoRA, dora: config.dora, seed: seed)
            if !(layer is Embedding) { lora.dropout = config.dropout }
            try layer.attachLoRA(name, lora)
        }
        return matched.map(\.0)
    }

    /// Attaches IA3 vectors named `name` (all ones: a no-op until trained) to the targeted linear layers and activates
    /// them; see ``AdapterMethod/ia3(targets:feedForward:)`` for the names and defaults. Returns the layers' keys.
    @discardableResult
    public func addIA3(_ name: String, targets: [String]? = nil, feedForward: [String]? = nil) throws -> [String] {
        let isGPT2 = namedModules().contains { $0.key.hasSuffix("attn.c_attn") }
        let targets = targets ?? (isGPT2 ? ["c_attn", "mlp.c_proj"] : ["key", "value", "output.dense"])
        let feedForward = feedForward ?? (isGPT2 ? ["mlp.c_proj"] : ["output.dense"])
        if let stray = feedForward.first(where: { !targets.contains($0) }) {
            throw ModelError.badInput("IA3 feed-forward module '\(stray)' is not among the targets \(targets)")
        }
        // PEFT matches IA3 targets as it matches LoRA's (a key equal to a target or ending in ".target").
        let isTarget = LoRAConfig(targets: targets), scalesInput = LoRAConfig(targets: feedForward)
        let matched = namedModules().compactMap { key, m -> (String, Linear)? in
            (m as? Linear).flatMap { isTarget.matches(key) ? (key, $0) : nil }
        }
        guard !matched.isEmpty else { throw ModelError.badInput("no linear layer matches the IA3 targets \(targets)") }
        for (key, layer) in matched {
            let input = scalesInput.matches(key)
            try layer.attachIA3(name, try IA3(size: input ? layer.inputs : layer.outputs, scalesInput: input))
        }
        return matched.map(\.0)
    }

    /// Folds the active LoRA adapter into every adapted layer (inference at the base model's cost).
    public func mergeLoRA() throws { for (_, m) in namedModules() { try (m as? any LoRAHost)?.merge() } }

    /// The word-embedding table that this model's output layer also reads (GPT-2's and BERT's tied word predictions),
    /// if any. A LoRA on it changes the lookup only (``Embedding/unadaptedWeight``), so a checkpoint with the adapter
    /// merged into the shared table would not reproduce the adapted model.
    public var tiedOutputEmbedding: Embedding? { namedModules().lazy.compactMap { $0.module as? TiedOutput }.first?.table }

    /// Undoes ``mergeLoRA()`` exactly.
    public func unmergeLoRA() throws { for (_, m) in namedModules() { try (m as? any LoRAHost)?.unmerge() } }
}

extension Module {
    /// Adds AdapterBias named `name` to every block (parallel to the FFN's second layer) and activates it.
    @discardableResult
    public func addAdapterBias(_ name: String, intermediate: Int, size: Int, seed: UInt64 = 0) throws -> Int {
        for (i, block) in blockAdapters.enumerated() {
            block.feedForwardBias.add(name, try AdapterBias(intermediate: intermediate, size: size, seed: seed + UInt64(i)))
        }
        return blockAdapters.count
    }

    /// Adds a parallel adapter named `name` beside every block's FFN and activates it.
    @discardableResult
    public func addParallelAdapter(_ name: String, size: Int, bottleneck: Int, scale: Float = 4, seed: UInt64 = 0) throws -> Int {
        for (i, block) in blockAdapters.enumerated() {
            block.parallelFeedForward.add(name, try ParallelAdapter(size: size, bottleneck: bottleneck, scale: scale, seed: seed + UInt64(2 * i)))
        }
        return blockAdapters.count
    }
}

extension Tensor {
    /// `[1, ...]` repeated to `[B, ...]` (differentiable: the gradients of the copies add up) — virtual tokens shared by
    /// every sequence of a batch.
    func repeatedOverBatch(_ B: Int) throws -> Tensor {
        B == 1 ? self : try Tensor.concatenate([Tensor](repeating: self, count: B), axis: 0)
    }
}
