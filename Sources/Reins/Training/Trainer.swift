import Foundation
import ReinsTensor

/// One task a ``Trainer`` can optimise: it turns a list of example indices into a loss, and scores the model on its
/// evaluation data.
public protocol TrainingTask: AnyObject {
    /// The model being trained (its trainable parameters are what the optimizer updates).
    var model: any Module { get }
    /// The number of training examples.
    var trainingCount: Int { get }
    /// The mean loss over the examples `indices` (a scalar tensor), and how many real tokens they hold.
    func loss(_ indices: [Int]) throws -> (loss: Tensor, tokens: Int)
    /// Metrics on the evaluation data; the first key of ``primaryMetric`` decides the best checkpoint.
    func evaluate() throws -> [String: Double]
    /// The metric that decides the best checkpoint, and whether larger is better.
    var primaryMetric: (name: String, higherIsBetter: Bool) { get }
    /// The length in tokens of training example `index`, for batches of similar lengths
    /// (``TrainingOptions/bucketByLength``); nil when the task does not know it.
    func trainingLength(_ index: Int) -> Int?
}

extension TrainingTask {
    public func trainingLength(_ index: Int) -> Int? { nil }
}

/// The optimizer a run uses.
public enum OptimizerKind: Sendable, Equatable {
    case adamW(beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8)
    case sgd(momentum: Float = 0.9, nesterov: Bool = false)
}

/// Everything that decides a training run (one documented field each).
public struct TrainingOptions: Sendable {
    /// Optimizer updates.
    public var steps: Int
    /// Examples per micro-batch.
    public var batchSize: Int
    /// Micro-batches whose gradients are summed (and averaged) before each update.
    public var gradientAccumulation = 1
    /// The base learning rate.
    public var learningRate: Float
    public var optimizer: OptimizerKind = .adamW()
    /// Weight decay; by default (``decaysByDefault(_:)``) biases, norms and other vectors do not decay.
    public var weightDecay: Float = 0.01
    /// Set to decay every parameter, vectors included.
    public var decayVectors = false
    /// The learning-rate schedule shape; its warm-up and total come from ``warmupSteps`` and ``steps``.
    public var schedule: ScheduleKind = .linear
    public var warmupSteps = 0
    /// Batches of examples of similar length, so that less of each batch is padding: each epoch's shuffled order is
    /// cut into pools of 64 batches, each pool sorted by length and cut into batches, and the batches shuffled. Every
    /// example is still seen once per epoch; batches differ from the unbucketed run's (the run is as reproducible).
    public var bucketByLength = false
    /// Global-norm gradient clipping (nil: none).
    public var clipNorm: Float? = 1
    /// Seeds data order and dropout: the same seed gives the same run, bit for bit.
    public var seed: UInt64 = 0
    /// Evaluate every this many updates (and at the end); nil: only at the end.
    public var evaluateEvery: Int?
    /// Stop after this many evaluations without improvement of the primary metric (nil: never).
    public var earlyStoppingPatience: Int?
    /// Where checkpoints, the best adapter or model, and `metrics.jsonl` go (nil: nothing is written).
    public var outputDirectory: URL?
    /// Write a resumable checkpoint every this many updates (nil: at evaluations only).
    public var checkpointEvery: Int?
    /// The adapter being trained: the best result is saved as that adapter (with its head). Nil (full fine-tuning):
    /// the trainable parameters are saved as a model file.
    public var adapterName: String?

    public enum ScheduleKind: String, Sendable { case constant, linear, cosine }

    public init(steps: Int, batchSize: Int, learningRate: Float) {
        (self.steps, self.batchSize, self.learningRate) = (steps, batchSize, learningRate)
    }

    var learningRateSchedule: LearningRateSchedule {
        switch schedule {
        case .constant: return .constant(warmup: warmupSteps)
        case .linear: return .linear(warmup: warmupSteps, total: steps)
        case .cosine: return .cosine(warmup: warmupSteps, total: steps)
        }
    }
}

