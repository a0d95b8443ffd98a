import Foundation
import ReinsTensor

/// An IA3 vector for one linear layer (Liu et al., arXiv 2205.05638): the layer's output (or, for feed-forward layers,
/// its input) multiplied elementwise by a learned vector that starts at ones, so attaching changes nothing.
public final class IA3 {
    public let vector: Parameter
    /// Whether the vector rescales the input (`[in]`, PEFT's feed-forward modules) rather than the output (`[out]`).
    public let scalesInput: Bool

    public init(size: Int, scalesInput: Bool) throws {
        vector = Parameter("ia3_l", try Tensor.ones([size]))
        self.scalesInput = scalesInput
    }

    public init(vector: Tensor, scalesInput: Bool) {
        self.vector = Parameter("ia3_l", vector)
        self.scalesInput = scalesInput
    }
}

extension Module {
    /// Attaches IA3 vectors named `name` (all ones: a no-op until trained) to the targeted linear layers and activates
    /// them; see ``AdapterMethod/ia3(targets:feedForward:)`` for the names and defaults. Returns the layers' keys.
    @discardableResult
    public func addIA3(_ name: String, targets: [String]? = nil, feedForward: [String]? = nil) throws -> [String] {
        let defaults = modelType.flatMap { AdapterDefaults.ia3Targets[$0] }
        guard let targets = targets ?? defaults?.targets else {
            throw ModelError.badInput("no default IA3 targets for this model: name the layers to scale")
        }
        let feedForward = feedForward ?? defaults?.feedForward ?? []
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
}
