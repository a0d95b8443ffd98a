import Foundation
import Reins
import ReinsTensor

/// What the server serves: one base causal language model with its chat format, and adapters on it. Touched only on
/// the engine's thread.
public final class ServedModel {
    public let model: any CausalLanguageModel
    public let format: ChatFormat
    /// The name the base answers to in the API's `model` field.
    public let baseName: String
    /// The task heads of the classification and question-answering adapters, by adapter name (`/v1/classify`).
    public private(set) var heads: [String: AdapterTaskHead] = [:]
    /// Reduced-precision copies of the adapters' LoRA weights, when an engine decodes with them (its
    /// `loraPrecision`).
    public internal(set) var loraCopies: LoRACopies?

    public init(model: any CausalLanguageModel, format: ChatFormat, baseName: String) {
        (self.model, self.format, self.baseName) = (model, format, baseName)
    }

    /// Loads every adapter directory under `directory` (each subdirectory holding an adapter, named by the folder).
    /// - Returns: the names loaded.
    @discardableResult
    public func loadAdapters(from directory: URL) throws -> [String] {
        let entries = try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
        var names: [String] = []
        for name in entries where !name.hasPrefix(".") {
            let dir = directory.appendingPathComponent(name)
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: dir.path, isDirectory: &isDirectory), isDirectory.boolValue
            else { continue }
            try loadAdapter(name, from: dir)
            names.append(name)
        }
        return names
    }

    /// Loads one adapter under `name`, for inference (nothing trains; no adapter stays active). A classification or
    /// question-answering adapter's head is kept in ``heads`` (its other layers go into the base as any adapter's).
    public func loadAdapter(_ name: String, from directory: URL) throws {
        guard !name.isEmpty, name != baseName, name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else {
            throw ServerError.badRequest("adapter name '\(name)': letters, digits, '-', '_' and '.', and not the base's name")
        }
        guard !model.adapterNames.contains(name) else { throw ServerError.conflict("an adapter named '\(name)' is already loaded") }
        do {
            heads[name] = try AdapterFiles.loadSettingHeadAside(directory: directory, into: model, name: name)
        } catch {
            try? model.deleteAdapter(name)
            throw ServerError.badRequest("adapter '\(name)' from \(directory.path): \(error)")
        }
        try model.foldPrefixes()
        model.activateAdapter(nil)
        model.freeze()
        loraCopies?.prepare(adapter: name, in: model)
    }

    /// Makes the LoRA copies of every adapter now, adapter by adapter (``LoRACopies/prepare(adapter:in:)``).
    func prepareCopies() {
        guard let loraCopies else { return }
        for name in model.adapterNames { loraCopies.prepare(adapter: name, in: model) }
    }

    /// Removes the adapter `name` and its head, if it has one.
    public func unloadAdapter(_ name: String) throws {
        try model.deleteAdapter(name)
        heads[name] = nil
        loraCopies?.removeAll()  // the removed adapter's copies go with it; the others' are made again, together
        prepareCopies()
    }
}

/// Errors the API answers with their HTTP status.
public enum ServerError: Error, CustomStringConvertible, Sendable {
    case badRequest(String)
    case notFound(String)
    case conflict(String)
    case tooLong(String)
    case busy(String)

    /// A request naming neither the base nor a loaded adapter.
    static func unknownModel(_ name: String) -> ServerError {
        .notFound("no model or adapter named '\(name)' (see /v1/models)")
    }

    public var status: Int {
        switch self {
        case .badRequest: return 400
        case .notFound: return 404
        case .conflict: return 409
        case .tooLong: return 413
        case .busy: return 503
        }
    }

    public var description: String {
        switch self {
        case let .badRequest(m), let .notFound(m), let .conflict(m), let .tooLong(m), let .busy(m): return m
        }
    }
}

