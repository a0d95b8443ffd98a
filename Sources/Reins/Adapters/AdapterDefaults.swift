import Foundation
import ReinsTensor

/// The layers each method targets when none are named, by model type: one table per method, as PEFT keeps them
/// (a new model family is one row in each).
public enum AdapterDefaults {
    /// LoRA's default targets (PEFT's `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`).
    public static let loraTargets: [String: [String]] = [
        "gpt2": ["c_attn"], "bert": ["query", "value"], "llama": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"],
        "mistral": ["q_proj", "v_proj"],
    ]
    /// IA3's default targets and, among them, the feed-forward ones whose input it scales (PEFT's IA3 mappings).
    public static let ia3Targets: [String: (targets: [String], feedForward: [String])] = [
        "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
        "bert": (["key", "value", "output.dense"], ["output.dense"]),
        "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
        "qwen2": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
        "mistral": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    ]
}

extension Module {
    /// The model type of the first block stack in the model (`gpt2`, `bert`), if it has one.
    public var modelType: String? {
        ([self as any Module] + namedModules().map(\.module)).lazy.compactMap {
            ($0 as? any VirtualTokenHost)?.modelType
        }.first
    }

    /// LoRA's default targets for this model.
    /// - Throws: ``ModelError/badInput(_:)`` for a model with no default (name the targets instead).
    public func defaultLoRATargets() throws -> [String] {
        guard let type = modelType, let targets = AdapterDefaults.loraTargets[type] else {
            throw ModelError.badInput(
                "no default LoRA targets for this model (\(modelType ?? "no known model type")): name the layers to adapt"
            )
        }
        return targets
    }
}
