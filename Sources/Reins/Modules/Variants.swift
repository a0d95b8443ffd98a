import Foundation
import ReinsTensor

/// A base value and named variants of it, one active: how adapters give each task its own biases (BitFit) or its own
/// task head on one shared base. The active variant is registered under the base's key, so an adapter's biases and
/// head train, save and load under the model's own keys (`...bias`, `classifier.weight`) while the base's stay
/// untouched.
public final class Variants<Value: AnyObject> {
    public let base: Value
    /// The named variants, one of them (or none: the base) active.
    public let named = NamedSet<Value>()

    init(_ base: Value) { self.base = base }

    public var variants: [String: Value] { named.members }
    public var active: String? {
        get { named.active }
        set { named.active = newValue }
    }

    /// The active variant, or the base.
    public var current: Value { named.current ?? base }

    /// Adds (or replaces) the variant `name` and activates it.
    func add(_ name: String, _ value: Value) { named.add(name, value) }
    func remove(_ name: String) { named.remove(name) }
    /// Activates `name` if there is a variant of that name, else the base.
    public func activate(_ name: String?) { named.activate(name) }
}

/// Biases with BitFit variants.
public typealias ParameterVariants = Variants<Parameter>