/// The compute side of the server: one thread that owns the model and runs a ``ContinuousBatch``. HTTP handlers submit
/// generation requests (their tokens come back through a stream as they are chosen) and other work (embeddings,
/// loading and unloading adapters), which runs on the same thread between decoding steps, so nothing touches the model
/// concurrently. New requests join the running batch at token boundaries; a request whose stream is dropped (a client
/// that went away) leaves it at the next one.
public final class Engine: @unchecked Sendable {
    /// What a generation request's stream carries.
    public enum Output: Sendable {
        /// Sent first: the prompt's first tokens taken from the prompt cache (0 when none were).
        case cachedPromptTokens(Int)
        case token(Int32)
        case finished(ContinuousBatch.Event.Finish)
        case failed(String, status: Int)
    }

    struct Pending {
        let id: Int
        let prompt: [Int32]
        let adapter: String?
        let options: GenerationOptions
        let sink: AsyncStream<Output>.Continuation
        let perToken: Bool
    }

    /// A request in the batch: its id there, its stream, its adapter, and — when its reader wants its tokens at the
    /// end only — the tokens held back so far.
    struct Running {
        let batchID: Int
        let sink: AsyncStream<Output>.Continuation
        let adapter: String?
        let perToken: Bool
        var held: [Int32] = []
    }

    /// Counters for `/metrics` and the load test.
    public struct Statistics: Sendable {
        public var queued = 0, running = 0
        public var generatedTokens = 0, steps = 0, requests = 0
        /// Tokens per second over the last steps (an exponential average).
        public var tokensPerSecond = 0.0
        public var largestBatch = 0
        /// The last decoding step's rows (running requests' tokens and prompt tokens fed with them; 0 when the statistics
        /// follow something else) and seconds.
        public var lastStepRows = 0, lastStepSeconds = 0.0
        /// Decoding steps run in lanes, one whole pass per core (``ContinuousBatch/laneRows``).
        public var laneSteps = 0
        /// The most classify requests answered in one pass.
        public var largestClassificationBatch = 0
        /// Prompt tokens taken from the prompt cache so far, and the bytes it keeps.
        public var reusedPromptTokens = 0, promptCacheBytes = 0
    }

    /// A classify request's answer: its adapter's task and labels, and each input's head logits.
    public struct Classification: Sendable {
        public let task: AdapterTaskHead.Task
        public let labels: [String]
        /// Per input: `[labels]`, or `[tokens × labels]` row-major (token classification, question answering).
        public let logits: [[Float]]
    }

    struct PendingClassification {
        let sequences: [[Int32]]
        let adapter: String
        let questions: Bool
        let answer: CheckedContinuation<Classification, any Error>
    }

    private let served: ServedModel
    private let batch: ContinuousBatch
    /// The most requests waiting to join the batch; beyond it, new requests are refused (503).
    public let queueLimit: Int
    private let condition = NSCondition()
    private var pending: [Pending] = []
    private var work: [(ServedModel) -> Void] = []
    private var classifications: [PendingClassification] = []
    /// The most padded tokens (inputs × the longest) one classification pass reads; more waiting requests run in
    /// further passes.
    public let classificationTokenBudget: Int
    private var cancelled: Set<Int> = []
    private var runningIDs: [Int: Running] = [:]
    private var stats = Statistics()
    private var nextID = 0
    private var stopping = false
    /// Called on the engine thread after each step with the statistics (the server's metrics).
    var onStatistics: (@Sendable (Statistics) -> Void)?

