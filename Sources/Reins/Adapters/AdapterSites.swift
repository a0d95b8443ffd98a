import Foundation
import ReinsTensor

/// One place in a model where named adapters enter: a linear layer's LoRA or IA3 adapters, a bias's BitFit copies, a
/// block slot (after attention, after the FFN, parallel to it), the key/value prefix, the input prompt, a task head.
///
/// Every site keeps its adapters by name with at most one active, so the operations on a whole model — list the
/// adapters, add, activate, deactivate, merge and remove one, enumerate its parameters — are one walk over its sites
/// (``Module/adapterSites``), whatever the model.
public protocol AdapterSite {
    /// The names of the adapters at this site.
    var adapterNames: [String] { get }
    /// Whether this site holds an adapter named `name` (``adapterNames`` contains it, without listing them).
    func holds(_ name: String) -> Bool
    /// The adapter this site applies, if any.
    var activeAdapter: String? { get }
    /// Applies the adapter `name` if this site has one of that name, else none (the base alone).
    func activate(_ name: String?)
    /// Removes the adapter `name` from this site (nothing when it has none of that name).
    func removeAdapter(_ name: String) throws
    /// The parameters the adapter `name` holds at this site (none when it has none here).
    func parameters(of name: String) -> [Parameter]
    /// Adds (or replaces) `adapter` under `name` and activates it.
    /// - Throws: ``ModelError/badInput(_:)`` when `adapter` is not of the kind this site holds, or does not fit.
    func add(_ name: String, _ adapter: Any) throws
    /// Folds the adapter `name` into the base so that inference costs what the base costs (``unmerge()`` restores the
    /// base exactly).
    /// - Throws: ``ModelError/badInput(_:)`` when this kind of adapter cannot be folded into the base.
    func merge(_ name: String) throws
    /// Restores the base from before ``merge(_:)``; nothing when nothing is merged.
    func unmerge() throws
    /// Whether ``merge(_:)`` can fold this site's adapters into the base.
    var foldsIntoBase: Bool { get }
}

extension AdapterSite {
    public func holds(_ name: String) -> Bool { adapterNames.contains(name) }

    /// Adapters that change activations, not weights, are not folded into the base.
    public func merge(_ name: String) throws {
        guard adapterNames.contains(name) else { return }
        throw ModelError.badInput(
            "adapter '\(name)': \(Self.self) adapters are not folded into the base (only LoRA is)")
    }
    public func unmerge() throws {}
    public var foldsIntoBase: Bool { false }
}

/// The one way a site adds a value: of its own kind, or a named error.
func typed<Value>(_ adapter: Any, for name: String, at site: String) throws -> Value {
    guard let value = adapter as? Value else {
        throw ModelError.badInput(
            "adapter '\(name)': a \(type(of: adapter)) does not go into \(site) (it holds \(Value.self))")
    }
    return value
}

/// The parameters of a value kept at a site: a parameter itself, a module's, a prefix's.
func adapterParameters(_ value: Any?) -> [Parameter] {
    switch value {
    case let p as Parameter: return [p]
    case let m as any Module: return m.parameters
    case let p as Prefix: return p.parameters
    default: return []
    }
}

extension NamedSet: AdapterSite {
    public var adapterNames: [String] { members.keys.sorted() }
    public func holds(_ name: String) -> Bool { members[name] != nil }
    public var activeAdapter: String? { active }
    public func removeAdapter(_ name: String) { remove(name) }
    public func parameters(of name: String) -> [Parameter] { adapterParameters(members[name]) }
    public func add(_ name: String, _ adapter: Any) throws {
        add(name, try typed(adapter, for: name, at: "a named set") as Value)
    }
}

extension Variants: AdapterSite {
    public var adapterNames: [String] { named.adapterNames }
    public func holds(_ name: String) -> Bool { named.holds(name) }
    public var activeAdapter: String? { active }
    public func removeAdapter(_ name: String) { remove(name) }
    public func parameters(of name: String) -> [Parameter] { adapterParameters(variants[name]) }
    public func add(_ name: String, _ adapter: Any) throws {
        add(name, try typed(adapter, for: name, at: "a variant set") as Value)
    }
}