/// What happened at one update, for progress bars and logs.
public struct StepRecord: Sendable, Decodable {
    public var step: Int
    public var loss: Double
    public var learningRate: Double
    public var gradientNorm: Double
    public var tokensPerSecond: Double
    public var elapsed: Double
    /// Evaluation metrics, when this update was followed by an evaluation.
    public var metrics: [String: Double]?

    /// The records of a `metrics.jsonl` log, in order, every number exactly as it was written.
    /// - Throws: ``DataError`` naming the file and line of a line that is not a step record.
    public static func log(_ url: URL) throws -> [StepRecord] {
        guard let data = FileBytes.contents(url.path) else { throw DataError.unreadable(path: url.path) }
        // JSONDecoder, not JSONSerialization: the latter reads some doubles back one unit in the last place off.
        let decoder = JSONDecoder()
        return try DataFiles.nonBlankLines(String(decoding: data, as: UTF8.self)).map { line, text in
            do { return try decoder.decode(StepRecord.self, from: Data(text.utf8)) } catch {
                throw DataError.malformed(path: url.path, line: line, detail: "not a step record (\(error))")
            }
        }
    }

    init(
        step: Int, loss: Double, learningRate: Double, gradientNorm: Double, tokensPerSecond: Double, elapsed: Double,
        metrics: [String: Double]? = nil
    ) {
        (self.step, self.loss, self.learningRate, self.gradientNorm, self.tokensPerSecond, self.elapsed, self.metrics) =
            (step, loss, learningRate, gradientNorm, tokensPerSecond, elapsed, metrics)
    }

    enum CodingKeys: String, CodingKey {
        case step, loss, learningRate = "learning_rate", gradientNorm = "gradient_norm"
        case tokensPerSecond = "tokens_per_second", elapsed = "elapsed_seconds", metrics = "eval"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        (step, loss) = (try c.decode(Int.self, forKey: .step), try c.decode(Double.self, forKey: .loss))
        learningRate = try c.decodeIfPresent(Double.self, forKey: .learningRate) ?? .nan
        gradientNorm = try c.decodeIfPresent(Double.self, forKey: .gradientNorm) ?? .nan
        tokensPerSecond = try c.decodeIfPresent(Double.self, forKey: .tokensPerSecond) ?? .nan
        elapsed = try c.decodeIfPresent(Double.self, forKey: .elapsed) ?? .nan
        metrics = try c.decodeIfPresent([String: Double].self, forKey: .metrics)
    }
}

/// Why a run stopped early.
public enum TrainingError: Error, CustomStringConvertible, Equatable {
    /// The loss at `step` was NaN or infinite; `checkpoint` is the last good checkpoint on disk, if any.
    case nonFiniteLoss(step: Int, loss: Double, checkpoint: String?)
    case badOptions(String)
    case badCheckpoint(path: String, detail: String)

    public var description: String {
        switch self {
        case let .nonFiniteLoss(step, loss, checkpoint):
            let kept = checkpoint.map { "the last good checkpoint is \($0)" } ?? "no checkpoint had been written"
            return
                "the loss became \(loss) at step \(step); the run stopped and \(kept) (try a lower learning rate or clipping)"
        case let .badOptions(detail): return "bad training options: \(detail)"
        case let .badCheckpoint(path, detail): return "cannot resume from \(path): \(detail)"
        }
    }
}