    /// - Parameters:
    ///   - loraPrecision: decode with copies of LoRA weights in this precision (``ServedModel/loraCopies``); nil:
    ///     float32.
    ///   - promptCacheBytes: keep this many bytes of prompts' keys and values (``ContinuousBatch/promptCache``); 0:
    ///     none; a negative count is a named error.
    ///   - laneRows: rows per thread from which a step runs in lanes (``ContinuousBatch/laneRows``); 0: never.
    public init(
        served: ServedModel, batchCapacity: Int = 16, queueLimit: Int = 64, classificationTokenBudget: Int = 16384,
        loraPrecision: LoRACopies.Precision? = nil, promptCacheBytes: Int = 0,
        laneRows: Int = ContinuousBatch.defaultLaneRows
    ) throws {
        guard classificationTokenBudget > 0 else { throw ServerError.badRequest("the classification token budget must be positive") }
        self.served = served
        batch = try ContinuousBatch(model: served.model, capacity: batchCapacity)
        served.loraCopies = loraPrecision.map { LoRACopies(precision: $0) }
        served.prepareCopies()
        batch.loraCopies = served.loraCopies
        batch.promptCache = promptCacheBytes == 0 ? nil : try PromptCache(capacity: promptCacheBytes)  // < 0 throws
        guard laneRows >= 0 else { throw ServerError.badRequest("lane rows must not be negative, got \(laneRows)") }
        batch.laneRows = laneRows
        self.queueLimit = queueLimit
        self.classificationTokenBudget = classificationTokenBudget
    }

    /// Starts the engine's thread.
    public func start() {
        // Weak: the thread object keeps its closure, so a strong capture would keep the engine (and its model)
        // alive for ever once the loop has stopped.
        let t = Thread { [weak self] in self?.loop() }
        t.name = "reins-engine"
        t.stackSize = 8 << 20
        t.start()
    }

    /// Stops the thread after the current step; requests still running get `.failed`.
    public func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    public var statistics: Statistics { condition.lock(); defer { condition.unlock() }; return stats }

    /// Adapter names that running or waiting requests use.
    var adaptersInUse: Set<String> {
        condition.lock()
        defer { condition.unlock() }
        return Set(pending.compactMap(\.adapter) + runningIDs.values.compactMap(\.adapter))
    }

    /// Queues a generation; its tokens arrive on the returned stream, which ends after `.finished` or `.failed`.
    /// Dropping the stream (the client went away) cancels the request. `perToken` false: the tokens arrive together
    /// when the request finishes (a reader that needs only the whole answer: one wake-up of its task per request
    /// instead of one per token, on cores the decoding steps use).
    /// - Throws: ``ServerError/busy(_:)`` when the queue is full.
    public func generate(prompt: [Int32], adapter: String?, options: GenerationOptions, perToken: Bool = true) throws
        -> (id: Int, stream: AsyncStream<Output>)
    {
        condition.lock()
        defer { condition.unlock() }
        guard !stopping else { throw ServerError.busy("the server is shutting down") }
        guard pending.count < queueLimit else {
            throw ServerError.busy("the queue is full (\(queueLimit) requests waiting); try again shortly")
        }
        let id = nextID
        nextID += 1
        let (stream, sink) = AsyncStream<Output>.makeStream(bufferingPolicy: .unbounded)
        sink.onTermination = { [weak self] reason in
            if case .cancelled = reason { self?.cancel(id) }
        }
        pending.append(
            Pending(id: id, prompt: prompt, adapter: adapter, options: options, sink: sink, perToken: perToken))
        stats.queued = pending.count
        stats.requests += 1
        condition.signal()
        return (id, stream)
    }

