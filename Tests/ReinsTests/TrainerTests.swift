import Foundation
import Reins
import ReinsTensor
import ReinsTestSupport
import Testing

/// The training loop's guarantees: schedules as transformers computes them, resume bit-identity, gradient
/// accumulation, seeded dropout, the NaN guard and clear errors.
struct TrainerTests {
    @Test func schedulesMatchTransformers() throws {
        let json =
            try JSONSerialization.jsonObject(
                with: Data(contentsOf: Fixtures.directory.appendingPathComponent("metrics/expected.json")))
            as! [String: Any]
        let expected = json["schedules"] as! [String: [Double]]
        let schedules: [String: LearningRateSchedule] = [
            "constant": .constant(warmup: 3), "linear": .linear(warmup: 3, total: 11),
            "cosine": .cosine(warmup: 3, total: 11),
        ]
        for (name, schedule) in schedules {
            expectClose(
                (0..<13).map { schedule.factor(step: $0) }, expected[name]!.map(Float.init), atol: 1e-7, rtol: 0,
                "\(name) schedule")
        }
    }

    /// The fixture BERT classifier with its weights, rebuilt with `dropout` on everywhere (the fixture was saved with 0).
    static func bertWithDropout(_ dropout: Double) throws -> BertForSequenceClassification {
        let model = try BottleneckAdapterTests().bert()
        let json: [String: Any] = try Checkpoint.readJSON(
            Fixtures.model("bert-cls").appendingPathComponent("config.json")
        )
        .merging(["hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout]) { _, b in b }
        let dropped = try BertForSequenceClassification(try BertConfig(json: json))
        for ((_, p), (_, q)) in zip(dropped.namedParameters(), model.namedParameters()) { p.value = q.value.detached() }
        return dropped
    }

    /// Classifying the numbers 0..<examples (as token sequences of 4-8 ids) by their remainder mod 3; the first
    /// `evaluated` are the evaluation data.
    static func numberTask(_ model: BertForSequenceClassification, examples: Int, evaluated: Int) throws
        -> SequenceClassificationTask
    {
        let data = (0..<examples).map { LabeledText(text: String($0), label: $0 % 3) }
        return try SequenceClassificationTask(
            model: model, labels: 3, train: data, evaluation: Array(data.prefix(evaluated)), padID: 0
        ) { text, _ in
            let i = Int(text)!
            return ((0..<(4 + i % 5)).map { Int32(2 + (i * 7 + $0 * 3) % 90) }, [Int32](repeating: 0, count: 4 + i % 5))
        }
    }

    /// A small BERT classification run with dropout on (the fixture config with dropout 0.1), LoRA + head.
    func run(
        steps: Int, stopAt: Int? = nil, resumeFrom: URL? = nil, output: URL?, accumulation: Int = 1, batch: Int = 4,
        dropout: Double = 0.1,
        prepare: (Trainer) -> Void = { _ in }
    ) throws -> (Trainer, [Float]) {
        let dropped = try Self.bertWithDropout(dropout)
        try dropped.addAdapter(
            "task", .lora(LoRAConfig(rank: 2, alpha: 4, targets: ["query", "value"], dropout: Float(dropout) * 2)),
            labels: 3, seed: 5)
        let task = try Self.numberTask(dropped, examples: 10, evaluated: 4)
        var options = TrainingOptions(steps: steps, batchSize: batch, learningRate: 1e-2)
        options.gradientAccumulation = accumulation
        options.warmupSteps = 2
        options.seed = 11
        options.evaluateEvery = 3
        options.outputDirectory = output
        options.checkpointEvery = 1
        options.adapterName = "task"
        let trainer = try Trainer(task: task, options: options)
        if let resumeFrom { try trainer.resume(from: resumeFrom) }
        if let stopAt { trainer.shouldStop = { $0.step == stopAt } }
        prepare(trainer)
        try trainer.run()
        return (trainer, dropped.trainableParameters.flatMap(\.value.scalars))
    }

    @Test func resumedRunEndsBitIdentical() throws {
        // Other tests run parallel regions meanwhile, which change OpenBLAS's thread count (and so its rounding) under
        // this one; a training process does not. Holding it to one thread gives every run here the same GEMMs.
        let (whole, final) = try Parallel.withSingleThreadedBLAS { try run(steps: 8, output: nil) }
        let dir = try temporaryDirectory()
        let (stopped, _) = try Parallel.withSingleThreadedBLAS { try run(steps: 8, stopAt: 5, output: dir) }
        #expect(stopped.step == 5)
        let (resumed, resumedFinal) = try Parallel.withSingleThreadedBLAS {
            try run(steps: 8, resumeFrom: dir.appendingPathComponent("checkpoint"), output: nil)
        }
        #expect(resumed.step == 8)
        #expect(
            resumedFinal.count == final.count && zip(resumedFinal, final).allSatisfy { $0.bitPattern == $1.bitPattern },
            "parameters after a stop at 5 and a resume differ from an uninterrupted run")
        #expect(Array(whole.history.suffix(3)).map(\.loss) == resumed.history.map(\.loss))
        // The best evaluation so far survives the stop exactly (it decides later "best" checkpoints).
        #expect(
            whole.best != nil && resumed.best?.step == whole.best?.step
                && resumed.best?.value.bitPattern == whole.best?.value.bitPattern)
    }

