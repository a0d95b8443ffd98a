import Foundation
import Synchronization

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
        AdapterChanges.note()
    }

    func remove(_ name: String?) {
        defer { AdapterChanges.note() }
        guard let name else { members = [:]; active = nil; return }
        members[name] = nil
        if active == name { active = nil }
    }

    /// Activates `name` if it exists here, else nothing.
    public func activate(_ name: String?) { active = name.flatMap { members[$0] != nil ? $0 : nil } }
}

/// A count of the changes to every adapter set of every model (a member added or removed, a DoRA magnitude set): what
/// a layer's cache of a routed batch's adapters (``Linear/routedAdapters(_:)``) checks to know it still holds.
enum AdapterChanges {
    private static let count = Atomic<Int>(0)
    static var epoch: Int { count.load(ordering: .acquiring) }
    static func note() { count.add(1, ordering: .releasing) }
}
