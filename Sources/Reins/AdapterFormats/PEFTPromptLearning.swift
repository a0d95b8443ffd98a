import Foundation
import ReinsTensor

extension PEFTAdapter {
    /// A prompt-learning adapter's (prefix or prompt tuning) `prompt_embeddings`, and what installs the heads saved
    /// with it (under `base_model.`, without PEFT's `.model`), checked before anything is attached.
    static func promptLearningTensors(directory: URL, into model: any Module, name: String) throws -> (
        Tensor, () -> Void
    ) {
        let (file, _) = try weightsFile(directory)
        guard file.shape("prompt_embeddings") != nil else {
            throw ModelError.checkpointMismatch(
                missing: ["prompt_embeddings"], unexpected: file.tensorNames.sorted(), misshaped: [])
        }
        let heads = try file.tensorNames.sorted().filter { $0 != "prompt_embeddings" }.map { key in
            (
                key: key,
                plain: key.hasPrefix("base_model.model.")
                    ? modelPath(key) : key.hasPrefix("base_model.") ? String(key.dropFirst(11)) : key,
                tensor: try file.tensor(key)
            )
        }
        return (try file.tensor("prompt_embeddings"), try headInstaller(heads, into: model, name: name))
    }

    /// PEFT prefix tuning: one tensor `prompt_embeddings` `[P, layers · 2 · hidden]`.
    static func loadPrefix(directory: URL, config: ConfigReader, into model: any Module, name: String) throws {
        guard let host = model.encoderShape else {
            throw ModelError.badInput("prefix tuning needs a model with transformer blocks (GPT-2, BERT, Llama)")
        }
        let (layers, hidden) = (host.layers, host.prefixWidth)
        // With prefix_projection PEFT trains the prefixes through an MLP but saves what it produces, the same tensor.
        let (embeddings, installHeads) = try promptLearningTensors(directory: directory, into: model, name: name)
        if let n = try config.optionalInt("num_layers"), n != layers {
            throw ModelError.badConfig(
                path: config.path, detail: "num_layers \(n) does not match the model's \(layers)")
        }
        if let dim = try config.optionalInt("token_dim"), dim != hidden {
            throw ModelError.badConfig(
                path: config.path, detail: "token_dim \(dim) does not match the model's hidden size \(hidden)")
        }
        if let virtual = try config.optionalInt("num_virtual_tokens"), virtual != embeddings.shape.first {
            throw ModelError.checkpointMismatch(
                missing: [], unexpected: [],
                misshaped: ["prompt_embeddings is \(embeddings.shape), num_virtual_tokens is \(virtual)"])
        }
        do {
            let prefix = try Prefix(
                Parameter("prompt_embeddings", embeddings), layers: host.layers, hidden: host.prefixWidth,
                heads: host.prefixHeads)
            host.prefixes.add(name, prefix)
        } catch let ModelError.badInput(detail) {
            throw ModelError.checkpointMismatch(missing: [], unexpected: [], misshaped: [detail])
        }
        installHeads()
    }

    /// PEFT prompt tuning (or P-tuning, saved the same way): one tensor `prompt_embeddings` `[P, hidden]` (GPT-2 and BERT
    /// models), and heads saved with it.
    static func loadPrompt(directory: URL, config: ConfigReader, into model: any Module, name: String) throws {
        guard let shape = model.encoderShape else {
            throw ModelError.badInput("prompt tuning needs a model with transformer blocks (GPT-2, BERT, Llama)")
        }
        let (embeddings, installHeads) = try promptLearningTensors(directory: directory, into: model, name: name)
        guard embeddings.rank == 2, embeddings.shape[0] > 0, embeddings.shape[1] == shape.hidden else {
            throw ModelError.checkpointMismatch(
                missing: [], unexpected: [],
                misshaped: ["prompt_embeddings is \(embeddings.shape), expected [P, \(shape.hidden)]"])
        }
        shape.prompts.add(name, Parameter("prompt_tuning_embeddings", embeddings))
        installHeads()
    }

    /// Prompt tuning: nil when the model has no prompt by that name (or active).
    static func savePrompt(_ model: any Module, name: String) throws -> PEFTPart? {

        guard let shape = model.encoderShape, let prompt = shape.prompts.members[name] ?? shape.prompts.current else {
            return nil
        }
        var part = PEFTPart()
        part.config.merge([
            "peft_type": "PROMPT_TUNING", "num_virtual_tokens": prompt.value.shape[0], "token_dim": shape.hidden,
            "num_layers": shape.layers, "num_attention_heads": shape.heads, "num_transformer_submodules": 1,
            "prompt_tuning_init": "RANDOM",
        ]) { _, new in new }
        part.tensors["prompt_embeddings"] = prompt.value.detached()
        part.written.insert(ObjectIdentifier(prompt))
        part.headPrefix = "base_model."
        return part
    }

    /// Prefix tuning, folded: nil when the model has no prefix by that name (or active).
    static func savePrefix(_ model: any Module, name: String) throws -> PEFTPart? {
        let prefixOwner = model.encoderShape.flatMap {
            host -> (prefix: Prefix, layers: Int, hidden: Int, heads: Int)? in
            guard let p = host.prefixes.members[name] ?? host.prefixes.current else { return nil }
            return (p, host.layers, host.prefixWidth, host.prefixHeads)
        }
        guard let owner = prefixOwner else { return nil }
        var part = PEFTPart()
        part.config.merge([
            "peft_type": "PREFIX_TUNING", "num_virtual_tokens": owner.prefix.length, "num_layers": owner.layers,
            "token_dim": owner.hidden,
            "num_attention_heads": owner.heads, "num_transformer_submodules": 1, "prefix_projection": false,
            "encoder_hidden_size": owner.hidden,
        ]) { _, new in new }
        // A reparameterised prefix is saved folded: the plain prefixes its MLP produces.
        part.tensors["prompt_embeddings"] = try Autograd.withoutGradients { try owner.prefix.current() }.detached()
        part.written.formUnion(owner.prefix.parameters.map(ObjectIdentifier.init))
        part.headPrefix = "base_model."  // PEFT's prompt-learning models keep heads under base_model.
        return part
    }
}
