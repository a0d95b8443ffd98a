import Dispatch
import Foundation
import Reins
import ReinsDemoData
import ReinsTensor

/// The decoder part of `reins demo`: one frozen, quantized instruction model (SmolLM2-135M-Instruct Q4_1) used as a
/// generalist (zero-shot and few-shot prompts through its chat template) and as specialists (adapters trained on
/// English-to-French dictionary pairs), scored on the same held-out items; then a second task's adapter on the same
/// loaded base, and requests for both tasks answered by switching adapters.
struct DecoderDemo {
    var steps: Int
    var batchSize: Int
    var heldOutCount: Int
    var shots: Int
    var seed: UInt64
    var output: URL
    var modelFile: URL
    var methods: [String] = ["lora", "ia3", "prefix"]
    var secondTask = true

    static let system = "Translate to French."
    static let defineSystem = "Define the word briefly."

    static let everyLinear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    /// The chat for one item: the instruction, optional solved examples as earlier turns, the English.
    typealias Item = FreeDict.TranslationItem

    /// One row of the table.
    struct Row {
        let name: String
        var trainable = 0, fileBytes = 0
        var seconds = 0.0, tokensPerSecond = 0.0
        var outputs: [String] = []
        var bleu = 0.0, charBLEU = 0.0, chrF = 0.0, exact = 0.0
        var history: [StepRecord] = []
    }

    static func messages(_ english: String, examples: [Item] = [], answer: String? = nil, system: String = system)
        -> [ChatTemplate.Message]
    {
        var m = [ChatTemplate.Message(role: "system", content: system)]
        for e in examples {
            m.append(.init(role: "user", content: e.english))
            m.append(.init(role: "assistant", content: e.reference))
        }
        m.append(.init(role: "user", content: english))
        if let answer { m.append(.init(role: "assistant", content: answer)) }
        return m
    }

    /// The model's answers, greedy, batched (left-padded), up to the end of the turn or the first line break.
    static func answer(_ prompts: [[Int32]], model: LlamaForCausalLM, chat: ChatFormat, maxNewTokens: Int = 16)
        throws -> [String]
    {
        var answers: [String] = []
        let pad = chat.stopTokens.min() ?? 0
        for start in stride(from: 0, to: prompts.count, by: 16) {
            let batch = Array(prompts[start..<min(start + 16, prompts.count)])
            let out = try Autograd.withoutGradients {
                try model.generate(
                    prompts: batch,
                    options: GenerationOptions(maxNewTokens: maxNewTokens, stopTokens: chat.stopTokens, padID: pad))
            }
            for (p, o) in zip(batch, out) {
                let new = o.dropFirst(p.count).filter { !chat.stopTokens.contains($0) }
                let text = chat.tokenizer.decode(Array(new))
                answers.append(
                    String(text.split(separator: "\n", omittingEmptySubsequences: true).first ?? "")
                        .trimmingCharacters(in: .whitespaces))
            }
        }
        return answers
    }

    /// Lower case, no surrounding punctuation or quotes, single spaces: how answers are compared for exact match.
    static func normalized(_ s: String) -> String {
        s.lowercased().trimmingCharacters(in: CharacterSet.punctuationCharacters.union(.whitespaces).union(CharacterSet(charactersIn: "\"'«»")))
            .split(separator: " ").joined(separator: " ")
    }

    static func score(_ row: inout Row, items: [Item]) {
        row.bleu = Metrics.bleu(hypotheses: row.outputs, references: [items.map(\.reference)])
        row.charBLEU = Metrics.bleu(hypotheses: row.outputs, references: [items.map(\.reference)], tokenizer: .character)
        row.chrF = Metrics.chrF(hypotheses: row.outputs, references: [items.map(\.reference)])
        row.exact =
            zip(row.outputs, items).map { o, i in i.accepted.map(normalized).contains(normalized(o)) ? 1.0 : 0.0 }
            .reduce(0, +) / Double(max(items.count, 1))
    }