    @Test func bucketedEpochsVisitEveryExampleInBatchesOfSimilarLength() {
        let count = 1000, size = 8
        var g = SeededGenerator(seed: 3)
        let lengths = (0..<count).map { _ in 5 + Int(g.next() % 36) }
        let plain = Trainer.epochOrder(count: count, seed: 7, epoch: 2, batchSize: size)
        let bucketed = Trainer.epochOrder(count: count, seed: 7, epoch: 2, batchSize: size, lengths: lengths)
        #expect(plain.sorted() == Array(0..<count) && bucketed.sorted() == Array(0..<count), "a permutation each")
        #expect(bucketed == Trainer.epochOrder(count: count, seed: 7, epoch: 2, batchSize: size, lengths: lengths))
        #expect(bucketed != Trainer.epochOrder(count: count, seed: 7, epoch: 3, batchSize: size, lengths: lengths))
        func padded(_ order: [Int]) -> Int {
            stride(from: 0, to: count, by: size).map { s in order[s..<min(s + size, count)].map { lengths[$0] }.max()! * min(size, count - s) }
                .reduce(0, +)
        }
        let real = lengths.reduce(0, +)
        // Lengths 5...40 at random: padding to the longest of 8 costs ~60% extra; batches of similar length ~1%.
        #expect(padded(bucketed) < real + real / 20, "bucketed \(padded(bucketed)) for \(real) real tokens")
        #expect(padded(plain) > real + real / 3, "plain \(padded(plain)) for \(real) real tokens")
        // Not sorted overall: batches from different pools and lengths interleave.
        let firstLengths = stride(from: 0, to: 80, by: size).map { lengths[bucketed[$0]] }
        #expect(firstLengths != firstLengths.sorted())
    }

    @Test func metricsLogReadsBackAsTheHistory() throws {
        let dir = try temporaryDirectory()
        let (trainer, _) = try run(steps: 4, output: dir)
        let url = dir.appendingPathComponent("metrics.jsonl")
        let logged = try StepRecord.log(url)
        // Every number comes back bit for bit (the writer prints shortest round-trip forms, the reader parses exactly).
        func fields(_ r: StepRecord) -> [UInt64] {
            [
                UInt64(r.step), r.loss.bitPattern, r.learningRate.bitPattern, r.gradientNorm.bitPattern,
                r.tokensPerSecond.bitPattern,
                r.elapsed.bitPattern,
            ] + (r.metrics ?? [:]).sorted { $0.key < $1.key }.map(\.value.bitPattern)
        }
        #expect(logged.count == 4 && logged.map(fields) == trainer.history.map(fields))
        #expect(logged.map { $0.metrics?.keys.sorted() } == trainer.history.map { $0.metrics?.keys.sorted() })
        #expect(SVGPlot.runs([("run", logged)], metric: "accuracy").contains("<polyline"))
        // A line that is not a step record is named by file and line.
        try Data("{\"step\": 1, \"loss\": 2.5}\n{\"loss\": 1}\n".utf8).write(to: url)
        #expect(throws: DataError.self) { try StepRecord.log(url) }
        do { _ = try StepRecord.log(url) } catch let DataError.malformed(path, line, _) {
            #expect(path == url.path && line == 2)
        }
    }

