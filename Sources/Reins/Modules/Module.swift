import ReinsTensor

/// A piece of a model that owns parameters and sub-modules, each registered explicitly under a stable key.
///
/// Keys match Hugging Face checkpoint names (`h.0.attn.c_attn.weight`), so loading and saving is a lookup, never a
/// rename. Registration is explicit (no reflection): each module lists its own parameters and children in
/// ``visitParameters(_:)`` in a fixed order, which makes parameter order deterministic.
public protocol Module: AnyObject {
    /// Calls `visit` for each parameter and child module, with the key relative to this module.
    func visitParameters(_ visit: inout ParameterVisitor)
}

/// Walks a module tree, building full keys from the path.
public struct ParameterVisitor {
    private var prefix: [String] = []
    fileprivate var found: [(key: String, parameter: Parameter)] = []
    fileprivate var modules: [(key: String, module: any Module)] = []
    /// False for a walk that wants the modules only (``Module/namedModules()``): parameters are skipped, and a module
    /// with many adapters can skip building their keys.
    public fileprivate(set) var collectsParameters = true
    /// False for a walk that wants the modules without their keys (``Module/descendantModules()``).
    fileprivate var buildsKeys = true

    /// Visits one parameter under `name`.
    public mutating func parameter(_ name: String, _ parameter: Parameter?) {
        guard collectsParameters, let parameter else { return }
        found.append(((prefix + [name]).joined(separator: "."), parameter))
    }

    /// Visits a child module under `name`.
    public mutating func module(_ name: String, _ module: (any Module)?) {
        guard let module else { return }
        guard buildsKeys else {
            modules.append(("", module))
            module.visitParameters(&self)
            return
        }
        prefix.append(name)
        modules.append((prefix.joined(separator: "."), module))
        module.visitParameters(&self)
        prefix.removeLast()
    }

    /// Visits a list of child modules as `name.0`, `name.1`, ...
    public mutating func modules(_ name: String, _ modules: [any Module]) {
        for (i, m) in modules.enumerated() { module(buildsKeys ? "\(name).\(i)" : "", m) }
    }
}

extension Module {
    /// Every parameter with its full key, in registration order. A parameter shared by two paths (tied weights)
    /// appears once, under the first key.
    public func namedParameters() -> [(key: String, parameter: Parameter)] {
        var visitor = ParameterVisitor()
        visitParameters(&visitor)
        var seen = Set<ObjectIdentifier>()
        return visitor.found.filter { seen.insert(ObjectIdentifier($0.parameter)).inserted }
    }

    /// Every key under which a parameter is registered, including the second key of a tied parameter.
    public func allParameterKeys() -> [(key: String, parameter: Parameter)] {
        var visitor = ParameterVisitor()
        visitParameters(&visitor)
        return visitor.found
    }

    /// Every sub-module with its key (`h.0.attn.c_attn`), in registration order.
    public func namedModules() -> [(key: String, module: any Module)] {
        var visitor = ParameterVisitor()
        visitor.collectsParameters = false
        visitParameters(&visitor)
        return visitor.modules
    }

    /// The modules below this one, as ``namedModules()`` lists them, without building their keys (a cheaper walk, for
    /// a caller that looks at every module often: a server admitting a request).
    public func descendantModules() -> [any Module] {
        var visitor = ParameterVisitor()
        visitor.collectsParameters = false
        visitor.buildsKeys = false
        visitParameters(&visitor)
        return visitor.modules.map(\.module)
    }

    /// The parameters in registration order.
    public var parameters: [Parameter] { namedParameters().map(\.parameter) }

    /// The parameters that receive gradients.
    public var trainableParameters: [Parameter] { parameters.filter(\.isTrainable) }

    /// The number of scalars in all parameters (tied weights counted once).
    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.value.count } }

    /// The number of scalars that train.
    public var trainableParameterCount: Int { trainableParameters.reduce(0) { $0 + $1.value.count } }

    /// Freezes the parameters whose key satisfies `predicate` (all by default): they get no gradient and no
    /// optimizer state.
    public func freeze(where predicate: (String) -> Bool = { _ in true }) {
        for (key, p) in namedParameters() where predicate(key) { p.isTrainable = false }
    }

    /// Unfreezes the parameters whose key satisfies `predicate` (all by default).
    public func unfreeze(where predicate: (String) -> Bool = { _ in true }) {
        for (key, p) in namedParameters() where predicate(key) { p.isTrainable = true }
    }

    /// Clears every gradient.
    public func zeroGradients() { for p in parameters { p.zeroGradient() } }
}

// MARK: - Building blocks

/// Initial values for new parameters. While a checkpoint is being loaded the draws are skipped (uninitialised
/// buffers that the loader fills), since every value is about to be overwritten.
enum Initializer {
    @TaskLocal static var skipped = false

    static func normal(_ shape: [Int], std: Float, seed: UInt64) throws -> Tensor {
        skipped ? try Tensor.uninitialized(shape) : try Tensor.normal(shape, std: std, seed: seed)
    }
}