extension AdapterSlot: AdapterSite {
    public var adapterNames: [String] { adapters.keys.sorted() }
    public func holds(_ name: String) -> Bool { adapters[name] != nil }
    public var activeAdapter: String? { active }
    public func activate(_ name: String?) { named.activate(name) }
    public func removeAdapter(_ name: String) { remove(name) }
    public func parameters(of name: String) -> [Parameter] { adapters[name]?.parameters ?? [] }
    public func add(_ name: String, _ adapter: Any) throws {
        add(name, try typed(adapter, for: name, at: "a block slot") as Adapter)
    }
}

/// The LoRA adapters of a linear layer, an embedding table or a tied output layer, as a site.
struct LoRASite: AdapterSite {
    let host: any LoRAHost
    var adapterNames: [String] { host.loras.keys.sorted() }
    func holds(_ name: String) -> Bool { host.loras[name] != nil }
    var activeAdapter: String? { host.activeLoRA }
    func activate(_ name: String?) { host.activeLoRA = name.flatMap { host.loras[$0] != nil ? $0 : nil } }
    func removeAdapter(_ name: String) throws { try host.detachLoRA(name) }
    func add(_ name: String, _ adapter: Any) throws {
        try host.attachLoRA(name, try typed(adapter, for: name, at: "a LoRA site"))
    }
    func merge(_ name: String) throws {
        guard host.loras[name] != nil else { return }
        try host.unmerge()
        host.activeLoRA = name
        try host.merge()
    }
    func unmerge() throws { try host.unmerge() }
    var foldsIntoBase: Bool { true }
    func parameters(of name: String) -> [Parameter] {
        host.loras[name].map { [$0.a, $0.b] + ($0.magnitude.map { [$0] } ?? []) } ?? []
    }
}

/// The IA3 vectors of a linear layer, as a site.
struct IA3Site: AdapterSite {
    let layer: Linear
    var adapterNames: [String] { layer.ia3.keys.sorted() }
    func holds(_ name: String) -> Bool { layer.ia3[name] != nil }
    var activeAdapter: String? { layer.activeIA3 }
    func activate(_ name: String?) { layer.ia3Vectors.activate(name) }
    func removeAdapter(_ name: String) { layer.detachIA3(name) }
    func add(_ name: String, _ adapter: Any) throws {
        try layer.attachIA3(name, try typed(adapter, for: name, at: "an IA3 site"))
    }
    func parameters(of name: String) -> [Parameter] { layer.ia3[name].map { [$0.vector] } ?? [] }
}

/// A module that holds adapter sites of its own (its children's are found by walking the tree).
public protocol AdapterSiteOwner: Module {
    /// The sites this module itself holds, in a fixed order.
    var ownAdapterSites: [any AdapterSite] { get }
}

extension Linear: AdapterSiteOwner {
    public var ownAdapterSites: [any AdapterSite] {
        [LoRASite(host: self), IA3Site(layer: self), LinearMethodSite(layer: self)] + (biases.map { [$0] } ?? [])
    }
}

/// The other linear-adapter methods of a layer (``Linear/methods``), as a site.
struct LinearMethodSite: AdapterSite {
    let layer: Linear
    var adapterNames: [String] { layer.methods.adapterNames }
    func holds(_ name: String) -> Bool { layer.methods.holds(name) }
    var activeAdapter: String? { layer.methods.active }
    func activate(_ name: String?) { layer.methods.activate(name) }
    func removeAdapter(_ name: String) { layer.methods.remove(name) }
    func add(_ name: String, _ adapter: Any) throws {
        try layer.attach(
            name, try typed(adapter, for: name, at: "a linear layer's method site") as any LinearAdapterMethod)
    }
    func parameters(of name: String) -> [Parameter] { layer.methods.members[name]?.parameters ?? [] }
}
extension Embedding: AdapterSiteOwner { public var ownAdapterSites: [any AdapterSite] { [LoRASite(host: self)] } }
extension TiedOutput: AdapterSiteOwner { public var ownAdapterSites: [any AdapterSite] { [LoRASite(host: self)] } }
extension LayerNorm: AdapterSiteOwner { public var ownAdapterSites: [any AdapterSite] { [biases] } }
extension BlockAdapters: AdapterSiteOwner {
    public var ownAdapterSites: [any AdapterSite] {
        [afterAttention, afterFeedForward, feedForwardBias, parallelFeedForward]
    }
}
extension GPT2Model: AdapterSiteOwner { public var ownAdapterSites: [any AdapterSite] { [prefixes, prompts] } }
extension BertModel: AdapterSiteOwner { public var ownAdapterSites: [any AdapterSite] { [prefixes, prompts] } }
extension LlamaModel: AdapterSiteOwner { public var ownAdapterSites: [any AdapterSite] { [prefixes, prompts] } }
extension LlamaForSequenceClassification: AdapterSiteOwner {
    public var ownAdapterSites: [any AdapterSite] { [heads] }
}
extension BertForSequenceClassification: AdapterSiteOwner { public var ownAdapterSites: [any AdapterSite] { [heads] } }
extension BertForTokenClassification: AdapterSiteOwner { public var ownAdapterSites: [any AdapterSite] { [heads] } }
extension BertForQuestionAnswering: AdapterSiteOwner { public var ownAdapterSites: [any AdapterSite] { [heads] } }
extension GPT2ForSequenceClassification: AdapterSiteOwner { public var ownAdapterSites: [any AdapterSite] { [heads] } }

