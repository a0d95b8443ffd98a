@_exported import ReinsTensor

/// Reins: steer a pretrained language model — fine-tune it, or freeze it and train small adapters on one shared
/// base. This module holds the model level (GPT, BERT, task heads, adapters); the tensor engine it stands on is
/// ``ReinsTensor``.
public enum Reins {
    /// The library version.
    public static let version = "0.1.0"
}