    func run() throws {
        let started = DispatchTime.now().uptimeNanoseconds
        try FileManager.default.createDirectory(at: output, withIntermediateDirectories: true)
        let (train, _, heldAll) = try FreeDict.translationSplit()
        var g = SeededGenerator(seed: seed)
        let held = Array(heldAll.shuffled(using: &g).prefix(heldOutCount))
        print(
            "FreeDict English-French: \(train.count + heldAll.count) usable pairs; \(train.count) for training, \(held.count) held-out items scored"
        )
        guard case let .llamaCausalLM(model) = try PretrainedModel.load(directory: modelFile, quantized: true) else {
            throw ModelError.badInput("\(modelFile.path) is not a causal language model")
        }
        let chat = try ChatFormat(gguf: GGUFFile(path: modelFile.path))
        let quantized = model.namedModules().reduce(0) { n, m in
            n + ((m.module as? Linear)?.quantizedWeight?.elementCount ?? 0) + ((m.module as? Embedding)?.quantizedTable?.elementCount ?? 0)
        }
        print("Base: \(modelFile.lastPathComponent), frozen in its quantized blocks, \(fmt(model.parameterCount + quantized)) parameters\n")

        var rows: [Row] = []
        // The generalist: prompts only.
        let solved = Array(train.shuffled(using: &g).prefix(shots))
        for (name, examples) in [("zero-shot", [Item]()), ("\(shots)-shot", solved)] {
            var row = Row(name: name)
            let t0 = DispatchTime.now().uptimeNanoseconds
            row.outputs = try Self.answer(
                try held.map { try chat.prompt(Self.messages($0.english, examples: examples)) }, model: model, chat: chat)
            row.seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            Self.score(&row, items: held)
            print(String(format: "%@: BLEU %.1f, character BLEU %.1f, chrF %.1f, exact %@ (%.0f s to answer)", name, row.bleu, row.charBLEU, row.chrF, pct(row.exact), row.seconds))
            rows.append(row)
        }

        // The specialists: adapters over the same frozen base, the same examples and steps.
        let sequences = try train.map { try chat.trainingSequence(Self.messages($0.english, answer: $0.reference)) }
        // The prefix starts as the few-shot prompt's solved examples (the keys and values the base computes for them):
        // training begins where prompting ends instead of from noise (Li & Liang's initialization from real words).
        var turns: [ChatTemplate.Message] = [.init(role: "system", content: Self.system)]
        for e in solved { turns += [.init(role: "user", content: e.english), .init(role: "assistant", content: e.reference)] }
        let prefixStart = try chat.prompt(turns, addGenerationPrompt: false).map(Int.init)
        let recipes: [(String, AdapterMethod, Float)] = [
            ("lora", .lora(LoRAConfig(rank: 16, alpha: 32, targets: Self.everyLinear)), 2e-3),
            ("dora", .lora(LoRAConfig(rank: 16, alpha: 32, targets: Self.everyLinear, dora: true)), 1e-3),
            ("ia3", .ia3(), 3e-2),
            ("prefix", .prefix(length: prefixStart.count), 1e-2),
        ]
        for (name, method, learningRate) in recipes where methods.contains(name) {
            var row = Row(name: name)
            row.trainable = try model.addAdapter(name, method, seed: seed)
            if name == "prefix" { try model.initializePrefix(name, fromTokens: prefixStart) }
            let t0 = DispatchTime.now().uptimeNanoseconds
            row.history = try trainAdapter(name, on: sequences, model: model, chat: chat, steps: steps, learningRate: learningRate)
            row.seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            row.tokensPerSecond = row.history.reduce(0.0) { $0 + $1.tokensPerSecond } / Double(max(row.history.count, 1))
            row.fileBytes = directorySize(output.appendingPathComponent("adapters/\(name)"))
            row.outputs = try Self.answer(try held.map { try chat.prompt(Self.messages($0.english)) }, model: model, chat: chat)
            Self.score(&row, items: held)
            print(String(format: "%@: BLEU %.1f, character BLEU %.1f, chrF %.1f, exact %@", name, row.bleu, row.charBLEU, row.chrF, pct(row.exact)))
            rows.append(row)
            model.activateAdapter(nil)
        }

        // The table, the outputs (for checking the metrics against sacreBLEU), the plot, a side-by-side.
        var table = "| method | trainable parameters | adapter file | training time | tokens/s | BLEU | character BLEU | chrF | exact match |\n"
        table += "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        for r in rows {
            let trained = r.trainable > 0
            table +=
                "| \(r.name) | \(trained ? fmt(r.trainable) : "0") | \(trained ? bytes(r.fileBytes) : "-") | \(trained ? String(format: "%.0f s", r.seconds) : "-") | \(trained ? String(format: "%.0f", r.tokensPerSecond) : "-") | \(String(format: "%.1f", r.bleu)) | \(String(format: "%.1f", r.charBLEU)) | \(String(format: "%.1f", r.chrF)) | \(pct(r.exact)) |\n"
        }
        let best = rows.filter { $0.trainable > 0 }.max { ($0.exact, $0.chrF) < ($1.exact, $1.chrF) }
        if let best, let few = rows.first(where: { $0.name.hasSuffix("-shot") && $0.name != "zero-shot" }) {
            table += String(
                format: "\nBest adapter (%@) against %@ prompting: BLEU %+.1f, character BLEU %+.1f, chrF %+.1f, exact match %+.1f points.\n",
                best.name, few.name, best.bleu - few.bleu, best.charBLEU - few.charBLEU, best.chrF - few.chrF,
                100 * (best.exact - few.exact))
        }
        table += "\n\(held.count) held-out items; \(steps) updates × \(batchSize) examples per adapter, seed \(seed). BLEU and chrF as sacreBLEU computes them (BLEU: tokenizer 13a, and char, since a one-word answer has no word 4-grams: 13a BLEU is near 0 for any concise output); exact match: the answer (lower-cased, without surrounding punctuation) is one of the dictionary's translations.\n"
        print("\n" + table)
        try AtomicFile.write(Data(table.utf8), to: output.appendingPathComponent("results.md").path)
        let outputs: [String: Any] = [
            "references": held.map(\.reference), "english": held.map(\.english),
            "outputs": Dictionary(uniqueKeysWithValues: rows.map { ($0.name, $0.outputs) }),
        ]
        try AtomicFile.write(
            try JSONSerialization.data(withJSONObject: outputs, options: [.prettyPrinted, .sortedKeys]),
            to: output.appendingPathComponent("outputs.json").path)
        let svg = SVGPlot.runs(rows.filter { !$0.history.isEmpty }.map { ($0.name, $0.history) }, metric: "loss")
        try AtomicFile.write(Data(svg.utf8), to: output.appendingPathComponent("training-loss.svg").path)
        print("Side by side (held-out):")
        for i in 0..<min(6, held.count) {
            print("  \(held[i].english) -> \(held[i].reference)")
            print("    " + rows.map { "\($0.name): \($0.outputs[i])" }.joined(separator: " | "))
        }