/// The training loop shared by every task and adapter method: shuffled micro-batches, gradient accumulation,
/// clipping, a schedule, AdamW or SGD over exactly the trainable parameters, seeded dropout, periodic evaluation
/// keeping the best result, early stopping, a NaN guard, JSONL metrics and atomic, resumable checkpoints.
///
/// Reproducibility: the data order of epoch `e` is a shuffle seeded by `(seed, e)` and the dropout masks of update `s`
/// are seeded by `(seed, s)`, so a run resumed from a checkpoint continues exactly as if never stopped.
public final class Trainer {
    public let task: any TrainingTask
    public let options: TrainingOptions
    public let optimizer: any Optimizer
    /// Updates done so far.
    public private(set) var step = 0
    /// The best primary-metric value so far and its step.
    public private(set) var best: (value: Double, step: Int)?
    /// Every record so far (also written to `metrics.jsonl`).
    public private(set) var history: [StepRecord] = []
    /// Called after each update (progress bars).
    public var onStep: ((StepRecord) -> Void)?
    /// Asked after each update (and its checkpoint): return true to stop the run there (e.g. on a signal). A later
    /// ``resume(from:)`` continues it exactly.
    public var shouldStop: ((StepRecord) -> Bool)?
    private var evaluationsWithoutImprovement = 0
    private let parameters: [(key: String, parameter: Parameter)]
    /// The processes of a data-parallel run (nil: this process alone).
    public let group: (any DataParallelGroup)?
    private let reducer: GradientReducer?
    /// Whether this process writes the run's files: rank 0 of a data-parallel run, or a run alone.
    var writes: Bool { (group?.rank ?? 0) == 0 }
    /// The micro-batch of update `step` that this process computes as its micro-batch `micro`, counted over the
    /// whole run (all processes).
    func globalMicroBatch(step: Int, micro: Int) -> Int {
        (step * options.gradientAccumulation + micro) * (group?.size ?? 1) + (group?.rank ?? 0)
    }
    /// Called at each write boundary of a checkpoint or best-result save, before the write it names; a test throws
    /// from it to stand for a process killed at that instant.
    var writeBoundary: ((CheckpointWrite) throws -> Void)?

    /// The instants at which a save can be interrupted, in order.
    enum CheckpointWrite: CaseIterable {
        /// Before the parameters and optimizer state of the new step are written to their own file.
        case state
        /// Before `trainer_state.json`, the manifest that makes the new state file the checkpoint, replaces the old one.
        case manifest
        /// Before the files of earlier checkpoints are removed.
        case cleanup
        /// Before the new best result, complete in a fresh directory, takes the place of the old one.
        case bestSwap
    }

