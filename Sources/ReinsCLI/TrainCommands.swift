import ArgumentParser
import Foundation
import Reins
import ReinsDistributed
import ReinsTensor

/// What `train`, `eval` and `predict` share: the base model and the task.
struct TaskOptions: ParsableArguments {
    @Option(
        help:
            "Hugging Face model directory: BERT or GPT-2 for classification, BERT for token-classification, qa and mlm, GPT-2 or a Llama-family model (Llama, Qwen2, Mistral, SmolLM2; a directory or a .gguf file) for causal-lm and instruction."
    ) var model: String
    @Option(
        help:
            "classification (text [+ pair], label), token-classification (tokens, tags: space-separated), qa (question, context, answer, answer_start), mlm (text), causal-lm (text, or prompt + completion) or instruction (messages: [{role, content}], or prompt + completion; formatted by the model's chat template, loss on the assistant turns only)."
    ) var task = "classification"
    @Option(
        help:
            "Class names in order, comma-separated (default: labels.json beside the adapter or in the model directory; for training, the labels in the data; for eval and predict, the model config's id2label)."
    ) var labels: String?
    @Option(help: "Classification: field holding the text.") var textField = "text"
    @Option(help: "Classification: field holding the second text of a pair.") var pairField: String?
    @Option(help: "Classification: field holding the label.") var labelField = "label"
    @Option(
        help:
            "Classification: cls (BERT's pooler) or mean (token average, for sentence-embedding models); default: the model config's reins_pooling, else cls."
    ) var pooling: String?
    @Option(help: "Tokens per example.") var maxLength = 128
    @Flag(
        help:
            "For a GGUF model: train on its weights dequantized to float32 (needed for full fine-tuning); by default the base stays in its quantized blocks, frozen, and adapters train beside it (QLoRA)."
    ) var exact = false

    var taskKind: String { task.lowercased() }

    func validate() throws {
        guard maxLength > 0 else { throw ValidationError("--max-length must be positive, got \(maxLength)") }
    }

