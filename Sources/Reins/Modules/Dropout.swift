import ReinsTensor

/// Dropout as a module: in training mode (inside ``TrainingMode/run(seed:_:)``, as the ``Trainer`` runs every step)
/// each element is zeroed with probability `p` and the rest scaled by `1 / (1 - p)`, from the run's seeded masks; in
/// inference it returns its input unchanged. The same dropout GPT-2's and BERT's own layers apply.
public final class Dropout: Module {
    public let probability: Float

    /// - Throws: ``ModelError/badInput(_:)`` for a probability outside [0, 1).
    public init(_ probability: Float) throws {
        guard (0..<1).contains(probability) else {
            throw ModelError.badInput("dropout probability \(probability) is outside [0, 1)")
        }
        self.probability = probability
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {}

    /// `x` with dropout applied in training mode; `x` itself otherwise.
    public func callAsFunction(_ x: Tensor) throws -> Tensor { try x.trainingDropout(probability) }
}