extension Module {
    /// Every adapter site in the model: this module's own, then each sub-module's in registration order.
    public var adapterSites: [any AdapterSite] {
        ([self as any Module] + descendantModules()).flatMap {
            ($0 as? any AdapterSiteOwner)?.ownAdapterSites ?? []
        }
    }

    /// Applies the adapter `name` at every site that has it and no adapter elsewhere (`nil`: the bare base).
    public func activateAdapter(_ name: String?) {
        for site in adapterSites { site.activate(name) }
    }

    /// Removes the adapter `name` from every site, with its head, biases and prefix.
    public func deleteAdapter(_ name: String) throws {
        for site in adapterSites { try site.removeAdapter(name) }
        // Linear layers' caches of routed batches may hold its objects and their half-precision copies: its memory
        // goes now, not at the next routed batch.
        for case let layer as Linear in namedModules().map(\.module) { layer.routedCaches.clear() }
    }

    /// The names of every adapter on this model, at any site.
    public var adapterNames: [String] { Set(adapterSites.flatMap(\.adapterNames)).sorted() }

    /// The adapter applied at the first site that applies one (sites are activated together, so it is the one in use).
    public var activeAdapterName: String? { adapterSites.lazy.compactMap(\.activeAdapter).first }

    /// Folds the adapter `name` into the base at every site that holds it, for inference at the base's cost;
    /// ``unmergeAdapters()`` restores the base exactly.
    /// - Throws: ``ModelError/badInput(_:)`` naming the kind of site, when part of the adapter cannot be folded (a
    ///   bottleneck adapter, a prefix): then nothing is merged.
    public func mergeAdapter(_ name: String) throws {
        let sites = adapterSites.filter { $0.adapterNames.contains(name) }
        guard !sites.isEmpty else { throw ModelError.badInput("the model has no adapter named '\(name)'") }
        if let kept = sites.first(where: { !$0.foldsIntoBase }) { try kept.merge(name) }  // throws, naming the site
        activateAdapter(name)
        for site in sites { try site.merge(name) }
    }

    /// Restores every weight an adapter was merged into, bit for bit.
    public func unmergeAdapters() throws { for site in adapterSites { try site.unmerge() } }

    /// Every parameter the adapter `name` holds, at every site (its head and BitFit biases included), each once.
    public func parameters(ofAdapter name: String) -> [Parameter] { adapterSites.parameters(of: name) }

    /// Whether any site holds an adapter named `name` (``adapterNames`` contains it, without listing them).
    public func hasAdapter(_ name: String) -> Bool { adapterSites.contains { $0.holds(name) } }

    /// Runs `body` on the bare base: no adapter applied at any site and no LoRA merged into a weight; then puts every
    /// site and merge back as it was.
    public func withBareBase<R>(_ body: () throws -> R) throws -> R {
        let sites = adapterSites, active = sites.map(\.activeAdapter)
        let merged = ([self as any Module] + namedModules().map(\.module)).compactMap { $0 as? any LoRAHost }.filter(
            \.isMerged)
        for host in merged { try host.unmerge() }
        for site in sites { site.activate(nil) }
        defer {
            for (site, name) in zip(sites, active) { site.activate(name) }
            // Folding the same adapter back into the weight it was folded into before cannot fail on shapes.
            for host in merged { try? host.merge() }
        }
        return try body()
    }
}

extension Array where Element == any AdapterSite {
    /// Every parameter the adapter `name` holds at these sites, each once.
    func parameters(of name: String) -> [Parameter] {
        var seen = Set<ObjectIdentifier>()
        return flatMap { $0.parameters(of: name) }.filter { seen.insert(ObjectIdentifier($0)).inserted }
    }
}
