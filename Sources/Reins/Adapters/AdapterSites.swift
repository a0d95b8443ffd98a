import Foundation
import ReinsTensor

/// One place in a model where named adapters enter: a linear layer's LoRA or IA3 adapters, a bias's BitFit copies, a
/// block slot (after attention, after the FFN, parallel to it), the key/value prefix, the input prompt, a task head.
///
/// Every site keeps its adapters by name with at most one active, so the operations on a whole model — list the
/// adapters, activate one, remove one — are one walk over its sites (``Module/adapterSites``), whatever the model.
public protocol AdapterSite {
    /// The names of the adapters at this site.
    var adapterNames: [String] { get }
    /// The adapter this site applies, if any.
    var activeAdapter: String? { get }
    /// Applies the adapter `name` if this site has one of that name, else none (the base alone).
    func activate(_ name: String?)
    /// Removes the adapter `name` from this site (nothing when it has none of that name).
    func removeAdapter(_ name: String) throws
    /// The parameters the adapter `name` holds at this site (none when it has none here).
    func parameters(of name: String) -> [Parameter]
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
    public var activeAdapter: String? { active }
    public func removeAdapter(_ name: String) { remove(name) }
    public func parameters(of name: String) -> [Parameter] { adapterParameters(members[name]) }
}

extension Variants: AdapterSite {
    public var adapterNames: [String] { named.adapterNames }
    public var activeAdapter: String? { active }
    public func removeAdapter(_ name: String) { remove(name) }
    public func parameters(of name: String) -> [Parameter] { adapterParameters(variants[name]) }
}

extension AdapterSlot: AdapterSite {
    public var adapterNames: [String] { adapters.keys.sorted() }
    public var activeAdapter: String? { active }
    public func activate(_ name: String?) { named.activate(name) }
    public func removeAdapter(_ name: String) { remove(name) }
    public func parameters(of name: String) -> [Parameter] { adapters[name]?.parameters ?? [] }
}

/// The LoRA adapters of a linear layer, an embedding table or a tied output layer, as a site.
struct LoRASite: AdapterSite {
    let host: any LoRAHost
    var adapterNames: [String] { host.loras.keys.sorted() }
    var activeAdapter: String? { host.activeLoRA }
    func activate(_ name: String?) { host.activeLoRA = name.flatMap { host.loras[$0] != nil ? $0 : nil } }
    func removeAdapter(_ name: String) throws { try host.detachLoRA(name) }
    func parameters(of name: String) -> [Parameter] {
        host.loras[name].map { [$0.a, $0.b] + ($0.magnitude.map { [$0] } ?? []) } ?? []
    }
}

/// The IA3 vectors of a linear layer, as a site.
struct IA3Site: AdapterSite {
    let layer: Linear
    var adapterNames: [String] { layer.ia3.keys.sorted() }
    var activeAdapter: String? { layer.activeIA3 }
    func activate(_ name: String?) { layer.ia3Vectors.activate(name) }
    func removeAdapter(_ name: String) { layer.detachIA3(name) }
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
    var activeAdapter: String? { layer.methods.active }
    func activate(_ name: String?) { layer.methods.activate(name) }
    func removeAdapter(_ name: String) { layer.methods.remove(name) }
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
extension BertForSequenceClassification: AdapterSiteOwner { public var ownAdapterSites: [any AdapterSite] { [heads] } }
extension BertForTokenClassification: AdapterSiteOwner { public var ownAdapterSites: [any AdapterSite] { [heads] } }
extension BertForQuestionAnswering: AdapterSiteOwner { public var ownAdapterSites: [any AdapterSite] { [heads] } }
extension GPT2ForSequenceClassification: AdapterSiteOwner { public var ownAdapterSites: [any AdapterSite] { [heads] } }

extension Module {
    /// Every adapter site in the model: this module's own, then each sub-module's in registration order.
    public var adapterSites: [any AdapterSite] {
        ([self as any Module] + namedModules().map(\.module)).flatMap {
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
    }

    /// The names of every adapter on this model, at any site.
    public var adapterNames: [String] { Set(adapterSites.flatMap(\.adapterNames)).sorted() }

    /// The adapter applied at the first site that applies one (sites are activated together, so it is the one in use).
    public var activeAdapterName: String? { adapterSites.lazy.compactMap(\.activeAdapter).first }

    /// Every parameter the adapter `name` holds, at every site (its head and BitFit biases included), each once.
    public func parameters(ofAdapter name: String) -> [Parameter] {
        var seen = Set<ObjectIdentifier>()
        return adapterSites.flatMap { $0.parameters(of: name) }.filter { seen.insert(ObjectIdentifier($0)).inserted }
    }

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
