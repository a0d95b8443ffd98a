import Foundation

/// Named values, at most one active: the one container behind every adapter site — the adapters of a block slot
/// (``AdapterSlot``), a layer's LoRA adapters and IA3 vectors, prefixes and prompts, and the named variants of a base
/// value (``Variants``: BitFit biases, task heads).
public final class NamedSet<Value> {
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
