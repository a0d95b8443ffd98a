import Foundation
import ReinsTensor

/// A model built from a checkpoint's `architectures` entry, with the head that entry names.
public enum PretrainedModel {
    case gpt2(GPT2Model)
    case gpt2LMHead(GPT2LMHeadModel)
    case gpt2SequenceClassification(GPT2ForSequenceClassification)
    case bert(BertModel)
    case bertMaskedLM(BertForMaskedLM)
    case bertSequenceClassification(BertForSequenceClassification)
    case bertTokenClassification(BertForTokenClassification)
    case bertQuestionAnswering(BertForQuestionAnswering)
    /// Llama, Qwen2, Mistral and SmolLM2 checkpoints (`LlamaForCausalLM`, `Qwen2ForCausalLM`, `MistralForCausalLM`).
    case llama(LlamaModel)
    case llamaCausalLM(LlamaForCausalLM)
    case llamaSequenceClassification(LlamaForSequenceClassification)

    /// The model as a ``Module`` (parameters, freezing, saving).
    public var module: any Module {
        switch self {
        case let .gpt2(m): return m
        case let .gpt2LMHead(m): return m
        case let .gpt2SequenceClassification(m): return m
        case let .bert(m): return m
        case let .bertMaskedLM(m): return m
        case let .bertSequenceClassification(m): return m
        case let .bertTokenClassification(m): return m
        case let .bertQuestionAnswering(m): return m
        case let .llama(m): return m
        case let .llamaCausalLM(m): return m
        case let .llamaSequenceClassification(m): return m
        }
    }

    /// How to build each architecture and how its keys sit in a checkpoint: one table, one row per architecture.
    typealias Builder = ([String: Any], String) throws -> PretrainedModel
    /// The parameter count a config implies, counted without building anything.
    typealias Counter = ([String: Any], String) throws -> Int

    static var table: [String: (build: Builder, count: Counter, options: LoadOptions)] {
        let gpt2 = LoadOptions(basePrefix: "transformer", ignoredSuffixes: [".attn.bias", ".attn.masked_bias"])
        let bert = LoadOptions(basePrefix: "bert", ignoredSuffixes: ["position_ids"])
        // Task heads start from any pretrained checkpoint, as transformers lets them: the pretraining heads (`cls.`:
        // masked LM and next-sentence; GPT-2's `lm_head.`) are not theirs, and heads without a pooler skip one.
        var heads = bert, classifier = bert, gpt2Classifier = gpt2
        heads.ignoredPrefixes = ["pooler.", "cls."]
        classifier.ignoredPrefixes = ["cls."]
        gpt2Classifier.ignoredPrefixes = ["lm_head."]
        // Llama-family checkpoints: the base under `model.`; very old ones also store the rotary inverse frequencies.
        let llama = LoadOptions(basePrefix: "model", ignoredSuffixes: ["rotary_emb.inv_freq"])
        var llamaClassifier = llama
        llamaClassifier.ignoredPrefixes = ["lm_head."]
        let llamaCount: Counter = { try LlamaConfig(json: $0, path: $1).parameterCount }
        let gpt2Count: Counter = { try GPT2Config(json: $0, path: $1).parameterCount }
        let bertCount: Counter = { try BertConfig(json: $0, path: $1).parameterCount }
        var rows: [String: (build: Builder, count: Counter, options: LoadOptions)] = [:]
        for family in ["Llama", "Qwen2", "Mistral"] {
            rows["\(family)Model"] = ({ .llama(try LlamaModel(try LlamaConfig(json: $0, path: $1))) }, llamaCount, llama)
            rows["\(family)ForCausalLM"] = (
                { .llamaCausalLM(try LlamaForCausalLM(try LlamaConfig(json: $0, path: $1))) }, llamaCount, llama
            )
            rows["\(family)ForSequenceClassification"] = (
                {
                    .llamaSequenceClassification(
                        try LlamaForSequenceClassification(try LlamaConfig(json: $0, path: $1)))
                }, llamaCount, llamaClassifier
            )
        }
        let others: [String: (build: Builder, count: Counter, options: LoadOptions)] = [
            "GPT2Model": ({ .gpt2(try GPT2Model(try GPT2Config(json: $0, path: $1))) }, gpt2Count, gpt2),
            "GPT2LMHeadModel": (
                { .gpt2LMHead(try GPT2LMHeadModel(try GPT2Config(json: $0, path: $1))) }, gpt2Count, gpt2
            ),
            "GPT2ForSequenceClassification": (
                { .gpt2SequenceClassification(try GPT2ForSequenceClassification(try GPT2Config(json: $0, path: $1))) },
                gpt2Count, gpt2Classifier
            ),
            "BertModel": ({ .bert(try BertModel(try BertConfig(json: $0, path: $1))) }, bertCount, bert),
            "BertForMaskedLM": (
                { .bertMaskedLM(try BertForMaskedLM(try BertConfig(json: $0, path: $1))) }, bertCount, heads
            ),
            "BertForSequenceClassification": (
                { .bertSequenceClassification(try BertForSequenceClassification(try BertConfig(json: $0, path: $1))) },
                bertCount, classifier
            ),
            "BertForTokenClassification": (
                { .bertTokenClassification(try BertForTokenClassification(try BertConfig(json: $0, path: $1))) },
                bertCount, heads
            ),
            "BertForQuestionAnswering": (
                { .bertQuestionAnswering(try BertForQuestionAnswering(try BertConfig(json: $0, path: $1))) }, bertCount,
                heads
            ),
        ]
        return rows.merging(others) { a, _ in a }
    }