    /// - Parameter group: for data-parallel training, this process's place among the processes of the run (each
    ///   builds its own trainer with the same task, options and seed). Micro-batch `m` of update `s` on rank `r` of
    ///   `N` takes the examples that a one-process run with `N ×` the gradient accumulation would take for its
    ///   micro-batch `(s × accumulation + m) × N + r`, so the run updates as that one would: the gradients of the
    ///   trainable parameters are averaged across the processes (``GradientReducer``), every process takes the same
    ///   step, evaluation is split between them (``ShardedEvaluation``), and only rank 0 writes files.
    public init(task: any TrainingTask, options: TrainingOptions, group: (any DataParallelGroup)? = nil) throws {
        guard options.steps > 0, options.batchSize > 0, options.gradientAccumulation > 0 else {
            throw TrainingError.badOptions("steps, batch size and gradient accumulation must be positive")
        }
        if let group, !(group.size > 0 && (0..<group.size).contains(group.rank)) {
            throw TrainingError.badOptions("rank \(group.rank) of a group of \(group.size) processes")
        }
        // Every example index the run will form must be countable: steps × accumulation × ranks × batch size.
        let (perStep, o1) = options.gradientAccumulation.multipliedReportingOverflow(by: options.batchSize)
        let (global, o3) = perStep.multipliedReportingOverflow(by: group?.size ?? 1)
        let (_, o2) = global.multipliedReportingOverflow(by: options.steps)
        guard !o1, !o2, !o3 else {
            throw TrainingError.badOptions(
                "\(options.steps) steps × \(options.gradientAccumulation) micro-batches × \(group?.size ?? 1) processes × \(options.batchSize) examples is more examples than can be counted"
            )
        }
        for (name, value) in [
            ("evaluateEvery", options.evaluateEvery), ("checkpointEvery", options.checkpointEvery),
            ("earlyStoppingPatience", options.earlyStoppingPatience),
        ] {
            if let value, value <= 0 {
                throw TrainingError.badOptions("\(name) must be positive (or nil), got \(value)")
            }
        }
        guard options.learningRate.isFinite, options.learningRate >= 0 else {
            throw TrainingError.badOptions(
                "the learning rate must be a finite non-negative number, got \(options.learningRate)")
        }
        guard options.weightDecay.isFinite, options.warmupSteps >= 0 else {
            throw TrainingError.badOptions(
                "weight decay \(options.weightDecay) must be finite and warm-up steps \(options.warmupSteps) not negative"
            )
        }
        if let clip = options.clipNorm, !(clip.isFinite && clip > 0) {
            throw TrainingError.badOptions("clipNorm must be positive and finite, got \(clip)")
        }
        switch options.optimizer {
        case let .adamW(b1, b2, eps):
            guard (0..<1).contains(b1), (0..<1).contains(b2), eps.isFinite, eps > 0 else {
                throw TrainingError.badOptions(
                    "AdamW needs betas in [0, 1) and a positive epsilon, got \(b1), \(b2), \(eps)")
            }
        case let .sgd(momentum, _):
            guard momentum.isFinite, momentum >= 0 else {
                throw TrainingError.badOptions("SGD momentum must be finite and non-negative, got \(momentum)")
            }
        }
        guard task.trainingCount > 0 else { throw TrainingError.badOptions("there are no training examples") }
        self.task = task
        self.options = options
        self.group = group
        let trainable = task.model.namedParameters().filter { $0.parameter.isTrainable }
        parameters = trainable
        guard !trainable.isEmpty else { throw TrainingError.badOptions("the model has no trainable parameters") }
        reducer = group.flatMap { $0.size > 1 ? GradientReducer(parameters: trainable.map(\.parameter), group: $0) : nil }
        let decayAll = options.decayVectors
        let decays: (Parameter) -> Bool = { decayAll || decaysByDefault($0) }
        switch options.optimizer {
        case let .adamW(b1, b2, eps):
            optimizer = AdamW(
                learningRate: options.learningRate, beta1: b1, beta2: b2, epsilon: eps,
                weightDecay: options.weightDecay, decays: decays)
        case let .sgd(momentum, nesterov):
            optimizer = SGD(
                learningRate: options.learningRate, momentum: momentum, weightDecay: options.weightDecay,
                nesterov: nesterov, decays: decays)
        }
    }

    /// The example indices of micro-batch `micro` of update `step` (0-based): consecutive slices of per-epoch
    /// shuffles.
    func batch(step: Int, micro: Int) -> [Int] {
        let n = task.trainingCount, size = options.batchSize
        let start = globalMicroBatch(step: step, micro: micro) * size
        return (start..<(start + size)).map { i in order(epoch: i / n)[i % n] }
    }

    private var epochOrder: (epoch: Int, order: [Int])?

    /// A Fisher–Yates shuffle of the training indices seeded by `(seed, epoch)`, bucketed by length when the options
    /// say so.
    func order(epoch: Int) -> [Int] {
        if let c = epochOrder, c.epoch == epoch { return c.order }
        var lengths: [Int]? = nil
        if options.bucketByLength {
            let known = (0..<task.trainingCount).map { task.trainingLength($0) }
            if !known.contains(nil) { lengths = known.map { $0! } }
        }
        let order = Trainer.epochOrder(
            count: task.trainingCount, seed: options.seed, epoch: epoch, batchSize: options.batchSize, lengths: lengths,
            together: options.gradientAccumulation * (group?.size ?? 1))
        epochOrder = (epoch, order)
        return order
    }