    @Test func accumulationAveragesMicroBatches() throws {
        // Without dropout, 2 micro-batches of 2 give the update of one batch of 4 (same examples, same mean), up to
        // float rounding; 3 updates, so the optimizer state is exercised too.
        let (_, a) = try run(steps: 3, output: nil, accumulation: 1, batch: 4, dropout: 0)
        let (_, b) = try run(steps: 3, output: nil, accumulation: 2, batch: 2, dropout: 0)
        expectClose(b, a, atol: 2e-5, rtol: 1e-4, "accumulated vs one batch")
    }

    @Test func dropoutIsSeededAndOnlyInTrainingMode() throws {
        let json: [String: Any] = [
            "vocab_size": 100, "hidden_size": 12, "num_hidden_layers": 1, "num_attention_heads": 3,
            "intermediate_size": 20, "max_position_embeddings": 16, "hidden_dropout_prob": 0.3,
        ]
        let model = try BertModel(try BertConfig(json: json), seed: 3)
        let ids = try IntTensor(shape: [1, 5], values: [2, 5, 9, 11, 3])
        let plain = try model.hiddenStates(ids).scalars
        #expect(try model.hiddenStates(ids).scalars == plain, "inference is deterministic")
        let a = try TrainingMode.run(seed: 1) { try model.hiddenStates(ids).scalars }
        let b = try TrainingMode.run(seed: 1) { try model.hiddenStates(ids).scalars }
        let c = try TrainingMode.run(seed: 2) { try model.hiddenStates(ids).scalars }
        #expect(a == b, "same seed, same masks")
        #expect(a != c && a != plain, "another seed, other masks; training differs from inference")
    }

    @Test func nonFiniteLossStopsAndKeepsTheLastCheckpoint() throws {
        let model = try BottleneckAdapterTests().bert()
        try model.addAdapter("task", .bitFit, labels: 3)
        let examples = (0..<4).map { LabeledText(text: String($0), label: $0 % 3) }
        let task = try SequenceClassificationTask(model: model, labels: 3, train: examples, evaluation: [], padID: 0) {
            t, _ in ([2, Int32(t)! + 5, 3], [0, 0, 0])
        }
        var options = TrainingOptions(steps: 6, batchSize: 2, learningRate: 1e-3)
        let dir = try temporaryDirectory()
        options.outputDirectory = dir
        options.checkpointEvery = 1
        options.adapterName = "task"
        let trainer = try Trainer(task: task, options: options)
        trainer.onStep = { record in
            // Poison a trainable bias after step 3: the next loss is NaN.
            if record.step == 3 {
                model.classifier.bias!.value = try! Tensor(shape: [3], values: [.nan, 0, 0]).requiringGradient()
            }
        }
        do {
            try trainer.run()
            Issue.record("a NaN loss did not stop the run")
        } catch let TrainingError.nonFiniteLoss(step, loss, checkpoint) {
            #expect(step == 4 && loss.isNaN)
            #expect(
                checkpoint == dir.appendingPathComponent("checkpoint").path,
                "the message names the last good checkpoint")
        }
        let state = try Checkpoint.readJSON(dir.appendingPathComponent("checkpoint/trainer_state.json"))
        #expect(state["step"] as? Int == 3)
    }

    @Test func badOptionsAndCheckpointsAreNamed() throws {
        let model = try BottleneckAdapterTests().bert()
        let task = try SequenceClassificationTask(
            model: model, labels: 3, train: [LabeledText(text: "a", label: 1)], evaluation: [], padID: 0
        ) { _, _ in ([2, 3], [0, 0]) }
        #expect(throws: TrainingError.badOptions("steps, batch size and gradient accumulation must be positive")) {
            try Trainer(task: task, options: TrainingOptions(steps: 0, batchSize: 1, learningRate: 1))
        }
        #expect(throws: ModelError.badInput("training example 1 has label 7, outside 0..<3")) {
            try SequenceClassificationTask(
                model: model, labels: 3, train: [LabeledText(text: "a", label: 7)], evaluation: [], padID: 0
            ) { _, _ in ([2, 3], [0, 0]) }
        }
        let trainer = try Trainer(task: task, options: TrainingOptions(steps: 1, batchSize: 1, learningRate: 1))
        #expect(throws: (any Error).self) { try trainer.resume(from: try temporaryDirectory()) }
    }
}
