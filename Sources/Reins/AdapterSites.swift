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
}

extension NamedSet: AdapterSite {
    public var adapterNames: [String] { members.keys.sorted() }
    public var activeAdapter: String? { active }
    public func removeAdapter(_ name: String) { remove(name) }
}

extension Variants: AdapterSite {
    public var adapterNames: [String] { named.adapterNames }
    public var activeAdapter: String? { active }
    public func removeAdapter(_ name: String) { remove(name) }
}

extension AdapterSlot: AdapterSite {
    public var adapterNames: [String] { adapters.keys.sorted() }
    public var activeAdapter: String? { active }
    public func activate(_ name: String?) { active = name.flatMap { adapters[$0] != nil ? $0 : nil } }
    public func removeAdapter(_ name: String) { remove(name) }
}

/// The LoRA adapters of a linear layer, an embedding table or a tied output layer, as a site.
struct LoRASite: AdapterSite {
    let host: any LoRAHost
    var adapterNames: [String] { host.loras.keys.sorted() }
    var activeAdapter: String? { host.activeLoRA }
    func activate(_ name: String?) { host.activeLoRA = name.flatMap { host.loras[$0] != nil ? $0 : nil } }
    func removeAdapter(_ name: String) throws { try host.detachLoRA(name) }
}

/// The IA3 vectors of a linear layer, as a site.
struct IA3Site: AdapterSite {
    let layer: Linear
    var adapterNames: [String] { layer.ia3.keys.sorted() }
    var activeAdapter: String? { layer.activeIA3 }
    func activate(_ name: String?) { layer.activeIA3 = name.flatMap { layer.ia3[$0] != nil ? $0 : nil } }
    func removeAdapter(_ name: String) { layer.detachIA3(name) }
}

/// A module that holds adapter sites of its own (its children's are found by walking the tree).
public protocol AdapterSiteOwner: Module {
    /// The sites this module itself holds, in a fixed order.
    var ownAdapterSites: [any AdapterSite] { get }
}

extension Linear: AdapterSiteOwner {
    public var ownAdapterSites: [any AdapterSite] { [LoRASite(host: self), IA3Site(layer: self)] + (biases.map { [$0] } ?? []) }
}
extension Embedding: AdapterSiteOwner { public var ownAdapterSites: [any AdapterSite] { [LoRASite(host: self)] } }
extension TiedOutput: AdapterSiteOwner { public var ownAdapterSites: [any AdapterSite] { [LoRASite(host: self)] } }
extension LayerNorm: AdapterSiteOwner { public var ownAdapterSites: [any AdapterSite] { [biases] } }
extension BlockAdapters: AdapterSiteOwner {
    public var ownAdapterSites: [any AdapterSite] { [afterAttention, afterFeedForward, feedForwardBias, parallelFeedForward] }
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
        ([self as any Module] + namedModules().map(\.module)).flatMap { ($0 as? any AdapterSiteOwner)?.ownAdapterSites ?? [] }
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
}