    /// The architecture names Reins can build.
    public static var knownArchitectures: [String] { table.keys.sorted() }

    /// Loads a Hugging Face model directory, building the architecture its config names (or `architecture`).
    /// - Parameters:
    ///   - newlyInitialized: key prefixes the checkpoint may lack (a new task head on a base checkpoint).
    /// - Throws: ``ModelError`` (unknown architecture, strict-loading mismatches, bad config), ``SafeTensorsError``.
    ///   - configOverrides: config entries to replace (e.g. `num_labels` for a new head).
    ///   - quantized: for a GGUF file, keep every quantized weight in its blocks (frozen, ``Linear/quantize(_:)``)
    ///     instead of dequantizing it to float32; ignored for other checkpoints.
    public static func load(
        directory: URL, architecture: String? = nil, newlyInitialized: [String] = [],
        configOverrides: [String: Any] = [:], quantized: Bool = false
    ) throws -> PretrainedModel {
        var checkpoint = try Checkpoint(directory: directory)
        for (k, v) in configOverrides { checkpoint.config[k] = v }
        if configOverrides["num_labels"] != nil {
            checkpoint.config["id2label"] = nil; checkpoint.config["label2id"] = nil
        }
        let configPath = checkpoint.configPath
        // The config's `architectures`, else its `model_type` (gpt2: the LM head model, whose head is tied and so
        // needs no extra tensor; bert: the bare model).
        let byType = [
            "gpt2": "GPT2LMHeadModel", "bert": "BertModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "mistral": "MistralForCausalLM",
        ]
        let name =
            architecture ?? ConfigReader(json: checkpoint.config, path: configPath).architectures.first
            ?? (checkpoint.config["model_type"] as? String).flatMap { byType[$0] } ?? ""
        guard let row = table[name] else {
            throw ModelError.unknownArchitecture(
                name.isEmpty ? "(none in config.json)" : name, known: knownArchitectures)
        }
        try checkpoint.requireHolds(parameters: try row.count(checkpoint.config, configPath), configPath: configPath)
        let model = try Initializer.$skipped.withValue(true) { try row.build(checkpoint.config, configPath) }
        var options = row.options
        options.newlyInitialized = newlyInitialized
        if quantized, let archive = checkpoint.ggufArchive {
            options.quantized = try GGUFModel.installQuantized(archive, into: model.module, basePrefix: options.basePrefix)
        }
        try model.module.load(from: checkpoint, options: options)
        return model
    }
}

