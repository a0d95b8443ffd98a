import ArgumentParser
import Foundation
import Reins
import ReinsTensor

/// `reins tokenizer train`: learn a byte-level BPE vocabulary from a text file.
struct TokenizerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenizer", abstract: "Tokenizer tools.", subcommands: [TokenizerTrainCommand.self])
}

struct TokenizerTrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train", abstract: "Learn a byte-level BPE tokenizer (vocab.json + merges.txt) from a text file.")
    @Argument(help: "A UTF-8 text file.") var text: String
    @Option(help: "Vocabulary size, special tokens included.") var vocabularySize = 2000
    @Option(help: "Stop merging pairs rarer than this.") var minimumFrequency = 2
    @Option(help: "Output directory.") var output: String

    func validate() throws {
        guard vocabularySize > 0, minimumFrequency > 0 else {
            throw ValidationError(
                "--vocabulary-size and --minimum-frequency must be positive, got \(vocabularySize) and \(minimumFrequency)"
            )
        }
    }

    func run() throws {
        guard let data = FileBytes.contents(text) else { throw ValidationError("cannot read \(text)") }
        let learned = try BPETokenizer.learn(
            from: String(decoding: data, as: UTF8.self), vocabularySize: vocabularySize,
            minimumFrequency: minimumFrequency)
        let dir = URL(fileURLWithPath: output)
        try BPETokenizer.save(learned, to: dir)
        let tokenizer = try BPETokenizer(
            vocabularyFile: dir.appendingPathComponent("vocab.json").path,
            mergesFile: dir.appendingPathComponent("merges.txt").path)
        let sample = String(String(decoding: data, as: UTF8.self).prefix(200))
        let ids = tokenizer.encode(sample)
        print("\(learned.tokens.count) tokens (\(learned.merges.count) merges) -> \(output)/vocab.json, merges.txt")
        print(
            "sample: \(sample.count) characters -> \(ids.count) tokens; round trip \(tokenizer.decode(ids) == sample ? "exact" : "DIFFERS")"
        )
    }
}

/// `reins pretrain`: a small GPT-2 trained from scratch on a text file.
struct PretrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pretrain",
        abstract:
            "Pretrain a small GPT-2 from scratch on a text file (next-token prediction); saves a Hugging Face model directory.",
        discussion:
            "Without --tokenizer, a byte-level BPE tokenizer is learned from the text first (--vocabulary-size)."
    )
    @Argument(help: "A UTF-8 text file.") var text: String
    @Option(help: "A directory with vocab.json + merges.txt or tokenizer.json (default: learn one).") var tokenizer:
        String?
    @Option(help: "Vocabulary size when learning the tokenizer.") var vocabularySize = 2000
    @Option(help: "Layers.") var layers = 4
    @Option(help: "Width.") var hidden = 128
    @Option(help: "Attention heads.") var heads = 4
    @Option(help: "Context length (tokens per training sequence).") var context = 128
    @Option(help: "Optimizer updates.") var steps = 500
    @Option(help: "Sequences per update.") var batchSize = 16
    @Option(name: .customLong("lr"), help: "Peak learning rate (cosine schedule after 5% warm-up).") var learningRate:
        Float = 3e-3
    @Option(help: "Seed for weights, data order and dropout.") var seed: UInt64 = 0
    @Option(help: "Output directory.") var output: String

    func validate() throws {
        for (name, value) in [
            ("--vocabulary-size", vocabularySize), ("--hidden", hidden), ("--heads", heads), ("--steps", steps),
            ("--batch-size", batchSize),
        ] where value <= 0 {
            throw ValidationError("\(name) must be positive, got \(value)")
        }
        guard layers >= 0 else { throw ValidationError("--layers must not be negative, got \(layers)") }
        guard context >= 2 else { throw ValidationError("--context must be at least 2 tokens, got \(context)") }
        guard learningRate.isFinite, learningRate >= 0 else {
            throw ValidationError("--lr must be a finite non-negative number, got \(learningRate)")
        }
    }

    func run() throws {
        guard let data = FileBytes.contents(text) else { throw ValidationError("cannot read \(text)") }
        let corpus = String(decoding: data, as: UTF8.self)
        let out = URL(fileURLWithPath: output)
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        if let tokenizer {
            try copyTokenizerFiles(from: URL(fileURLWithPath: tokenizer), to: out)
        } else {
            try BPETokenizer.save(try BPETokenizer.learn(from: corpus, vocabularySize: vocabularySize), to: out)
        }
        let bpe =
            try FileManager.default.fileExists(atPath: out.appendingPathComponent("tokenizer.json").path)
            ? BPETokenizer(tokenizerJSON: out.appendingPathComponent("tokenizer.json").path)
            : BPETokenizer(
                vocabularyFile: out.appendingPathComponent("vocab.json").path,
                mergesFile: out.appendingPathComponent("merges.txt").path)
        let ids = bpe.encode(corpus)
        guard ids.count > context + 1 else {
            throw ValidationError("the text has \(ids.count) tokens, fewer than one context of \(context)")
        }
        // Non-overlapping windows; the last 5% are held out for perplexity.
        let windows = stride(from: 0, to: ids.count - context, by: context).map {
            TokenSequence(ids: Array(ids[$0..<($0 + context)]))
        }
        let held = max(1, windows.count / 20)
        let json: [String: Any] = [
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": bpe.tokens.count,
            "n_positions": context,
            "n_embd": hidden, "n_layer": layers, "n_head": heads, "bos_token_id": Int(bpe.endOfText ?? 0),
            "eos_token_id": Int(bpe.endOfText ?? 0), "activation_function": "gelu_new",
        ]
        let model = try GPT2LMHeadModel(try GPT2Config(json: json), seed: seed)
        let task = try CausalLMTask(
            model: model, train: Array(windows.dropLast(held)), evaluation: Array(windows.suffix(held)), padID: 0)
        var options = TrainingOptions(steps: steps, batchSize: batchSize, learningRate: learningRate)
        options.schedule = .cosine
        options.warmupSteps = steps / 20
        options.weightDecay = 0.1
        options.seed = seed
        options.evaluateEvery = max(1, steps / 5)
        options.outputDirectory = out.appendingPathComponent("run")
        print(
            "GPT-2 \(layers)×\(hidden), \(fmt(model.parameterCount)) parameters; \(ids.count) tokens in \(windows.count) windows of \(context)"
        )
        let trainer = try Trainer(task: task, options: options)
        let progress = ProgressLine(label: "pretrain", total: steps)
        trainer.onStep = { progress.update($0) }
        try trainer.run()
        progress.finish()
        try model.save(to: out, config: json)
        // A sample that fits the context, however short it is (8 prompt tokens and 40 new ones when there is room).
        let prompt = Array(ids.prefix(min(8, context - 1)))
        let sample = try model.generate(
            prompts: [prompt], options: GenerationOptions(maxNewTokens: min(40, context - prompt.count)))[0]
        print("saved \(out.path) (config.json, model.safetensors, vocab.json, merges.txt)")
        print("sample: \(bpe.decode(sample))")
    }
}