    /// The class or tag names: `--labels`, else labels.json beside the adapter or in the model directory, else (when
    /// `data` is given: training) the values found in it, sorted — integer class labels give "0"..."max" — or (when it
    /// is not: eval, predict) the model's config.json `id2label`.
    /// Empty when none are known (classification then reads labels as class indices).
    func labelNames(besideAdapter adapter: URL? = nil, foundIn data: URL? = nil) throws -> [String] {
        if let labels { return labels.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
        for dir in [adapter?.deletingLastPathComponent(), URL(fileURLWithPath: model)].compactMap({ $0 }) {
            let url = dir.appendingPathComponent("labels.json")
            if let data = FileBytes.contents(url.path),
                let names = try? JSONSerialization.jsonObject(with: data) as? [String]
            {
                return names
            }
        }
        // Scoring or predicting with a fine-tuned model: its own label map (config.json id2label), unless it holds only
        // transformers' LABEL_i defaults. (Training names its classes from the data instead.)
        if data == nil,
            let config = try? Checkpoint.modelConfig(URL(fileURLWithPath: model)),
            let map = config["id2label"] as? [String: String], !map.isEmpty,
            let names = Optional((0..<map.count).compactMap { map[String($0)] }), names.count == map.count,
            names.enumerated().contains(where: { $0.element != "LABEL_\($0.offset)" })
        {
            return names
        }
        guard let data else { return [] }
        switch taskKind {
        case "classification":
            let values = Set(try DataFiles.records(data).map { try $0.require(labelField) })
            let numbers = values.compactMap { Int($0) }
            guard numbers.count == values.count else { return values.sorted() }
            // Integer labels are class indices 0...max: refuse a max no head could have before naming every class.
            let top = numbers.max() ?? 0
            guard top < DataFiles.maximumClassIndex else {
                throw ValidationError(
                    "\(data.path): class index \(top) in '\(labelField)' is not below \(DataFiles.maximumClassIndex) (give --labels to use names)"
                )
            }
            // What so many classes cost before anything is built: a name each, and a head row each of the model's
            // width with its gradient and two AdamW moments (16 bytes a weight).
            let config =
                (try? Checkpoint.modelConfig(URL(fileURLWithPath: model))) ?? [:]
            let width = JSONNumber.exactInt(config["hidden_size"] ?? config["n_embd"]) ?? 1
            let (perClass, o) = (max(width, 1) + 1).multipliedReportingOverflow(by: 16)
            try Tensor.checkMemory(
                elements: top + 1, bytesPerElement: o ? Int.max : perClass + MemoryLayout<String>.stride + 16,
                what:
                    "\(top + 1) classes (integer labels are class indices; the head and its optimizer state included)",
                operation: "\(data.path)")
            return (0...max(top, 0)).map(String.init)
        case "token-classification":
            return Set(
                try DataFiles.records(data).flatMap { try $0.require("tags").split(separator: " ").map(String.init) }
            ).sorted()
        default: return []
        }
    }

    /// The model for the task, prepared by `prepare(model, labelCount)` (which adds or loads an adapter; `labelCount`
    /// is nil for tasks whose head has a fixed size), and the task over the given training and evaluation files.
    func makeTask(train: URL?, evaluation: URL?, labels: [String], prepare: (any Module, Int?) throws -> Void) throws
        -> any TrainingTask
    {
        let dir = URL(fileURLWithPath: model)
        switch taskKind {
        case "classification":
            // Integer labels are class indices; names are looked up in `labels`.
            let names = labels.allSatisfy { Int($0) != nil } ? [] : labels
            let read = { (url: URL) in
                try DataFiles.classification(
                    url, labels: names, textField: textField, pairField: pairField, labelField: labelField)
            }
            let (trainSet, evaluationSet) = (try train.map(read) ?? [], try evaluation.map(read) ?? [])
            let count = labels.isEmpty ? ((trainSet + evaluationSet).map(\.label).max() ?? 0) + 1 : labels.count
            let (model, encode, padID) = try classifier(labels: count)
            try prepare(model, count)
            return try SequenceClassificationTask(
                model: model, labels: model.heads.current.outputs, train: trainSet, evaluation: evaluationSet,
                padID: padID, encode: encode)
        case "token-classification":
            guard !labels.isEmpty else {
                throw ValidationError("no tag names: pass --labels or keep the labels.json that reins train writes")
            }
            guard
                case let .bertTokenClassification(model) = try PretrainedModel.load(
                    directory: dir, architecture: "BertForTokenClassification",
                    newlyInitialized: ["classifier."], configOverrides: ["num_labels": labels.count])
            else { throw ValidationError("not a BERT model") }
            try prepare(model, labels.count)
            let read = { (url: URL) in try DataFiles.taggedWords(url, tags: labels) }
            return try TokenClassificationTask(
                model: model, tokenizer: try WordPieceTokenizer(tokenizerFile: dir), tags: labels.count,
                tagNames: labels,
                train: try train.map(read) ?? [], evaluation: try evaluation.map(read) ?? [], maxLength: maxLength)
        case "qa":
            guard
                case let .bertQuestionAnswering(model) = try PretrainedModel.load(
                    directory: dir, architecture: "BertForQuestionAnswering",
                    newlyInitialized: ["qa_outputs."])
            else { throw ValidationError("not a BERT model") }
            try prepare(model, nil)
            return try QuestionAnsweringTask(
                model: model, tokenizer: try WordPieceTokenizer(tokenizerFile: dir),
                train: try train.map(DataFiles.questionAnswers) ?? [],
                evaluation: try evaluation.map(DataFiles.questionAnswers) ?? [], maxLength: maxLength)
        case "mlm":
            guard
                case let .bertMaskedLM(model) = try PretrainedModel.load(
                    directory: dir, architecture: "BertForMaskedLM",
                    newlyInitialized: ["cls."])
            else { throw ValidationError("not a BERT model") }
            try prepare(model, nil)
            let texts = { (url: URL) throws -> [String] in try DataFiles.records(url).map { try $0.require(textField) }
            }
            return try MaskedLMTask(
                model: model, tokenizer: try WordPieceTokenizer(tokenizerFile: dir), train: try train.map(texts) ?? [],
                evaluation: try evaluation.map(texts) ?? [], maxLength: maxLength)
        case "causal-lm":
            let (model, tokenizer) = try languageModel()
            try prepare(model, nil)
            let positions = model.positionLimit ?? maxLength
            let read = { (url: URL) in try sequences(url, tokenizer: tokenizer, positions: positions) }
            let task = try CausalLMTask(
                model: model, train: try train.map(read) ?? [], evaluation: try evaluation.map(read) ?? [],
                padID: Int32(model.padTokenID ?? 0))
            task.decode = { tokenizer.decode($0) }  // prompt/completion evaluation data is also scored by BLEU
            return task
        case "instruction":
            let model = try loadCausalLanguageModel(dir, dequantized: exact)
            let format = try naming(dir.appendingPathComponent("tokenizer_config.json").path) {
                try ChatFormat(directory: dir)
            }
            try prepare(model, nil)
            let limit = min(maxLength, model.positionLimit ?? maxLength)
            let read = { (url: URL) throws -> [TokenSequence] in
                try DataFiles.conversations(url).enumerated().map { k, conversation in
                    try naming("\(url.path): conversation \(k + 1)") {
                        try format.trainingSequence(conversation, maxLength: limit)
                    }
                }
            }
            let task = try CausalLMTask(
                model: model, train: try train.map(read) ?? [], evaluation: try evaluation.map(read) ?? [],
                padID: Int32(model.padTokenID ?? 0))
            task.stopTokens = format.stopTokens
            return task
        default:
            throw ValidationError(
                "--task must be classification, token-classification, qa, mlm, causal-lm or instruction")
        }
    }

    /// A sequence classifier with its head sized for `labels` — BERT (pooler or mean pooling) or GPT-2 (the last real
    /// token; `pad_token_id` defaults to `<|endoftext|>`, as is usual for GPT-2) — how to encode a text (and its pair)
    /// for it, and the padding id.
    func classifier(labels: Int) throws -> (
        model: any SequenceClassifier & TaskHeadModel,
        encode: (String, String?) throws -> (ids: [Int32], types: [Int32]), padID: Int32
    ) {
        let dir = URL(fileURLWithPath: model)
        if (try Checkpoint.modelConfig(dir))["model_type"] as? String == "gpt2" {
            guard let file = tokenizerFile(in: dir), case let .bpe(bpe) = try AnyTokenizer(file: file) else {
                throw ValidationError("no byte-level BPE tokenizer (tokenizer.json or vocab.json) in \(dir.path)")
            }
            let config = try Checkpoint.modelConfig(dir)
            let pad = (config["pad_token_id"] as? Int) ?? bpe.endOfText.map(Int.init) ?? 0
            guard
                case let .gpt2SequenceClassification(m) = try PretrainedModel.load(
                    directory: dir, architecture: "GPT2ForSequenceClassification", newlyInitialized: ["score."],
                    configOverrides: ["num_labels": labels, "pad_token_id": pad])
            else { throw ValidationError("not a GPT-2 model") }
            let limit = min(maxLength, m.transformer.config.positions)
            // GPT-2 has no pair encoding (a pair is the two texts joined by a space) and takes no token types.
            return (
                m, { text, pair in (Array(bpe.encode(pair.map { text + " " + $0 } ?? text).prefix(limit)), []) },
                Int32(pad)
            )
        }
        let pool = try pooling.map { p -> Pooling in
            guard let v = Pooling(rawValue: p) else { throw ValidationError("--pooling must be cls or mean") }
            return v
        }
        let m = try BertForSequenceClassification.pretrained(dir, labels: labels, pooling: pool)
        let tokenizer = try WordPieceTokenizer(tokenizerFile: dir)
        let options = EncodingOptions(maxLength: min(maxLength, m.bert.config.positions), padding: .none)
        return (
            m,
            { text, pair in
                let e = try tokenizer.encode(text, pair: pair, options: options)
                return (e.ids, e.typeIDs)
            }, tokenizer.padID
        )
    }

    func languageModel() throws -> (any CausalLanguageModel, AnyTokenizer) {
        let dir = URL(fileURLWithPath: model)
        let m = try loadCausalLanguageModel(dir, dequantized: exact)
        guard let file = tokenizerFile(in: dir) else {
            throw ValidationError("no tokenizer.json or vocab.json in \(dir.path)")
        }
        return (m, try AnyTokenizer(file: file))
    }

    func sequences(_ url: URL, tokenizer: AnyTokenizer, positions: Int) throws -> [TokenSequence] {
        try DataFiles.languageModeling(url).map { p, c in
            let prompt = p.isEmpty ? [] : try tokenizer.encode(p)
            let ids = Array((prompt + (try tokenizer.encode(c))).prefix(min(maxLength, positions)))
            return TokenSequence(ids: ids, promptLength: min(prompt.count, max(ids.count - 1, 0)))
        }
    }
}

/// Copies a model or tokenizer directory's tokenizer files (those present) into `destination`, replacing older copies.
func copyTokenizerFiles(from source: URL, to destination: URL) throws {
    for name in [
        "vocab.txt", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "chat_template.jinja",
    ] {
        let src = source.appendingPathComponent(name), dst = destination.appendingPathComponent(name)
        guard FileManager.default.fileExists(atPath: src.path) else { continue }
        try? FileManager.default.removeItem(at: dst)
        try FileManager.default.copyItem(at: src, to: dst)
    }
}

extension WordPieceTokenizer {
    /// The tokenizer of a model directory: tokenizer.json if present, else vocab.txt.
    convenience init(tokenizerFile dir: URL) throws {
        let json = dir.appendingPathComponent("tokenizer.json")
        let vocabulary = dir.appendingPathComponent("vocab.txt")
        let useJSON = FileManager.default.fileExists(atPath: json.path)
        let path = useJSON ? json.path : vocabulary.path
        do {
            if useJSON { try self.init(tokenizerJSON: path) } else { try self.init(vocabularyFile: path) }
        } catch {
            // Name the file, as every failure of the tool does.
            throw "\(error)".contains(path) ? error : FileProblem(description: "\(path): \(error)")
        }
    }
}

/// `reins train`: fine-tune fully or train an adapter, with evaluation, the best result kept, and resumable checkpoints.
struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract:
            "Train a task on a pretrained model: full fine-tuning or an adapter (bitfit, houlsby, pfeiffer, adapterbias, parallel, prefix, prompt, lora, lora+bitfit, ia3, loha).",
        discussion:
            "Writes OUTPUT/best (the best adapter with its head, or the model's trained tensors), OUTPUT/checkpoint (resume with --resume), OUTPUT/metrics.jsonl, OUTPUT/curves.svg and OUTPUT/labels.json."
    )

    @OptionGroup var taskOptions: TaskOptions
    @Option(
        help:
            "full, bitfit, houlsby, pfeiffer, adapterbias, parallel, prefix, prompt, lora, lora+bitfit, ia3 or loha (PEFT's default targets; loha takes --rank, --alpha and --targets as LoRA does)."
    ) var method = "lora"
    @Option(help: "Training data (.jsonl or .csv).") var train: String
    @Option(help: "Evaluation data (.jsonl or .csv).") var eval: String?
    @Option(help: "Optimizer updates (default: one epoch).") var steps: Int?
    @Option(help: "Epochs, when --steps is not given.") var epochs = 1
    @Option(help: "Examples per micro-batch.") var batchSize = 16
    @Option(help: "Micro-batches per update.") var accumulation = 1
    @Option(name: .customLong("lr"), help: "Learning rate.") var learningRate: Float = 1e-3
    @Option(help: "adamw or sgd.") var optimizer = "adamw"
    @Option(help: "SGD momentum.") var momentum: Float = 0.9
    @Option(help: "Weight decay (not applied to biases and norms).") var weightDecay: Float = 0.01
    @Option(help: "constant, linear or cosine.") var schedule = "linear"
    @Option(help: "Warm-up updates.") var warmup = 0
    @Option(help: "Global gradient-norm clipping (0: off).") var clip: Float = 1
    @Option(help: "Evaluate every this many updates.") var evalEvery: Int?
    @Option(help: "Stop after this many evaluations without improvement.") var patience: Int?
    @Option(help: "Write a resumable checkpoint every this many updates (default: at evaluations and the end).")
    var checkpointEvery: Int?
    @Flag(help: "Batch examples of similar length together (less padding; each epoch still sees every example once).")
    var bucketByLength = false
    @Option(help: "LoRA rank.") var rank = 8
    @Option(help: "LoRA alpha.") var alpha: Float = 16
    @Option(help: "LoRA dropout.") var loraDropout: Float = 0
    @Flag(help: "DoRA: LoRA with a learned magnitude per output (PEFT's use_dora).") var dora = false
    @Option(help: "LoRA target layers, comma-separated (default: query,value for BERT, c_attn for GPT-2).") var targets:
        String?
    @Option(help: "Bottleneck size of Houlsby, Pfeiffer and parallel adapters.") var bottleneck = 64
    @Option(help: "Virtual tokens of prefix and prompt tuning.") var prefixLength = 16
    @Option(help: "Seed for data order, dropout and new weights.") var seed: UInt64 = 0
    @Flag(
        help:
            "Llama-family models: keep only each layer's input and compute the layer again in backward (one layer's activations in memory instead of all; about a third more time)."
    ) var gradientCheckpointing = false
    @Option(help: "Output directory.") var output: String
    @Flag(help: "Continue from OUTPUT/checkpoint.") var resume = false
    @Flag(
        help:
            "Data-parallel training over MPI: run as `mpirun -np N reins train ... --distributed`; each process takes its share of every update's N × batch-size × accumulation examples, gradients are averaged across processes, and process 0 writes the output."
    ) var distributed = false

    func validate() throws {
        for (name, value) in [
            ("--batch-size", batchSize), ("--accumulation", accumulation), ("--epochs", epochs), ("--rank", rank),
            ("--bottleneck", bottleneck), ("--prefix-length", prefixLength),
        ] where value <= 0 {
            throw ValidationError("\(name) must be positive, got \(value)")
        }
        for (name, value) in [
            ("--steps", steps), ("--eval-every", evalEvery), ("--patience", patience), ("--checkpoint-every", checkpointEvery),
        ] {
            if let value, value <= 0 { throw ValidationError("\(name) must be positive, got \(value)") }
        }
        guard !batchSize.multipliedReportingOverflow(by: accumulation).overflow else {
            throw ValidationError("--batch-size \(batchSize) and --accumulation \(accumulation) are too large to count")
        }
        guard warmup >= 0 else { throw ValidationError("--warmup must not be negative, got \(warmup)") }
        guard ["adamw", "sgd"].contains(optimizer) else {
            throw ValidationError("--optimizer must be adamw or sgd, got '\(optimizer)'")
        }
        for (name, value) in [
            ("--lr", learningRate), ("--weight-decay", weightDecay), ("--clip", clip), ("--momentum", momentum),
            ("--alpha", alpha),
        ]
        where !(value.isFinite && value >= 0) {
            throw ValidationError("\(name) must be a finite non-negative number, got \(value)")
        }
        guard (0..<1).contains(loraDropout) else {
            throw ValidationError("--lora-dropout must be in [0, 1), got \(loraDropout)")
        }
    }

    func adapterMethod(defaultTargets: [String]) throws -> AdapterMethod {
        let lora = LoRAConfig(
            rank: rank, alpha: alpha,
            targets: targets.map { $0.split(separator: ",").map(String.init) } ?? defaultTargets, dropout: loraDropout,
            dora: dora)
        switch method.lowercased() {
        case "full": return .full
        case "bitfit": return .bitFit
        case "houlsby": return .houlsby(bottleneck: bottleneck)
        case "pfeiffer": return .pfeiffer(bottleneck: bottleneck)
        case "adapterbias": return .adapterBias
        case "parallel": return .parallel(bottleneck: bottleneck)
        case "prefix": return .prefix(length: prefixLength)
        case "lora": return .lora(lora)
        case "lora+bitfit": return .loraBitFit(lora)
        case "ia3": return .ia3()
        case "loha": return .loha(LoHaConfig(rank: rank, alpha: alpha, targets: lora.targets))
        case "prompt": return .promptTuning(length: prefixLength)
        default: throw ValidationError("unknown method '\(method)'")
        }
    }

    func run() throws {
        guard distributed else { return try train(group: nil) }
        let group = try MPIGroup.start()
        do {
            try train(group: group)
        } catch {
            // The other processes would wait for this one in their next collective: end the job.
            if group.size > 1 { group.abort("\(error)") }
            throw error
        }
        try group.finish()
    }

    func train(group: MPIGroup?) throws {
        let writes = (group?.rank ?? 0) == 0
        let processes = group?.size ?? 1
        let out = URL(fileURLWithPath: output)
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        let name = method.lowercased()
        let trainURL = URL(fileURLWithPath: train)
        let labels = try taskOptions.labelNames(foundIn: trainURL)
        var adapterMethod = AdapterMethod.full
        let task = try taskOptions.makeTask(
            train: trainURL, evaluation: eval.map(URL.init(fileURLWithPath:)), labels: labels
        ) { model, count in
            // PEFT's default LoRA targets for the model's type (AdapterDefaults); a model without any must name them.
            adapterMethod = try self.adapterMethod(defaultTargets: (try? model.defaultLoRATargets()) ?? [])
            if case .full = adapterMethod, model.holdsQuantizedWeights {
                throw ValidationError(
                    "full fine-tuning trains every weight, and this base's weights are quantized (frozen); add --exact to train on them dequantized to float32, or choose an adapter method"
                )
            }
            try model.addAdapter(name, adapterMethod, labels: count, seed: seed)
            if self.gradientCheckpointing {
                guard let llama = (model as? LlamaForCausalLM)?.model ?? (model as? LlamaForSequenceClassification)?.model
                else { throw ValidationError("--gradient-checkpointing is for Llama-family models") }
                llama.gradientCheckpointing = true
            }
        }
        if writes, !labels.isEmpty {
            try AtomicFile.write(
                try JSONSerialization.data(withJSONObject: labels), to: out.appendingPathComponent("labels.json").path)
        }
        // In checked arithmetic: the three numbers are the user's.
        let (perProcess, o1) = batchSize.multipliedReportingOverflow(by: accumulation)
        let (perUpdate, o3) = perProcess.multipliedReportingOverflow(by: processes)
        let (examples, o2) = epochs.multipliedReportingOverflow(by: task.trainingCount)
        guard !o1, !o2, !o3 else {
            throw ValidationError(
                "--epochs \(epochs), --batch-size \(batchSize), --accumulation \(accumulation) and \(processes) processes are too large to count"
            )
        }
        let updates = steps ?? max(1, examples / perUpdate)
        var options = TrainingOptions(steps: updates, batchSize: batchSize, learningRate: learningRate)
        options.gradientAccumulation = accumulation
        options.optimizer = optimizer == "sgd" ? .sgd(momentum: momentum) : .adamW()  // validate() allows only these two
        options.weightDecay = weightDecay
        guard let kind = TrainingOptions.ScheduleKind(rawValue: schedule) else {
            throw ValidationError("--schedule must be constant, linear or cosine")
        }
        options.schedule = kind
        options.warmupSteps = warmup
        options.clipNorm = clip > 0 ? clip : nil
        options.evaluateEvery = evalEvery
        options.earlyStoppingPatience = patience
        options.checkpointEvery = checkpointEvery
        options.bucketByLength = bucketByLength
        options.seed = seed
        options.outputDirectory = out
        options.adapterName = adapterMethod == .full ? nil : name
        let trainer = try Trainer(task: task, options: options, group: group)
        if resume {
            try trainer.resume(from: out.appendingPathComponent("checkpoint"))
            if writes { print("Resumed at update \(trainer.step) of \(updates)") }
        } else if writes {
            try? FileManager.default.removeItem(at: out.appendingPathComponent("metrics.jsonl"))
        }
        // Progress and results from process 0 only.
        guard writes else { return try trainer.run() }
        let shape =
            processes > 1
            ? "\(perUpdate) (\(processes) processes × \(accumulation) micro-batches × \(batchSize) examples)"
            : "\(perUpdate)"
        print(
            "\(name): \(fmt(task.model.trainableParameterCount)) trainable of \(fmt(task.model.parameterCount)) parameters, \(updates) updates of \(shape)"
        )
        let progress = ProgressLine(label: name, total: updates)
        trainer.onStep = { progress.update($0) }
        try trainer.run()
        progress.finish()
        let history = trainer.history
        let metric = task.primaryMetric.name
        try AtomicFile.write(
            Data(SVGPlot.runs([(name, history)], metric: metric).utf8),
            to: out.appendingPathComponent("curves.svg").path)
        if adapterMethod == .full, trainer.best != nil {
            // Full fine-tuning: make best/ a complete model directory (config and tokenizer beside the weights).
            let base = URL(fileURLWithPath: taskOptions.model), best = out.appendingPathComponent("best")
            var config = try Checkpoint.modelConfig(base)
            if let headed = task.model as? any TaskHeadModel {
                // transformers' label maps, so that pipelines (and reins eval/predict) name the classes.
                let count = headed.heads.current.outputs
                let names = labels.count == count ? labels : (0..<count).map { "LABEL_\($0)" }
                config["num_labels"] = count
                config["id2label"] = Dictionary(
                    uniqueKeysWithValues: names.enumerated().map { (String($0.offset), $0.element) })
                config["label2id"] = Dictionary(
                    uniqueKeysWithValues: names.enumerated().map { ($0.element, $0.offset) })
            }
            // A Llama-family model keeps its checkpoint's own name (Qwen2ForCausalLM, MistralForCausalLM, ...).
            if !(task.model is LlamaForCausalLM) {
                config["architectures"] = [String(describing: type(of: task.model))]
            }
            if let gpt = task.model as? GPT2ForSequenceClassification, let pad = gpt.transformer.config.padTokenID {
                config["pad_token_id"] = pad
            }
            if taskOptions.pooling == "mean" { config["reins_pooling"] = "mean" }
            try AtomicFile.write(
                try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys]),
                to: best.appendingPathComponent("config.json").path)
            try copyTokenizerFiles(from: base, to: best)
        }
        if let best = trainer.best { print("best \(metric) \(best.value) at update \(best.step) -> \(out.path)/best") }
    }
}

