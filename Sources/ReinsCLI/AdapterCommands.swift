import ArgumentParser
import Foundation
import ReinsTensor
import Reins

/// `reins extract-lora`: a LoRA adapter from a full fine-tune and its base.
struct ExtractLoRACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "extract-lora",
        abstract:
            "Build a rank-r LoRA adapter (PEFT format) from a fully fine-tuned checkpoint and its base, by truncated SVD of each weight change."
    )

    @Option(help: "The base model directory.") var base: String
    @Option(help: "The fully fine-tuned model directory (same architecture and sizes).") var finetuned: String
    @Option(help: "The LoRA rank.") var rank: Int = 8
    @Option(help: "Only linear layers whose key contains one of these comma-separated texts (default: all).")
    var targets: String?
    @Option(help: "Where to write adapter_config.json and adapter_model.safetensors.") var output: String

    func run() throws {
        let baseModel = try PretrainedModel.load(directory: URL(fileURLWithPath: base))
        let tuned = try PretrainedModel.load(directory: URL(fileURLWithPath: finetuned))
        let wanted = targets?.split(separator: ",").map(String.init)
        let report = try LoRAExtraction.extract(
            base: baseModel.module, fineTuned: tuned.module, rank: rank,
            targets: { key in wanted.map { $0.contains { key.contains($0) } } ?? true })
        for layer in report.layers {
            print(
                String(
                    format: "%-48@ rank %3d   energy kept %7.3f%%", layer.key as NSString, layer.rank,
                    100 * layer.energyKept))
        }
        if !report.otherChangedParameters.isEmpty {
            print(
                "not carried by LoRA (changed outside linear weights): \(report.otherChangedParameters.joined(separator: ", "))"
            )
        }
        try PEFTAdapter.save(baseModel.module, to: URL(fileURLWithPath: output), baseModel: base)
        print("wrote \(output): \(report.layers.count) layers")
    }
}

/// `reins adapters show|merge`.
struct AdaptersCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "adapters", abstract: "Inspect or merge adapter directories.",
        subcommands: [Show.self, Merge.self, ExportGGUF.self])

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Method, targets, parameter count and size of an adapter directory.")
        @Argument(help: "An adapter directory (adapter_config.json + adapter_model.safetensors).") var directory: String

        func run() throws {
            let dir = URL(fileURLWithPath: directory)
            let data = try FileBytes.read(dir.appendingPathComponent("adapter_config.json").path)
            guard let config = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw ValidationError("adapter_config.json is not an object")
            }
            let weights = dir.appendingPathComponent("adapter_model.safetensors")
            let file = try SafeTensorsFile(path: weights.path)
            let count = file.entries.values.map { $0.shape.reduce(1, *) }.reduce(0, +)
            let bytes =
                (try FileManager.default.attributesOfItem(atPath: weights.path)[.size] as? Int ?? 0) + data.count
            print("method: \(config["peft_type"] as? String ?? "?")")
            if config["peft_type"] as? String == "ADALORA" {
                let kept = file.entries.filter { $0.key.hasSuffix(".lora_E") }.map { $0.value.shape.first ?? 0 }
                print(
                    "initial rank: \(config["init_r"] ?? "?"), ranks kept: \(kept.reduce(0, +)) over \(kept.count) layers, alpha: \(config["lora_alpha"] ?? "?")"
                )
            } else if let r = config["r"] {
                print(
                    "rank: \(r), alpha: \(config["lora_alpha"] ?? "?"), rsLoRA: \((config["use_rslora"] as? Bool) ?? false)\((config["use_dora"] as? Bool) == true ? ", DoRA" : "")"
                )
            }
            if let t = config["target_modules"] as? [String] { print("targets: \(t.joined(separator: ", "))") }
            if let p = config["num_virtual_tokens"] { print("virtual tokens: \(p)") }
            if let heads = config["modules_to_save"] as? [String], !heads.isEmpty {
                print("task head(s): \(Array(Set(heads)).sorted().joined(separator: ", "))")
            }
            print("tensors: \(file.entries.count), parameters: \(count), size on disk: \(bytes) bytes")
        }
    }

    struct ExportGGUF: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "export-gguf",
            abstract: "Write a LoRA adapter as a llama.cpp LoRA adapter file (llama-cli --lora, llama_cpp.Llama(lora_path=)).")
        @Option(help: "The base model (a Llama/Qwen2/Mistral directory or .gguf file).") var model: String
        @Option(help: "The LoRA adapter directory (PEFT's layout).") var adapter: String
        @Option(help: "The .gguf file to write.") var output: String

        func run() throws {
            let dir = URL(fileURLWithPath: model)
            let loaded = try PretrainedModel.load(directory: dir, quantized: true)
            try PEFTAdapter.load(directory: URL(fileURLWithPath: adapter), into: loaded.module)
            try GGUFModel.writeLoRAAdapter(
                of: loaded.module, config: try Checkpoint.modelConfig(dir),
                name: URL(fileURLWithPath: adapter).lastPathComponent, to: output)
            print("wrote \(output)")
        }
    }

    struct Merge: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Fold a LoRA adapter into its base and write a full model (a directory, or a .gguf file).")
        @Option(help: "The base model directory.") var model: String
        @Option(help: "The LoRA adapter directory.") var adapter: String
        @Option(help: "Where to write the merged model: a directory (config.json + model.safetensors), or FILE.gguf (float32; `reins quantize --adapter` writes it quantized).")
        var output: String

        func run() throws {
            let dir = URL(fileURLWithPath: model)
            let loaded = try PretrainedModel.load(directory: dir)
            let count = try mergeLoRA(from: adapter, into: loaded.module)
            let config = try Checkpoint.modelConfig(dir)
            if output.hasSuffix(".gguf") {
                try GGUFModel.write(
                    loaded.module, config: config, source: dir, type: .f32,
                    name: dir.deletingPathExtension().lastPathComponent + "+" + URL(fileURLWithPath: adapter).lastPathComponent,
                    to: output)
            } else {
                try loaded.module.save(to: URL(fileURLWithPath: output), config: config)
            }
            print("merged \(count) layers into \(output)")
        }
    }
}

/// Loads the PEFT LoRA adapter at `adapter` into `model` and folds it into the base weights, leaving no adapter
/// attached; returns how many layers it changed.
func mergeLoRA(from adapter: String, into model: any Module) throws -> Int {
    try PEFTAdapter.load(directory: URL(fileURLWithPath: adapter), into: model)
    let layers = model.namedModules().compactMap { $0.module as? any LoRAHost }.filter { $0.activeLoRA != nil }
    guard !layers.isEmpty else {
        throw ValidationError("\(adapter) holds no LoRA weights to merge (prefixes cannot be merged)")
    }
    if let tied = model.tiedOutputEmbedding, layers.contains(where: { $0 === tied }) {
        throw ValidationError(
            "\(adapter) adapts the word embeddings, which the output layer shares: a merged checkpoint would change the output layer too (use the adapter unmerged)"
        )
    }
    for l in layers {
        try l.merge()
        let merged = l.weight.value
        try l.detachLoRA(l.activeLoRA!)  // detaching unmerges: put the merged weight back, without the adapter
        l.weight.value = merged
    }
    return layers.count
}
