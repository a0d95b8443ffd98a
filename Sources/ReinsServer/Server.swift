import Foundation
import Hummingbird
import Logging
import NIOCore
import Prometheus
import Reins
import ReinsTensor

/// Limits and addresses of `reins serve`.
public struct ServerOptions: Sendable {
    public var host = "127.0.0.1"
    /// 0: any free port (the tests' choice; the bound port is reported when the server runs).
    public var port = 8080
    /// Larger request bodies get 413.
    public var maxBodyBytes = 1 << 20
    /// The most new tokens one request may ask for (`max_tokens`); more is a 400.
    public var maxTokens = 1024
    /// The most prompt tokens one request may bring; more is a 413.
    public var maxPromptTokens = 4096
    /// The most padded tokens (inputs × the longest input) one embeddings or classify request may bring; more is a
    /// 413 (one pass holds them all in memory at once).
    public var maxBatchTokens = 16384
    /// Requests decoded together.
    public var batchCapacity = 16
    /// Requests waiting to join the batch; beyond it, 503.
    public var queueLimit = 64
    /// A connection idle this long is closed (a client that stalls mid-request).
    public var idleTimeoutSeconds = 30
    /// Decoding reads LoRA weights from copies in this precision (half or a quarter of the adapter bytes per step;
    /// each LoRA's update differs from float32's by the weights' rounding). Nil: float32, every request's tokens
    /// those it gets alone.
    public var loraPrecision: LoRACopies.Precision?
    /// Bytes of prompts' keys and values kept so that a prompt starting as an earlier one's, for the same adapter,
    /// takes that start from them (``PromptCache``); 0 keeps none.
    public var promptCacheBytes = 256 << 20
    /// Rows per thread from which a decoding step runs as one lane per thread (``ContinuousBatch/laneRows``); 0:
    /// never.
    public var laneRows = ContinuousBatch.defaultLaneRows

    public init() {}
}

/// A request's context with its connection, so that a request whose client hangs up leaves the batch at once.
public struct ServeContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// `reins serve`: OpenAI-compatible endpoints over one base model and its adapters, on Hummingbird. The API's `model`
/// field names an adapter (or the base); requests for different adapters are decoded together in one continuous batch.
public final class ReinsServer: Sendable {
    public let engine: Engine
    public let options: ServerOptions
    public let format: ChatFormat
    let baseName: String
    let logger: Logger
    let registry = PrometheusCollectorRegistry()
    let queueGauge: Gauge, batchGauge: Gauge, rateGauge: Gauge
    let tokensCounter: Counter, requestsCounter: Counter