/// `reins eval`: the task's metrics for a model (optionally with an adapter) on a data file.
struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract:
            "Score a model or adapter on a data file with its task's metrics (accuracy and macro-F1; exact match and F1; masked-token accuracy and perplexity; perplexity and BLEU)."
    )
    @OptionGroup var taskOptions: TaskOptions
    @Option(help: "An adapter directory (with its head) to apply.") var adapter: String?
    @Option(help: "Data (.jsonl or .csv).") var data: String

    func run() throws {
        let adapterURL = adapter.map(URL.init(fileURLWithPath:))
        let task = try taskOptions.makeTask(
            train: nil, evaluation: URL(fileURLWithPath: data),
            labels: try taskOptions.labelNames(besideAdapter: adapterURL)
        ) { model, _ in
            if let adapterURL { try model.loadAdapter("adapter", from: adapterURL) }
        }
        let json = try JSONSerialization.data(withJSONObject: try task.evaluate(), options: [.sortedKeys])
        print(String(decoding: json, as: UTF8.self))
    }
}

/// `reins predict`: one JSON line per input record — a label and its probability, each word's tag, or an answer span.
struct PredictCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predict",
        abstract:
            "Run a model (plus an optional adapter) on inputs; prints JSON lines: a label for classification, tags for token-classification (field tokens), an answer for qa (fields question, context)."
    )
    @OptionGroup var taskOptions: TaskOptions
    @Option(help: "An adapter directory (with its head) to apply.") var adapter: String?
    @Option(help: "Inputs (.jsonl or .csv).") var input: String

    func emit(_ row: [String: Any]) throws {
        print(String(decoding: try JSONSerialization.data(withJSONObject: row, options: [.sortedKeys]), as: UTF8.self))
    }

    func run() throws {
        let adapterURL = adapter.map(URL.init(fileURLWithPath:))
        let labels = try taskOptions.labelNames(besideAdapter: adapterURL)
        let records = try DataFiles.records(URL(fileURLWithPath: input))
        switch taskOptions.taskKind {
        case "classification":
            let (model, encode, _) = try taskOptions.classifier(labels: max(labels.count, 2))
            if let adapterURL { try model.loadAdapter("adapter", from: adapterURL) }
            for record in records {
                let text = try record.require(taskOptions.textField)
                let e = try encode(text, try taskOptions.pairField.map { try record.require($0) })
                let shape = [1, e.ids.count]
                let types = e.types.isEmpty ? nil : try IntTensor(shape: shape, values: e.types)
                let logits = try Autograd.withoutGradients {
                    try model.logits(IntTensor(shape: shape, values: e.ids), attentionMask: nil, tokenTypeIDs: types)
                }.softmax()
                let best = logits.argmax()[0]
                try emit([
                    "text": text, "label": best < labels.count ? labels[best] : String(best),
                    "probability": Double(logits.scalars[best]),
                ])
            }
        case "token-classification", "qa":
            let task = try taskOptions.makeTask(train: nil, evaluation: nil, labels: labels) { model, _ in
                if let adapterURL { try model.loadAdapter("adapter", from: adapterURL) }
            }
            for record in records {
                if let tagger = task as? TokenClassificationTask {
                    let words = try record.require("tokens").split(separator: " ").map(String.init)
                    let tags = try tagger.tag(words).map { t -> Any in
                        t.map { $0 < labels.count ? labels[$0] : String($0) } ?? NSNull()
                    }
                    try emit(["tokens": words, "tags": tags])
                } else if let reader = task as? QuestionAnsweringTask {
                    let question = try record.require("question"), context = try record.require("context")
                    let found = try reader.answer(question: question, context: context)
                    try emit([
                        "question": question, "answer": found?.text ?? "",
                        "score": found.map { Double($0.score) } ?? NSNull(),
                    ])
                }
            }
        default:
            throw ValidationError(
                "predict supports --task classification, token-classification or qa (use `reins generate` and `reins fill-mask` for text)"
            )
        }
    }
}

/// `reins plot`: one SVG comparing the training and evaluation curves of several runs.
struct PlotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plot",
        abstract: "Compare runs: training loss and an evaluation metric from each RUN/metrics.jsonl, in one SVG.")
    @Argument(help: "Run directories (each with metrics.jsonl) or metrics.jsonl files.") var runs: [String]
    @Option(help: "The evaluation metric to plot.") var metric = "accuracy"
    @Option(help: "The SVG to write.") var output = "runs.svg"

    func run() throws {
        let histories = try runs.map { run -> (name: String, history: [StepRecord]) in
            var url = URL(fileURLWithPath: run)
            if url.pathExtension != "jsonl" { url = url.appendingPathComponent("metrics.jsonl") }
            return (url.deletingLastPathComponent().lastPathComponent, try StepRecord.log(url))
        }
        try AtomicFile.write(Data(SVGPlot.runs(histories, metric: metric).utf8), to: output)
        print("wrote \(output) (\(runs.count) runs)")
    }
}