extension PretrainedModel {
    /// The base model for an adapter directory, with the head its PEFT `task_type` needs: a `SEQ_CLS` adapter trained
    /// on `AutoModelForSequenceClassification` over a checkpoint saved as `BertModel` or `BertForMaskedLM` gets a
    /// `BertForSequenceClassification` (GPT-2: `GPT2ForSequenceClassification`) with as many labels as the adapter's
    /// saved head; `TOKEN_CLS` a token classifier; `QUESTION_ANS` a QA head; `CAUSAL_LM` GPT-2's LM head. Without a
    /// task type, or when the checkpoint already has that head, this is ``load(directory:architecture:newlyInitialized:configOverrides:)``.
    /// The new head's weights come from the adapter (``AdapterFiles/load(directory:into:name:)`` installs them). A GPT-2
    /// classifier without `pad_token_id` uses `eos_token_id`, the usual choice.
    public static func load(directory: URL, forAdapter adapter: URL) throws -> PretrainedModel {
        let config = try Checkpoint.modelConfig(directory)
        let adapterConfig = (try? Checkpoint.readJSON(adapter.appendingPathComponent("adapter_config.json"))) ?? [:]
        let isGPT2 = config["model_type"] as? String == "gpt2"
        let llamaFamily = ["llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"][config["model_type"] as? String ?? ""]
        let wanted: (architecture: String, head: String)?
        switch adapterConfig["task_type"] as? String {
        case "SEQ_CLS" where llamaFamily != nil: wanted = ("\(llamaFamily!)ForSequenceClassification", "score")
        case "CAUSAL_LM" where llamaFamily != nil: wanted = ("\(llamaFamily!)ForCausalLM", "lm_head")
        case "SEQ_CLS":
            wanted =
                isGPT2 ? ("GPT2ForSequenceClassification", "score") : ("BertForSequenceClassification", "classifier")
        case "TOKEN_CLS" where !isGPT2: wanted = ("BertForTokenClassification", "classifier")
        case "QUESTION_ANS" where !isGPT2: wanted = ("BertForQuestionAnswering", "qa_outputs")
        case "CAUSAL_LM" where isGPT2: wanted = ("GPT2LMHeadModel", "lm_head")
        default: wanted = nil
        }
        let own = ConfigReader(json: config, path: directory.path).architectures.first
        guard let wanted, own != wanted.architecture else { return try load(directory: directory) }
        var overrides: [String: Any] = [:]
        if wanted.head == "classifier" || wanted.head == "score" {
            // As many labels as the adapter's saved head has rows (its weight is [labels, hidden]).
            let (file, path) = try PEFTAdapter.weightsFile(adapter)
            guard
                let key = file.tensorNames.sorted().first(where: {
                    $0.contains(".\(wanted.head).") && $0.hasSuffix("weight") && !$0.contains("original_module")
                }),
                let labels = file.shape(key)?.first
            else {
                throw ModelError.badConfig(
                    path: path,
                    detail:
                        "a \(adapterConfig["task_type"] ?? "") adapter without its \(wanted.head) head (modules_to_save)"
                )
            }
            overrides["num_labels"] = labels
            // GPT-2 checkpoints carry no pad token; PEFT users set the end-of-text token, as Reins's trainer does.
            if isGPT2 || llamaFamily != nil, config["pad_token_id"] == nil || config["pad_token_id"] is NSNull,
                let eos = config["eos_token_id"] as? Int
            {
                overrides["pad_token_id"] = eos
            }
        }
        return try load(
            directory: directory, architecture: wanted.architecture, newlyInitialized: [wanted.head + "."],
            configOverrides: overrides)
    }
}