    /// Starts the engine (its thread) for `served`.
    public init(served: ServedModel, options: ServerOptions, logger: Logger = Logger(label: "reins.serve")) throws {
        guard (0...65535).contains(options.port), options.maxTokens > 0, options.maxPromptTokens > 0,
            options.maxBodyBytes > 0, options.batchCapacity > 0, options.queueLimit > 0, options.idleTimeoutSeconds > 0,
            options.maxBatchTokens > 0, options.promptCacheBytes >= 0, options.laneRows >= 0
        else {
            throw ServerError.badRequest("server limits must be positive and the port within 0...65535")
        }
        // The server's network threads and its clients share the cores with the engine: a parallel region does not wait
        // for a worker that is not running.
        Parallel.sharesCores = true
        engine = try Engine(
            served: served, batchCapacity: options.batchCapacity, queueLimit: options.queueLimit,
            classificationTokenBudget: options.maxBatchTokens, loraPrecision: options.loraPrecision,
            promptCacheBytes: options.promptCacheBytes, laneRows: options.laneRows)
        self.options = options
        format = served.format
        baseName = served.baseName
        self.logger = logger
        queueGauge = registry.makeGauge(descriptor: metric("queue", "length", "Requests waiting to join the batch"))
        batchGauge = registry.makeGauge(descriptor: metric("batch", "size", "Requests decoded in the last step"))
        rateGauge = registry.makeGauge(
            descriptor: metric("tokens", "per_second", "Generated tokens per second (moving average)"))
        tokensCounter = registry.makeCounter(descriptor: metric("generated_tokens", "total", "Tokens generated"))
        requestsCounter = registry.makeCounter(descriptor: metric("requests", "total", "HTTP requests answered"))
        let cachedTokens = registry.makeGauge(
            descriptor: metric("prompt_cache", "reused_tokens", "Prompt tokens taken from the prompt cache so far"))
        let cachedBytes = registry.makeGauge(
            descriptor: metric("prompt_cache", "bytes", "Bytes of prompts' keys and values kept"))
        let stepRows = registry.makeValueHistogram(
            descriptor: metric("step", "rows", "Rows per decoding step: running requests' tokens and prompt tokens fed with them"),
            buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256])
        let laneSteps = registry.makeGauge(
            descriptor: metric("lane_steps", "total", "Decoding steps run in lanes (one whole pass per core) so far"))
        let stepSeconds = registry.makeDurationHistogram(
            descriptor: metric("step", "seconds", "Seconds per decoding step"),
            buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000].map { .milliseconds($0) })
        let (queue, batchSize, rate) = (queueGauge, batchGauge, rateGauge)
        engine.onStatistics = { s in
            queue.set(Double(s.queued))
            batchSize.set(Double(s.running))
            rate.set(s.tokensPerSecond)
            cachedTokens.set(Double(s.reusedPromptTokens))
            cachedBytes.set(Double(s.promptCacheBytes))
            laneSteps.set(Double(s.laneSteps))
            if s.lastStepRows > 0 {
                stepRows.record(Double(s.lastStepRows))
                stepSeconds.recordNanoseconds(Int64(s.lastStepSeconds * 1e9))
            }
        }
        engine.start()
    }

    /// The Hummingbird application; `onRunning` gets the bound port.
    public func application(onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) -> some ApplicationProtocol {
        let router = Router(context: ServeContext.self)
        router.get("/health") { _, _ in "ok" }
        router.get("/metrics") { [self] _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                body: .init(byteBuffer: ByteBuffer(string: registry.emitToString())))
        }
        router.get("/v1/models") { [self] _, _ in try await answer { try await models() } }
        router.post("/v1/completions") { [self] request, context in
            try await answer { try await completions(try await body(request), chat: false, channel: context.channel) }
        }
        router.post("/v1/chat/completions") { [self] request, context in
            try await answer { try await completions(try await body(request), chat: true, channel: context.channel) }
        }
        router.post("/v1/embeddings") { [self] request, _ in try await answer { try await embeddings(try await body(request)) } }
        router.post("/v1/classify") { [self] request, _ in try await answer { try await classify(try await body(request)) } }
        router.post("/v1/adapters") { [self] request, _ in try await answer { try await loadAdapter(try await body(request)) } }
        router.delete("/v1/adapters/:name") { [self] _, context in
            try await answer { try await unloadAdapter(context.parameters.get("name") ?? "") }
        }
        return Application(
            router: router,
            server: .http1(configuration: .init(idleTimeout: .seconds(Int64(options.idleTimeoutSeconds)))),
            configuration: .init(address: .hostname(options.host, port: options.port), serverName: "reins"),
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? 0) },
            logger: logger)
    }

    // MARK: - Plumbing

    /// The request's body, at most ``ServerOptions/maxBodyBytes``.
    func body(_ request: Request) async throws -> Data {
        var request = request
        // A declared length over the limit is refused before reading any of it.
        if let declared = request.headers[.contentLength].flatMap({ Int($0) }), declared > options.maxBodyBytes {
            throw ServerError.tooLong("the request body is larger than \(options.maxBodyBytes) bytes")
        }
        do {
            let buffer = try await request.collectBody(upTo: options.maxBodyBytes)
            return Data(buffer.readableBytesView)
        } catch {
            throw ServerError.tooLong("the request body is larger than \(options.maxBodyBytes) bytes")
        }
    }

    /// Runs a handler and turns its errors into OpenAI-style JSON errors with their status.
    func answer(_ handler: () async throws -> Response) async -> Response {
        requestsCounter.increment()
        do {
            return try await handler()
        } catch let error as ServerError {
            logger.info("request refused: \(error.status) \(error)")
            return Self.error(error.status, "\(error)")
        } catch let error as DecodingError {
            return Self.error(400, "malformed request: \(Self.describe(error))")
        } catch {
            logger.error("request failed: \(error)")
            return Self.error(500, "\(error)")
        }
    }

    static func error(_ status: Int, _ message: String) -> Response {
        let type = status == 404 ? "not_found_error" : status >= 500 ? "server_error" : "invalid_request_error"
        var response = json(["error": ["message": message, "type": type, "code": status]], status: status)
        if status == 503 { response.headers[.retryAfter] = "1" }
        // The rest of an oversized body is not read: the connection ends with the answer.
        if status == 413 { response.headers[.connection] = "close" }
        return response
    }

    static func json(_ object: Any, status: Int = 200) -> Response {
        Response(
            status: .init(code: status), headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: JSONSerialization.bytes(object))))
    }

    static func describe(_ error: DecodingError) -> String {
        switch error {
        case let .keyNotFound(key, _): return "missing field '\(key.stringValue)'"
        case let .typeMismatch(_, c), let .valueNotFound(_, c):
            return "field '\(c.codingPath.map(\.stringValue).joined(separator: "."))': \(c.debugDescription)"
        case let .dataCorrupted(c):
            return c.codingPath.isEmpty ? "the body is not valid JSON" : "field '\(c.codingPath.map(\.stringValue).joined(separator: "."))': \(c.debugDescription)"
        @unknown default: return "\(error)"
        }
    }

    /// The adapter a `model` field names: nil for the base, else an adapter the model has (404 otherwise). For
    /// `generating`, not a classification or question-answering adapter (400: they answer on `/v1/classify`).
    func adapter(named model: String, generating: Bool = false) async throws -> String? {
        if model == baseName { return nil }
        let (known, task) = try await engine.run { ($0.model.hasAdapter(model), $0.heads[model]?.task) }
        guard known else { throw ServerError.unknownModel(model) }
        if generating, let task {
            throw ServerError.badRequest(
                "'\(model)' is a \(task.rawValue) adapter: it answers on /v1/classify, not by generating")
        }
        return model
    }

    // MARK: - Endpoints

    func models() async throws -> Response {
        let (names, tasks) = try await engine.run { served in
            (served.model.adapterNames.sorted(), served.heads.mapValues { ($0.task.rawValue, $0.labels) })
        }
        let created = Int(Date().timeIntervalSince1970)
        let data = ([baseName] + names).map { name -> [String: Any] in
            var entry: [String: Any] = ["id": name, "object": "model", "created": created, "owned_by": "reins"]
            if name != baseName { entry["parent"] = baseName }
            // Classification and question-answering adapters: their task (served by /v1/classify) and labels.
            if let (task, labels) = tasks[name] { (entry["task"], entry["labels"]) = (task, labels) }
            return entry
        }
        return Self.json(["object": "list", "data": data])
    }

    /// The settings a request asks for, checked.
    func generationOptions(_ s: OpenAI.Sampling) throws -> GenerationOptions {
        let maxTokens = s.max_completion_tokens ?? s.max_tokens ?? 16
        guard (1...options.maxTokens).contains(maxTokens) else {
            throw ServerError.badRequest("max_tokens must be between 1 and \(options.maxTokens), got \(maxTokens)")
        }
        if let n = s.n, n != 1 { throw ServerError.badRequest("n must be 1, got \(n)") }
        let temperature = s.temperature ?? 1
        guard temperature.isFinite, (0...2).contains(temperature) else {
            throw ServerError.badRequest("temperature must be between 0 and 2, got \(temperature)")
        }
        if let p = s.top_p, !(p > 0 && p <= 1) { throw ServerError.badRequest("top_p must be in (0, 1], got \(p)") }
        for (name, v) in [("frequency_penalty", s.frequency_penalty), ("presence_penalty", s.presence_penalty)] {
            if let v, v != 0 { throw ServerError.badRequest("\(name) is not supported (only 0)") }
        }
        let stops = s.stop?.list ?? []
        guard stops.count <= 4, stops.allSatisfy({ !$0.isEmpty }) else {
            throw ServerError.badRequest("stop takes at most 4 non-empty strings")
        }
        return GenerationOptions(
            maxNewTokens: maxTokens, greedy: temperature == 0, temperature: Float(max(temperature, 1e-6)),
            topP: s.top_p.map(Float.init), seed: UInt64(bitPattern: s.seed ?? 0),
            stopTokens: s.ignore_eos == true ? [] : format.stopTokens)
    }

    func completions(_ data: Data, chat: Bool, channel: (any Channel)? = nil) async throws -> Response {
        let decoder = JSONDecoder()
        let sampling = try decoder.decode(OpenAI.Sampling.self, from: data)
        let settings = try generationOptions(sampling)
        let adapter = try await adapter(named: sampling.model, generating: true)
        let prompt: [Int32]
        if chat {
            let request = try decoder.decode(OpenAI.ChatRequest.self, from: data)
            guard !request.messages.isEmpty else { throw ServerError.badRequest("messages must not be empty") }
            let messages = request.messages.map { ChatTemplate.Message(role: $0.role, content: $0.content?.text ?? "") }
            do { prompt = try format.prompt(messages) } catch { throw ServerError.badRequest("the chat template: \(error)") }
        } else {
            let texts = try decoder.decode(OpenAI.CompletionRequest.self, from: data).prompt.list
            guard texts.count == 1 else { throw ServerError.badRequest("prompt must be one string (got \(texts.count))") }
            prompt = format.tokenizer.encode(texts[0])
        }
        guard !prompt.isEmpty else { throw ServerError.badRequest("the prompt is empty") }
        guard prompt.count <= options.maxPromptTokens else {
            throw ServerError.tooLong("the prompt has \(prompt.count) tokens; the most is \(options.maxPromptTokens)")
        }
        let stops = sampling.stop?.list ?? []
        // A whole answer without stop strings needs its tokens at the end only; a stream or a stop string, one by one.
        let (requestID, stream) = try engine.generate(
            prompt: prompt, adapter: adapter, options: settings, perToken: sampling.stream == true || !stops.isEmpty)
        // A client that hangs up (streaming or not) ends its request at the next token boundary.
        let engine = self.engine
        channel?.closeFuture.whenComplete { _ in engine.cancel(requestID) }
        let id = (chat ? "chatcmpl-" : "cmpl-") + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
        let created = Int(Date().timeIntervalSince1970)
        let model = sampling.model
        let object = chat ? "chat.completion" : "text_completion"
        let text = TextAssembler(format: format, stops: stops)
        logger.debug("\(object) \(id): \(prompt.count) prompt tokens, adapter \(adapter ?? "none")")

        if sampling.stream == true {
            @Sendable func chunk(_ piece: String?, finish: String?, first: Bool = false) -> ByteBuffer {
                var choice: [String: Any] = ["index": 0, "finish_reason": finish ?? NSNull()]
                if chat {
                    var delta: [String: Any] = [:]
                    if first { delta["role"] = "assistant" }
                    if let piece { delta["content"] = piece }
                    choice["delta"] = delta
                } else {
                    choice["text"] = piece ?? ""
                    choice["logprobs"] = NSNull()
                }
                let body: [String: Any] = [
                    "id": id, "object": chat ? "chat.completion.chunk" : "text_completion", "created": created,
                    "model": model, "choices": [choice],
                ]
                return ByteBuffer(string: "data: " + String(decoding: JSONSerialization.bytes(body), as: UTF8.self) + "\n\n")
            }
            let counter = tokensCounter
            return Response(
                status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
                body: .init { writer in
                    // However this ends (a client that hung up makes a write throw), the request leaves the batch.
                    defer { engine.cancel(requestID) }
                    if chat { try await writer.write(chunk(nil, finish: nil, first: true)) }
                    var finish: String?
                    for await output in stream {
                        switch output {
                        case .cachedPromptTokens:
                            continue
                        case let .token(t):
                            counter.increment()
                            let (piece, stopped) = text.add(t)
                            if !piece.isEmpty { try await writer.write(chunk(piece, finish: nil)) }
                            if stopped { finish = "stop" }
                        case let .finished(f):
                            finish = finish ?? (f == .stop ? "stop" : "length")
                        case let .failed(message, _):
                            let error = ["error": ["message": message, "type": "server_error"]]
                            try await writer.write(ByteBuffer(string: "data: " + String(decoding: JSONSerialization.bytes(error), as: UTF8.self) + "\n\n"))
                            finish = "error"
                        }
                        if finish != nil { break }
                    }
                    // Leaving the loop drops the stream: a request stopped by a stop string leaves the batch.
                    let rest = text.flush()
                    if !rest.isEmpty { try await writer.write(chunk(rest, finish: nil)) }
                    if finish != "error" { try await writer.write(chunk(nil, finish: finish ?? "stop")) }
                    try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                    try await writer.finish(nil)
                })
        }

        var finish = "length"
        var cached = 0
        consume: for await output in stream {
            switch output {
            case let .cachedPromptTokens(n):
                cached = n
            case let .token(t):
                tokensCounter.increment()
                if text.add(t).stopped { finish = "stop"; break consume }
            case let .finished(f):
                finish = f == .stop ? "stop" : (text.stopped ? "stop" : "length")
            case let .failed(message, status):
                throw status == 413 ? ServerError.tooLong(message) : status == 400 ? ServerError.badRequest(message) : ServerError.busy(message)
            }
        }
        _ = text.flush()
        let usage: [String: Any] = [
            "prompt_tokens": prompt.count, "completion_tokens": text.tokenCount,
            "total_tokens": prompt.count + text.tokenCount, "prompt_tokens_details": ["cached_tokens": cached],
        ]
        let choice: [String: Any] =
            chat
            ? ["index": 0, "message": ["role": "assistant", "content": text.text], "finish_reason": finish, "logprobs": NSNull()]
            : ["index": 0, "text": text.text, "finish_reason": finish, "logprobs": NSNull()]
        return Self.json(["id": id, "object": object, "created": created, "model": model, "choices": [choice], "usage": usage])
    }

    func embeddings(_ data: Data) async throws -> Response {
        let request = try JSONDecoder().decode(OpenAI.EmbeddingRequest.self, from: data)
        let base64 = request.encoding_format == "base64"
        if let f = request.encoding_format, f != "float", !base64 {
            throw ServerError.badRequest("encoding_format must be float or base64, got \(f)")
        }
        let adapter = try await adapter(named: request.model)
        let texts = request.input.list
        guard !texts.isEmpty, texts.count <= 256 else { throw ServerError.badRequest("input takes 1 to 256 strings") }
        let ids = texts.map { format.tokenizer.encode($0) }
        try checkInputs(ids)
        let vectors = try await engine.run { served in
            try Autograd.withoutGradients { try Self.meanStates(served.model, ids, adapter: adapter) }
        }
        // base64: the float32 values' little-endian bytes (what the openai client asks for by default).
        let data = vectors.enumerated().map { i, v -> [String: Any] in
            let encoded: Any = base64 ? v.withUnsafeBufferPointer { Data(buffer: $0).base64EncodedString() } : v
            return ["object": "embedding", "index": i, "embedding": encoded]
        }
        let tokens = ids.map(\.count).reduce(0, +)
        return Self.json([
            "object": "list", "data": data, "model": request.model,
            "usage": ["prompt_tokens": tokens, "total_tokens": tokens],
        ])
    }

    /// Refuses a batch of inputs (embeddings, classify) with an empty one (400), one over ``ServerOptions/maxPromptTokens``
    /// or more padded tokens than ``ServerOptions/maxBatchTokens`` (413).
    func checkInputs(_ sequences: [[Int32]]) throws {
        if let i = sequences.firstIndex(where: \.isEmpty) { throw ServerError.badRequest("input \(i) is empty") }
        let longest = sequences.map(\.count).max() ?? 0
        guard longest <= options.maxPromptTokens else {
            throw ServerError.tooLong("an input has \(longest) tokens; the most is \(options.maxPromptTokens)")
        }
        let padded = sequences.count * longest
        guard padded <= options.maxBatchTokens else {
            throw ServerError.tooLong(
                "the inputs make \(padded) padded tokens (inputs × the longest); the most is \(options.maxBatchTokens)")
        }
    }

    /// The mean of each text's final hidden states (its tokens only), with `adapter` on every row.
    static func meanStates(_ model: any CausalLanguageModel, _ ids: [[Int32]], adapter: String?) throws -> [[Float]] {
        let B = ids.count, T = ids.map(\.count).max() ?? 0
        let h = try model.withAdapters(perRow: [String?](repeating: adapter, count: B)) {
            try model.decoderStates(try rightPadded(ids, with: 0), attentionMask: try paddingMask(ids), positionIDs: nil, cache: nil)
        }
        let rows = h.shape[1], C = h.shape[2], values = h.scalars
        return ids.enumerated().map { b, row in
            // Prompt-tuning rows come first; the tokens are the last T rows.
            var sum = [Float](repeating: 0, count: C)
            for t in 0..<row.count {
                let base = (b * rows + rows - T + t) * C
                for c in 0..<C { sum[c] += values[base + c] }
            }
            return sum.map { $0 / Float(row.count) }
        }
    }

    func loadAdapter(_ data: Data) async throws -> Response {
        let request = try JSONDecoder().decode(OpenAI.AdapterRequest.self, from: data)
        let url = URL(fileURLWithPath: request.path)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ServerError.badRequest("no adapter directory at \(request.path)")
        }
        try await engine.run { try $0.loadAdapter(request.name, from: url) }
        logger.info("adapter '\(request.name)' loaded from \(request.path)")
        return Self.json(["id": request.name, "object": "model", "owned_by": "reins", "parent": baseName], status: 201)
    }

    func unloadAdapter(_ name: String) async throws -> Response {
        let engine = self.engine
        try await engine.run { served in
            guard served.model.adapterNames.contains(name) else { throw ServerError.notFound("no adapter named '\(name)'") }
            guard !engine.adaptersInUse.contains(name) else {
                throw ServerError.conflict("adapter '\(name)' has requests running or waiting; try again when they finish")
            }
            try served.unloadAdapter(name)
        }
        logger.info("adapter '\(name)' unloaded")
        return Self.json(["id": name, "object": "model", "deleted": true])
    }
}