    /// Runs `body` on the engine's thread between steps and returns its result.
    public func run<T: Sendable>(_ body: @escaping (ServedModel) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
            condition.lock()
            defer { condition.unlock() }
            guard !stopping else { return c.resume(throwing: ServerError.busy("the server is shutting down")) }
            work.append { served in c.resume(with: Result { try body(served) }) }
            condition.signal()
        }
    }

    /// Classify requests waiting for the engine's next pass between decoding steps.
    public var waitingClassifications: Int {
        condition.lock()
        defer { condition.unlock() }
        return classifications.count
    }

    /// The head logits of `sequences` under the classification or question-answering adapter `adapter`, computed on the
    /// engine's thread between decoding steps together with the other classify requests waiting then (one pass over the
    /// base for all of them, each row with its adapter and head, within ``classificationTokenBudget``).
    /// - Throws: ``ServerError/badRequest(_:)`` when the adapter has no head, or `questions` (question-answering input)
    ///   does not match its task.
    public func classify(_ sequences: [[Int32]], adapter: String, questions: Bool) async throws -> Classification {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Classification, any Error>) in
            condition.lock()
            defer { condition.unlock() }
            guard !stopping else { return c.resume(throwing: ServerError.busy("the server is shutting down")) }
            classifications.append(
                PendingClassification(sequences: sequences, adapter: adapter, questions: questions, answer: c))
            condition.signal()
        }
    }

    /// Ends request `id` (waiting or running) at the next token boundary; nothing when it has finished.
    public func cancel(_ id: Int) {
        condition.lock()
        defer { condition.unlock() }
        if let i = pending.firstIndex(where: { $0.id == id }) {
            pending.remove(at: i).sink.finish()
            stats.queued = pending.count
        } else {
            cancelled.insert(id)
            condition.signal()
        }
    }

    private func loop() {
        while true {
            condition.lock()
            while pending.isEmpty && work.isEmpty && classifications.isEmpty && cancelled.isEmpty && batch.count == 0
                && !stopping
            {
                condition.wait()
            }
            if stopping {
                let all = pending.map(\.sink) + runningIDs.values.map(\.sink)
                let asked = classifications
                (pending, runningIDs, classifications) = ([], [:], [])
                condition.unlock()
                for a in asked { a.answer.resume(throwing: ServerError.busy("the server is shutting down")) }
                for s in all {
                    s.yield(.failed("the server is shutting down", status: 503))
                    s.finish()
                }
                return
            }
            let jobs = work
            work = []
            let asked = classifications
            classifications = []
            var admitted: [Pending] = []
            while batch.count + admitted.count < batch.capacity, !pending.isEmpty { admitted.append(pending.removeFirst()) }
            let gone = cancelled
            cancelled = []
            stats.queued = pending.count
            condition.unlock()

            for id in gone { drop(id) }
            for job in jobs { job(served) }
            if !asked.isEmpty { classifyTogether(asked) }
            for p in admitted { admit(p) }
            if batch.count > 0 { decodeStep() }
        }
    }

    /// Answers the classify requests waiting at once: passes of as many of them as fit the token budget (each alone
    /// fits: the server refuses larger ones), every row with its own adapter and head.
    private func classifyTogether(_ asked: [PendingClassification]) {
        var ready: [(PendingClassification, AdapterTaskHead)] = []
        for a in asked {
            guard served.model.adapterNames.contains(a.adapter) else {
                a.answer.resume(throwing: ServerError.unknownModel(a.adapter))
                continue
            }
            guard let head = served.heads[a.adapter] else {
                a.answer.resume(throwing: ServerError.badRequest(
                    "'\(a.adapter)' has no task head (it is a generation adapter): /v1/classify takes classification and question-answering adapters"))
                continue
            }
            guard (head.task == .questionAnswering) == a.questions else {
                a.answer.resume(throwing: ServerError.badRequest(
                    head.task == .questionAnswering
                        ? "'\(a.adapter)' answers questions: input takes {\"question\", \"context\"} objects"
                        : "'\(a.adapter)' is a \(head.task.rawValue) adapter: input takes strings"))
                continue
            }
            ready.append((a, head))
        }
        var start = 0
        while start < ready.count {
            var end = start, rows = 0, longest = 0
            while end < ready.count {
                let r = rows + ready[end].0.sequences.count
                let l = max(longest, ready[end].0.sequences.map(\.count).max() ?? 0)
                if end > start && r * l > classificationTokenBudget { break }
                (rows, longest, end) = (r, l, end + 1)
            }
            let part = ready[start..<end]
            start = end
            // Counted before any answer goes out: a client that has its answer sees the pass in the statistics.
            condition.lock()
            stats.largestClassificationBatch = max(stats.largestClassificationBatch, part.count)
            condition.unlock()
            do {
                let flat = part.flatMap { p, head in p.sequences.map { (ids: $0, adapter: Optional(p.adapter), head: head) } }
                let logits = try AdapterTaskHead.logits(served.model, rows: flat)
                var k = 0
                for (p, head) in part {
                    let n = p.sequences.count
                    p.answer.resume(returning: Classification(
                        task: head.task, labels: head.labels, logits: logits[k..<(k + n)].map(\.scalars)))
                    k += n
                }
            } catch {
                for (p, _) in part { p.answer.resume(throwing: error) }
            }
        }
    }

    private func drop(_ id: Int) {
        condition.lock()
        let entry = runningIDs.removeValue(forKey: id)
        condition.unlock()
        if let entry {
            batch.cancel(entry.batchID)
            entry.sink.finish()
            condition.lock()
            stats.running = batch.count
            var snapshot = stats
            snapshot.lastStepRows = 0  // no step: nothing for the per-step metrics
            condition.unlock()
            onStatistics?(snapshot)
        }
    }

    private func admit(_ p: Pending) {
        do {
            // Its prompt is fed by the next steps beside the running requests; its first token comes from one.
            guard let id = try batch.enqueue(prompt: p.prompt, adapter: p.adapter, options: p.options) else {
                p.sink.yield(.finished(.length))
                p.sink.finish()
                return
            }
            p.sink.yield(.cachedPromptTokens(batch.request(id)?.cachedTokens ?? 0))
            condition.lock()
            runningIDs[p.id] = Running(batchID: id, sink: p.sink, adapter: p.adapter, perToken: p.perToken)
            condition.unlock()
        } catch let error as ModelError {
            if case .sequenceTooLong = error {
                p.sink.yield(.failed("\(error)", status: 413))
            } else {
                p.sink.yield(.failed("\(error)", status: 400))
            }
            p.sink.finish()
        } catch {
            p.sink.yield(.failed("\(error)", status: 500))
            p.sink.finish()
        }
    }

    private func decodeStep() {
        let started = DispatchTime.now().uptimeNanoseconds
        let size = batch.count
        let events: [ContinuousBatch.Event]
        do {
            events = try batch.step()
        } catch {
            // A step that fails fails every request in it (none can continue consistently).
            condition.lock()
            let all = runningIDs.values.map(\.sink)
            runningIDs = [:]
            condition.unlock()
            for r in batch.requests { batch.cancel(r.id) }
            for s in all {
                s.yield(.failed("\(error)", status: 500))
                s.finish()
            }
            return
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        condition.lock()
        let byBatchID = Dictionary(uniqueKeysWithValues: runningIDs.map { ($0.value.batchID, $0.key) })
        var deliveries: [(sink: AsyncStream<Output>.Continuation, held: [Int32], event: ContinuousBatch.Event)] = []
        for e in events {
            guard let id = byBatchID[e.id], let entry = runningIDs[id] else { continue }
            if entry.perToken || e.finish != nil {
                deliveries.append((entry.sink, entry.held, e))
            } else {
                runningIDs[id]?.held.append(e.token)
            }
            if e.finish != nil { runningIDs[id] = nil }
        }
        stats.generatedTokens += events.count
        stats.steps += 1
        if batch.lastStepLanes > 1 { stats.laneSteps += 1 }
        stats.running = batch.count
        stats.largestBatch = max(stats.largestBatch, size)
        (stats.lastStepRows, stats.lastStepSeconds) = (batch.lastStepRows, seconds)
        stats.reusedPromptTokens = batch.promptCache?.reusedTokens ?? 0
        stats.promptCacheBytes = batch.promptCache?.bytes ?? 0
        let rate = Double(events.count) / max(seconds, 1e-9)
        stats.tokensPerSecond = stats.tokensPerSecond == 0 ? rate : 0.9 * stats.tokensPerSecond + 0.1 * rate
        let snapshot = stats
        condition.unlock()
        // The metrics first: a client that has its last token sees its step counted.
        onStatistics?(snapshot)
        for (sink, held, e) in deliveries {
            for t in held { sink.yield(.token(t)) }
            sink.yield(.token(e.token))
            if let f = e.finish {
                sink.yield(.finished(f))
                sink.finish()
            }
        }
    }
}