    /// The order in which a run visits `count` training examples in epoch `epoch`: a Fisher–Yates shuffle seeded by
    /// `(seed, epoch)`; with `lengths`, then cut into pools of 64 batches, each pool sorted by length (ties by index)
    /// and cut into batches, and the batches shuffled (``TrainingOptions/bucketByLength``).
    ///
    /// `together` batches taken by one update (its micro-batches on every process) are cut from one sorted stretch and
    /// stay together when the batches are shuffled: they have similar lengths, so the processes of a data-parallel
    /// run finish their shares at about the same time instead of waiting for the one given the longest batch.
    public static func epochOrder(
        count: Int, seed: UInt64, epoch: Int, batchSize: Int, lengths: [Int]? = nil, together: Int = 1
    ) -> [Int] {
        var g = SeededGenerator(seed: seed &+ UInt64(epoch) &* 0x9E37_79B9)
        var order = Array(0..<count)
        for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, Int(g.next() % UInt64(i + 1))) }
        guard let lengths, lengths.count == count, batchSize > 0 else { return order }
        let together = max(1, together)
        let (group, overflow) = batchSize.multipliedReportingOverflow(by: together)
        guard !overflow else { return order }
        let pool = group * max(1, 64 / together)
        var batches: [[Int]] = []
        for start in stride(from: 0, to: order.count, by: pool) {
            let sorted = order[start..<min(start + pool, order.count)].sorted { (lengths[$0], $0) < (lengths[$1], $1) }
            for b in stride(from: 0, to: sorted.count, by: group) {
                batches.append(Array(sorted[b..<min(b + group, sorted.count)]))
            }
        }
        for i in stride(from: batches.count - 1, to: 0, by: -1) { batches.swapAt(i, Int(g.next() % UInt64(i + 1))) }
        return batches.flatMap { $0 }
    }

    /// Runs until ``TrainingOptions/steps`` updates are done (or early stopping), evaluating and checkpointing as
    /// configured.
    /// - Throws: ``TrainingError/nonFiniteLoss(step:loss:)`` (the last checkpoint stays intact), task and file errors.
    public func run() throws {
        let start = DispatchTime.now().uptimeNanoseconds
        let trainable = parameters.map(\.parameter)
        let log = writes ? options.outputDirectory.map { $0.appendingPathComponent("metrics.jsonl") } : nil
        if writes, let dir = options.outputDirectory {
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            try DirectorySwap.recover(dir.appendingPathComponent("best"))
            AtomicFile.removeStaleTemporaries(in: dir)
        }
        // A resumed run logs each step once: records after the checkpoint's step (and a line cut by a kill) go.
        if let log { try Trainer.truncateLog(log, after: step) }
        while step < options.steps {
            let t0 = DispatchTime.now().uptimeNanoseconds
            for p in trainable { p.zeroGradient() }
            var total = 0.0, tokens = 0
            for micro in 0..<options.gradientAccumulation {
                let indices = batch(step: step, micro: micro)
                let dropoutSeed =
                    options.seed &* 0x2545_F491_4F6C_DD1D &+ UInt64(globalMicroBatch(step: step, micro: micro))
                try TrainingMode.run(seed: dropoutSeed) {
                    let (loss, n) = try task.loss(indices)
                    total += Double(try loss.item)
                    tokens += n
                    // Seeded with 1 / (micro-batches × processes): the sums across processes are then the averages.
                    let seed = try Tensor(
                        shape: loss.shape, values: [1 / Float(options.gradientAccumulation * (group?.size ?? 1))])
                    let backward = { try loss.backward(gradient: seed) }
                    // The last pass before the update: its gradients are summed across the processes as they finish.
                    if let reducer, micro == options.gradientAccumulation - 1 {
                        try reducer.reduce(during: backward)
                    } else {
                        try backward()
                    }
                }
            }
            if let group, group.size > 1 {
                let sums = try group.sum([total, Double(tokens)])
                (total, tokens) = (sums[0] / Double(group.size), Int(sums[1]))
            }
            let loss = total / Double(options.gradientAccumulation)
            guard loss.isFinite else {
                let checkpoint = options.outputDirectory?.appendingPathComponent("checkpoint")
                let saved = checkpoint.flatMap {
                    FileManager.default.fileExists(atPath: $0.appendingPathComponent("trainer_state.json").path)
                        ? $0.path : nil
                }
                throw TrainingError.nonFiniteLoss(step: step + 1, loss: loss, checkpoint: saved)
            }
            let norm = options.clipNorm.map { clipGradientNorm(trainable, maxNorm: $0) } ?? Float.nan
            optimizer.learningRate = options.learningRate * options.learningRateSchedule.factor(step: step)
            optimizer.update(trainable, gradientScale: 1)
            step += 1
            let now = DispatchTime.now().uptimeNanoseconds
            var record = StepRecord(
                step: step, loss: loss, learningRate: Double(optimizer.learningRate), gradientNorm: Double(norm),
                tokensPerSecond: Double(tokens) / (Double(now - t0) / 1e9), elapsed: Double(now - start) / 1e9)
            let evaluateNow = step == options.steps || options.evaluateEvery.map { step % $0 == 0 } ?? false
            var stop = false
            if evaluateNow {
                let metrics = try Autograd.withoutGradients { try evaluate() }
                record.metrics = metrics
                let (name, higher) = task.primaryMetric
                if let value = metrics[name] {
                    if best == nil || (higher ? value > best!.value : value < best!.value) {
                        best = (value, step)
                        evaluationsWithoutImprovement = 0
                        if writes, let dir = options.outputDirectory {
                            try saveBest(to: dir.appendingPathComponent("best"))
                        }
                    } else {
                        evaluationsWithoutImprovement += 1
                        if let patience = options.earlyStoppingPatience, evaluationsWithoutImprovement >= patience {
                            stop = true
                        }
                    }
                }
            }
            history.append(record)
            if let log { try Trainer.append(record, to: log) }
            onStep?(record)
            if writes, let dir = options.outputDirectory,
                evaluateNow || options.checkpointEvery.map({ step % $0 == 0 }) ?? false || stop
            {
                try saveCheckpoint(to: dir.appendingPathComponent("checkpoint"))
            }
            var stopAsked = shouldStop?(record) == true
            // One process asked to stop (a signal): all stop at this update.
            if let group, group.size > 1 { stopAsked = try group.sum([stopAsked ? 1 : 0])[0] > 0 }
            if stop || stopAsked { break }
        }
    }

    /// The task's metrics; in a data-parallel run each process evaluates its slice (``ShardedEvaluation``) and all
    /// combine the parts.
    func evaluate() throws -> [String: Double] {
        guard let group, group.size > 1, let sharded = task as? any ShardedEvaluation else { return try task.evaluate() }
        let part = try sharded.evaluationPart(shard: group.rank, of: group.size)
        return try sharded.metrics(fromParts: try group.gather(part))
    }

    /// The trained parameters in their best state: the adapter (with its head) or, for full fine-tuning, the model.
    /// Written whole into a fresh directory that then takes the old one's place (``DirectorySwap``), so a reader
    /// never sees a half-written best result.
    func saveBest(to directory: URL) throws {
        let model = task.model
        let fresh = try DirectorySwap.freshDirectory(for: directory)
        if let name = options.adapterName {
            try model.saveAdapter(name, to: fresh)
        } else {
            try SafeTensorsFile.write(
                Dictionary(uniqueKeysWithValues: parameters.map { ($0.key, $0.parameter.value.detached()) }),
                metadata: ["format": "pt"], to: fresh.appendingPathComponent("model.safetensors").path)
        }
        try writeBoundary?(.bestSwap)
        try DirectorySwap.replace(directory, with: fresh)
    }

    /// Writes what resuming needs: the trainable parameters and the optimizer state of this step in a file of its own
    /// (`training_state-STEP.safetensors`), then `trainer_state.json`, which names that file. The manifest is replaced
    /// atomically and written last, so a kill at any instant leaves either the previous checkpoint or the new one,
    /// whole; files of earlier checkpoints are removed only after it.
    public func saveCheckpoint(to directory: URL) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let weights = Dictionary(uniqueKeysWithValues: parameters.map { ($0.key, $0.parameter.value.detached()) })
        let state = optimizer.state(parameters)
        // Parameters and optimizer state in one file, so they can never be out of step with each other.
        var tensors = weights.mapKeys { "param." + $0 }
        for (k, v) in state.tensors { tensors["optim." + k] = v }
        let stateFile = "training_state-\(step).safetensors"
        try writeBoundary?(.state)
        try SafeTensorsFile.write(
            tensors, metadata: ["step": "\(step)"], to: directory.appendingPathComponent(stateFile).path)
        let saved = SavedState(
            step: step, optimizerStep: state.step, seed: String(options.seed), stateFile: stateFile,
            evaluationsWithoutImprovement: evaluationsWithoutImprovement,
            best: best.map { .init(value: $0.value, step: $0.step) }, processes: group?.size ?? 1)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeBoundary?(.manifest)
        try AtomicFile.write(try encoder.encode(saved), to: directory.appendingPathComponent(Trainer.manifestName).path)
        try writeBoundary?(.cleanup)
        Trainer.removeStaleStates(in: directory, keeping: stateFile)
    }

    static let manifestName = "trainer_state.json"
    /// The state file of checkpoints written before the manifest named one.
    static let legacyStateFile = "training_state.safetensors"

    /// Removes state files that the manifest does not name and interrupted writes' temporary files.
    static func removeStaleStates(in directory: URL, keeping current: String) {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        for name in names where name != current && name.hasPrefix("training_state") && name.hasSuffix(".safetensors") {
            try? FileManager.default.removeItem(at: directory.appendingPathComponent(name))
        }
        AtomicFile.removeStaleTemporaries(in: directory)
    }

    /// Keeps the records of `metrics.jsonl` up to and including `step`, dropping later ones (a resumed run writes
    /// them again) and any line a kill cut short. Replaced atomically; nothing to do when there is nothing to drop.
    static func truncateLog(_ url: URL, after step: Int) throws {
        guard let data = FileBytes.contents(url.path) else { return }
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true)
        let kept = lines.filter { line in
            guard let record = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any],
                let s = JSONNumber.exactInt(record[StepRecord.CodingKeys.step.rawValue])
            else { return false }
            return s <= step
        }
        guard kept.count != lines.count || (data.last.map { $0 != 0x0A } ?? false) else { return }
        try AtomicFile.write(Data(kept.map { $0 + "\n" }.joined().utf8), to: url.path)
    }

    /// `trainer_state.json`, written and read with JSON(En|De)coder, which round-trip doubles exactly (a resumed run
    /// compares later evaluations against the same bits as an uninterrupted one).
    struct SavedState: Codable {
        struct Best: Codable { let value: Double, step: Int }
        let step: Int, optimizerStep: Int, seed: String?, stateFile: String?, evaluationsWithoutImprovement: Int?,
            best: Best?
        /// The processes of the data-parallel run that wrote it (absent: one).
        var processes: Int? = nil
        enum CodingKeys: String, CodingKey {
            case step, optimizerStep = "optimizer_step", seed, stateFile = "state_file"
            case evaluationsWithoutImprovement = "evaluations_without_improvement", best, processes
        }
    }

    /// Restores a checkpoint written by ``saveCheckpoint(to:)`` into this trainer's model and optimizer.
    /// - Throws: ``TrainingError/badCheckpoint(path:detail:)`` naming the missing or mis-shaped tensor.
    public func resume(from directory: URL) throws {
        let statePath = directory.appendingPathComponent(Trainer.manifestName)
        guard let data = FileBytes.contents(statePath.path) else { throw ModelError.missingFile(path: statePath.path) }
        let saved: SavedState
        do { saved = try JSONDecoder().decode(SavedState.self, from: data) } catch {
            throw TrainingError.badCheckpoint(path: statePath.path, detail: "not a trainer state (\(error))")
        }
        let stateFile = saved.stateFile ?? Trainer.legacyStateFile
        // The manifest names a file beside it, nothing else: no folders, no way out of the checkpoint directory.
        guard !stateFile.isEmpty, !stateFile.contains("/"), !stateFile.hasPrefix(".") else {
            throw TrainingError.badCheckpoint(
                path: statePath.path, detail: "state_file '\(stateFile)' is not a file name in the checkpoint directory"
            )
        }
        let file = try SafeTensorsFile(path: directory.appendingPathComponent(stateFile).path)
        guard file.metadata["step"] == "\(saved.step)" else {
            throw TrainingError.badCheckpoint(
                path: directory.path,
                detail: "trainer_state.json and training_state.safetensors disagree or lack the step")
        }
        // The data order is cut per process: resuming with another number of processes would take other batches.
        if (saved.processes ?? 1) != (group?.size ?? 1) {
            throw TrainingError.badCheckpoint(
                path: directory.path,
                detail: "it was written by a run of \(saved.processes ?? 1) processes, this run has \(group?.size ?? 1)")
        }
        if let seed = saved.seed, seed != String(options.seed) {
            throw TrainingError.badCheckpoint(
                path: directory.path, detail: "it was written with seed \(seed), this run has seed \(options.seed)")
        }
        var values: [(Parameter, Tensor)] = []
        for (key, p) in parameters {
            guard file.entries["param." + key] != nil else {
                throw TrainingError.badCheckpoint(path: directory.path, detail: "missing parameter '\(key)'")
            }
            let t = try file.tensor("param." + key)
            guard t.shape == p.value.shape else {
                throw TrainingError.badCheckpoint(
                    path: directory.path, detail: "'\(key)' is \(t.shape), the model's \(p.value.shape)")
            }
            values.append((p, t))
        }
        var optimizerState: [String: Tensor] = [:]
        for name in file.names where name.hasPrefix("optim.") {
            optimizerState[String(name.dropFirst(6))] = try file.tensor(name)
        }
        do { try optimizer.restore(optimizerState, step: saved.optimizerStep, parameters) } catch {
            throw TrainingError.badCheckpoint(path: directory.path, detail: "\(error)")
        }
        for (p, t) in values { p.value = t.detached().requiringGradient() }
        step = saved.step
        evaluationsWithoutImprovement = saved.evaluationsWithoutImprovement ?? 0
        best = saved.best.map { ($0.value, $0.step) }
        Trainer.removeStaleStates(in: directory, keeping: stateFile)
    }

    static func append(_ record: StepRecord, to url: URL) throws {
        typealias Key = StepRecord.CodingKeys
        var fields: [String: Any] = [
            Key.step.rawValue: record.step, Key.loss.rawValue: record.loss,
            Key.learningRate.rawValue: record.learningRate,
            Key.tokensPerSecond.rawValue: record.tokensPerSecond, Key.elapsed.rawValue: record.elapsed,
        ]
        if record.gradientNorm.isFinite { fields[Key.gradientNorm.rawValue] = record.gradientNorm }
        if let m = record.metrics { fields[Key.metrics.rawValue] = m }
        var line = try JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])
        line.append(0x0A)
        if !FileManager.default.fileExists(atPath: url.path) {
            _ = FileManager.default.createFile(atPath: url.path, contents: nil)
        }
        let handle = try FileHandle(forWritingTo: url)
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: line)
    }
}

extension Dictionary {
    func mapKeys<K: Hashable>(_ f: (Key) -> K) -> [K: Value] {
        Dictionary<K, Value>(uniqueKeysWithValues: map { (f($0.key), $0.value) })
    }
}