        // A second task on the same loaded base, and requests for both answered by switching adapters.
        if secondTask, rows.contains(where: { $0.name == "lora" }) { try secondTask(model: model, chat: chat, translations: held) }
        print(String(format: "\nDecoder demo finished in %.0f s.", Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9))
    }

    /// English word to a short WordNet definition: a LoRA adapter trained on the same loaded base, then a mixed
    /// batch of held-out requests, each answered with its task's adapter.
    func secondTask(model: LlamaForCausalLM, chat: ChatFormat, translations: [Item]) throws {
        let glosses = try WordNet.glosses().filter {
            !$0.lemma.contains(" ") && $0.definition.split(separator: " ").count <= 6 && $0.partOfSpeech == "n"
        }
        var g = SeededGenerator(seed: seed &+ 1)
        let train = glosses.filter { !WordNet.isDevelopment($0) }.shuffled(using: &g)
        let held = glosses.filter { WordNet.isDevelopment($0) }.shuffled(using: &g).prefix(4)
        let sequences = try train.prefix(4000).map {
            try chat.trainingSequence(Self.messages($0.lemma, answer: $0.definition, system: Self.defineSystem))
        }
        // A lighter recipe than the translation adapters' (attention only, half the updates): the point is the switching.
        _ = try model.addAdapter("define", .lora(LoRAConfig(rank: 8, alpha: 16, targets: ["q_proj", "k_proj", "v_proj", "o_proj"])), seed: seed)
        _ = try trainAdapter("define", on: sequences, model: model, chat: chat, steps: max(1, steps / 2), learningRate: 2e-3)

        print("\nMany tasks, one base: held-out requests for both tasks in one batch, each row through its task's adapter on the one loaded model:")
        var requests: [(adapter: String, text: String, expected: String)] = []
        for (t, d) in zip(translations.suffix(4), held) {
            requests.append(("lora", t.english, t.reference))
            requests.append(("define", d.lemma, d.definition))
        }
        let prompts = try requests.map {
            try chat.prompt(Self.messages($0.text, system: $0.adapter == "define" ? Self.defineSystem : Self.system))
        }
        let answers = try model.withAdapters(perRow: requests.map(\.adapter)) {
            try Self.answer(prompts, model: model, chat: chat, maxNewTokens: 24)
        }
        for (r, answer) in zip(requests, answers) {
            print("  [\(r.adapter)] \(r.text) -> \(answer)   (reference: \(r.expected))")
        }
        model.activateAdapter(nil)
    }

    /// Trains the active adapter `name` (AdamW, 10% warm-up, the demo's seed and batch size) with a progress line,
    /// saves it under `adapters/name`, and returns the run's history.
    func trainAdapter(
        _ name: String, on sequences: [TokenSequence], model: LlamaForCausalLM, chat: ChatFormat, steps: Int,
        learningRate: Float
    ) throws -> [StepRecord] {
        let task = try CausalLMTask(model: model, train: sequences, evaluation: [], padID: chat.stopTokens.min() ?? 0)
        var options = TrainingOptions(steps: steps, batchSize: batchSize, learningRate: learningRate)
        options.warmupSteps = steps / 10
        options.seed = seed
        options.adapterName = name
        let trainer = try Trainer(task: task, options: options)
        let progress = ProgressLine(label: name, total: steps)
        trainer.onStep = { progress.update($0) }
        try trainer.run()
        progress.finish()
        let dir = output.appendingPathComponent("adapters/\(name)")
        try? FileManager.default.removeItem(at: dir)
        try model.saveAdapter(name, to: dir)
        return trainer.history
    }
}