/// The text of a request's new tokens as they come: whole characters only (a character may span tokens), stopped at
/// the first stop string (which is cut off, as OpenAI does), without the chat's stop tokens.
final class TextAssembler: @unchecked Sendable {
    let format: ChatFormat
    let stops: [String]
    private(set) var tokens: [Int32] = []
    private(set) var text = ""
    private var sent = 0
    private(set) var stopped = false
    var tokenCount: Int { tokens.count }

    init(format: ChatFormat, stops: [String]) { (self.format, self.stops) = (format, stops) }

    /// Adds a token; returns the text that is now safe to send and whether a stop string ended the answer.
    func add(_ token: Int32) -> (String, stopped: Bool) {
        guard !stopped else { return ("", true) }
        tokens.append(token)
        if format.stopTokens.contains(token) { return (take(final: false), false) }
        text = format.tokenizer.decode(tokens.filter { !format.stopTokens.contains($0) })
        if let cut = stops.compactMap({ text.range(of: $0)?.lowerBound }).min() {
            text = String(text[..<cut])
            stopped = true
            return (take(final: true), true)
        }
        return (take(final: false), false)
    }

    /// What is left to send at the end.
    func flush() -> String { take(final: true) }

    /// The unsent text, holding back a partial character and anything a stop string might still begin with.
    private func take(final: Bool) -> String {
        var end = text.count
        if !final {
            if text.hasSuffix("\u{FFFD}") { end -= 1 }
            let longest = stops.map { $0.count - 1 }.max() ?? 0
            end = max(sent, end - longest)
        }
        guard end > sent else { return "" }
        let piece = String(text.dropFirst(sent).prefix(end - sent))
        sent = end
        return piece
    }
}

/// A metric named `reins_<name>_<unit>` on `/metrics`.
private func metric(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
    MetricNameDescriptor(namespace: "reins", metricName: name, unitName: unit, helpText: help)
}
