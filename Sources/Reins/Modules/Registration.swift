import Foundation
import ReinsTensor

/// A seed that is a pure function of a parameter's key: the same key gets the same initial values in every run.
func seed(forKey key: String, _ base: UInt64 = 0) -> UInt64 {
    // FNV-1a of the key, mixed with the caller's seed.
    key.utf8.reduce(UInt64(0xcbf2_9ce4_8422_2325) ^ base) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
}

extension Module {
    /// Draws every base weight afresh as Hugging Face initialises transformers, each from a seed derived from its key
    /// and `seed`: linear and embedding weights N(0, 0.02), biases 0, layer-norm weights 1. A model built from layers
    /// made with the default seed gets distinct, reproducible weights this way. Adapters keep theirs.
    public func initializeParameters(seed base: UInt64 = 0) throws {
        let adapterOwned = Set(adapterNames.flatMap { parameters(ofAdapter: $0) }.map(ObjectIdentifier.init))
        for (key, module) in [("", self as any Module)] + namedModules() {
            let prefix = key.isEmpty ? "" : key + "."
            let fresh: [(Parameter?, (String) throws -> Tensor)]
            switch module {
            case let l as Linear:
                fresh = [
                    (l.weight, { try Tensor.normal(l.weight.value.shape, std: 0.02, seed: seed(forKey: $0, base)) }),
                    (l.biases?.base, { _ in try Tensor.zeros([l.outputs]) }),
                ]
            case let e as Embedding:
                fresh = [
                    (e.weight, { try Tensor.normal(e.weight.value.shape, std: 0.02, seed: seed(forKey: $0, base)) })
                ]
            case let n as LayerNorm:
                fresh = [
                    (n.weight, { _ in try Tensor.ones(n.weight.value.shape) }),
                    (n.biases.base, { _ in try Tensor.zeros(n.weight.value.shape) }),
                ]
            default: fresh = []
            }
            for case let (p?, make) in fresh where !adapterOwned.contains(ObjectIdentifier(p)) {
                p.replaceValue(try make(prefix + p.name))
            }
        }
    }

    /// Parameters, and modules with parameters, that a model holds in stored properties but does not register in
    /// ``visitParameters(_:)``:
    /// they would never train, save or load. Found with `Mirror` (a check for tests and debugging, not for hot paths):
    /// each entry is the owning module's key and the property's name. Empty for a model whose registration is whole.
    public func unregisteredParameters() -> [String] {
        let modules = [("", self as any Module)] + namedModules()
        let registeredModules = Set(modules.map { ObjectIdentifier($0.1) })
        // Every parameter any site can hold counts as registered (an inactive adapter's, a head variant).
        var registered = Set(allParameterKeys().map { ObjectIdentifier($0.parameter) })
        for site in adapterSites {
            for name in site.adapterNames { registered.formUnion(site.parameters(of: name).map(ObjectIdentifier.init)) }
        }
        var missing: [String] = []
        for (key, module) in modules {
            for child in Mirror(reflecting: module).children {
                guard let label = child.label else { continue }
                let values: [Any] = (child.value as? [Any]) ?? [child.value]
                for value in values {
                    let unwrapped: Any? =
                        Mirror(reflecting: value).displayStyle == .optional
                        ? Mirror(reflecting: value).children.first?.value : value
                    if let p = unwrapped as? Parameter, !registered.contains(ObjectIdentifier(p)) {
                        missing.append(key.isEmpty ? label : "\(key).\(label)")
                    } else if let m = unwrapped as? any Module, !registeredModules.contains(ObjectIdentifier(m)),
                        !m.parameters.isEmpty
                    {
                        missing.append(key.isEmpty ? label : "\(key).\(label)")
                    }
                }
            }
        }
        return missing
    }
}
