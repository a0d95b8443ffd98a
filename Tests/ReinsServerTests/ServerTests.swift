import Foundation
import Logging
import Reins
import ReinsServer
import ReinsTensor
import ReinsTestSupport
import Testing

/// `reins serve`'s application started on a loopback port inside the suite, spoken to over HTTP: what each endpoint
/// answers equals what the library computes for the same adapter; requests for different adapters are batched
/// together; bad and hostile requests get their error status and the server keeps serving.
@Suite(.serialized)
struct ServerTests {
    /// A small Llama with SmolLM2's tokenizer and chat template (random weights, far from uniform so that greedy
    /// choices are clear), and adapters of three methods.
    static func served() throws -> ServedModel {
        let folder = Fixtures.directory.appendingPathComponent("tokenizers")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: folder.appendingPathComponent("chat.json"))) as? [String: Any] ?? [:]
        let smol = (json["templates"] as? [String: Any])?["smollm2"] as? [String: Any] ?? [:]
        let tokenizer = try BPETokenizer(tokenizerJSON: folder.appendingPathComponent("smollm/tokenizer.json").path)
        let format = ChatFormat(
            tokenizer: tokenizer, template: try ChatTemplate(smol["template"] as? String ?? ""),
            stopTokens: Set([tokenizer.id(of: "<|im_end|>")].compactMap { $0 }))
        let config = try LlamaConfig(
            vocabularySize: 49152, hidden: 30, intermediate: 44, layers: 2, heads: 5, keyValueHeads: 1)
        let model = try LlamaForCausalLM(config, seed: 3)
        for (i, p) in model.parameters.enumerated() {
            p.replaceValue(try p.value + Tensor.normal(p.value.shape, std: 0.5, seed: UInt64(1000 + i)))
        }
        for (i, (name, method)) in Self.methods.enumerated() {
            try model.addAdapter(name, method, seed: UInt64(i + 1))
            for (j, p) in model.parameters(ofAdapter: name).enumerated() {
                p.replaceValue(try p.value.detached() + Tensor.normal(p.value.shape, std: 0.5, seed: UInt64(50 * i + j)))
            }
        }
        model.activateAdapter(nil)
        model.freeze()
        return ServedModel(model: model, format: format, baseName: "tiny")
    }

    static let methods: [(String, AdapterMethod)] = [
        ("lora", .lora(LoRAConfig(rank: 4, alpha: 8, targets: ["q_proj", "v_proj", "down_proj"]))),
        ("ia3", .ia3()), ("prefix", .prefix(length: 3)),
    ]

    final class Box<T>: @unchecked Sendable {
        private let lock = NSLock()
        private var value: T
        init(_ v: T) { value = v }
        var get: T { lock.lock(); defer { lock.unlock() }; return value }
        func set(_ v: T) { lock.lock(); value = v; lock.unlock() }
    }

    /// A running server on a free port.
    struct Running {
        let server: ReinsServer
        let client: HTTPTestClient
        let task: Task<Void, any Error>
        func stop() {
            task.cancel()
            server.engine.stop()
        }
    }

    static func start(served given: ServedModel? = nil, _ configure: (inout ServerOptions) -> Void = { _ in }) async throws
        -> Running
    {
        var options = ServerOptions()
        options.port = 0
        configure(&options)
        var quiet = Logger(label: "reins.serve.test")
        quiet.logLevel = .critical  // the shutdown at the end of each test logs a cancellation
        let server = try ReinsServer(served: try given ?? served(), options: options, logger: quiet)
        let port = Box(0)
        let app = server.application { port.set($0) }
        let task = Task { try await app.run() }
        for _ in 0..<200 where port.get == 0 { try await Task.sleep(nanoseconds: 50_000_000) }
        guard port.get != 0 else { throw HTTPTestClient.Failure(description: "the server did not start") }
        return Running(server: server, client: HTTPTestClient(port: port.get), task: task)
    }

    /// Runs blocking socket work on its own thread (never on the cooperative pool the server's handlers need).
    static func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { c in
            Thread { c.resume(with: Result { try body() }) }.start()
        }
    }

    static func messages(_ text: String) -> [[String: String]] {
        [["role": "system", "content": "Translate to French."], ["role": "user", "content": text]]
    }

    /// What the library gives for `messages` with `adapter` active: the answer's text (greedy).
    static func libraryAnswer(_ running: Running, _ text: String, adapter: String?, maxTokens: Int) async throws -> String {
        try await running.server.engine.run { served in
            let format = served.format
            let prompt = try format.prompt(Self.messages(text).map { ChatTemplate.Message(role: $0["role"]!, content: $0["content"]!) })
            served.model.activateAdapter(adapter)
            defer { served.model.activateAdapter(nil) }
            let out = try served.model.generate(
                prompts: [prompt], options: GenerationOptions(maxNewTokens: maxTokens, stopTokens: format.stopTokens))[0]
            return format.tokenizer.decode(out.dropFirst(prompt.count).filter { !format.stopTokens.contains($0) })
        }
    }

    @Test func endpointsAnswerWhatTheLibraryComputes() async throws {
        let running = try await Self.start()
        defer { running.stop() }
        let client = running.client
        let models = try await Self.blocking { try client.request("GET", "/v1/models") }
        #expect(models.status == 200)
        let ids = (models.json["data"] as? [[String: Any]])?.compactMap { $0["id"] as? String } ?? []
        #expect(ids == ["tiny", "ia3", "lora", "prefix"])

        for adapter in ["lora", "prefix", "tiny"] {
            let expected = try await Self.libraryAnswer(running, "white", adapter: adapter == "tiny" ? nil : adapter, maxTokens: 6)
            let reply = try await Self.blocking {
                try client.post("/v1/chat/completions", ["model": adapter, "messages": Self.messages("white"), "max_tokens": 6, "temperature": 0])
            }
            #expect(reply.status == 200, "\(reply.text)")
            let choice = (reply.json["choices"] as? [[String: Any]])?.first
            #expect((choice?["message"] as? [String: Any])?["content"] as? String == expected, "\(adapter)")
            #expect(reply.json["object"] as? String == "chat.completion")
            // Streamed: the deltas add up to the same answer, then [DONE].
            let streamed = try await Self.blocking {
                try client.post("/v1/chat/completions", ["model": adapter, "messages": Self.messages("white"), "max_tokens": 6, "temperature": 0, "stream": true])
            }
            #expect(streamed.headers["content-type"]?.hasPrefix("text/event-stream") == true)
            let events = streamed.events
            #expect(events.last == "[DONE]")
            let text = events.dropLast().compactMap { e -> String? in
                let o = (try? JSONSerialization.jsonObject(with: Data(e.utf8))) as? [String: Any]
                return (((o?["choices"] as? [[String: Any]])?.first?["delta"]) as? [String: Any])?["content"] as? String
            }.joined()
            #expect(text == expected, "\(adapter) streamed")
        }
        // Plain completions and a stop string (cut off, finish_reason stop).
        let completion = try await Self.blocking {
            try client.post("/v1/completions", ["model": "ia3", "prompt": "The cat", "max_tokens": 5, "temperature": 0])
        }
        #expect(completion.status == 200 && completion.json["object"] as? String == "text_completion", "\(completion.text)")
        let full = ((completion.json["choices"] as? [[String: Any]])?.first?["text"] as? String) ?? ""
        if let stop = full.dropFirst(1).first.map(String.init), !stop.trimmingCharacters(in: .whitespaces).isEmpty {
            let cut = try await Self.blocking {
                try client.post("/v1/completions", ["model": "ia3", "prompt": "The cat", "max_tokens": 5, "temperature": 0, "stop": [stop]])
            }
            let choice = (cut.json["choices"] as? [[String: Any]])?.first
            #expect(choice?["text"] as? String == String(full[..<full.range(of: stop)!.lowerBound]))
            #expect(choice?["finish_reason"] as? String == "stop")
        }
        // Embeddings: one vector per input, the adapter's own.
        let embedded = try await Self.blocking {
            try client.post("/v1/embeddings", ["model": "lora", "input": ["hello there", "a cat"]])
        }
        let vectors = (embedded.json["data"] as? [[String: Any]])?.compactMap { $0["embedding"] as? [Double] } ?? []
        #expect(vectors.count == 2 && vectors.allSatisfy { $0.count == 30 })
        let base = try await Self.blocking { try client.post("/v1/embeddings", ["model": "tiny", "input": "hello there"]) }
        let baseVector = (base.json["data"] as? [[String: Any]])?.first?["embedding"] as? [Double] ?? []
        #expect(baseVector.count == 30 && baseVector != vectors.first, "the adapter changes the embedding")
        // base64 (the openai client's default): the same float32 values, little-endian.
        let packed = try await Self.blocking {
            try client.post("/v1/embeddings", ["model": "tiny", "input": "hello there", "encoding_format": "base64"])
        }
        let text = (packed.json["data"] as? [[String: Any]])?.first?["embedding"] as? String ?? ""
        let floats = (Data(base64Encoded: text) ?? Data()).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        #expect(floats.map(Double.init) == baseVector.map { Double(Float($0)) })
        let metrics = try await Self.blocking { try client.request("GET", "/metrics") }
        #expect(metrics.status == 200 && metrics.text.contains("reins_generated_tokens_total"))
        // The per-step histograms counted the decoding steps the completions above took.
        func count(_ name: String) -> Double? {
            metrics.text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ")[1]) }
        }
        #expect((count("reins_step_rows_count") ?? 0) > 0)
        #expect(count("reins_step_rows_count") == count("reins_step_seconds_count"))
    }

    /// `ignore_eos` (a load test's fixed-length answers): with the stop token set to one the greedy answer reaches
    /// early, the answer stops there without it and runs to `max_tokens` with it. The second request, the same
    /// prompt, takes all but its last token from the prompt cache (`usage.prompt_tokens_details.cached_tokens`).
    @Test func ignoreEOSRunsPastTheStopTokens() async throws {
        let base = try Self.served()
        let prompt = base.format.tokenizer.encode("Once upon a time")
        let greedy = Array(try base.model.generate(prompts: [prompt], options: GenerationOptions(maxNewTokens: 6))[0].dropFirst(prompt.count))
        try #require(greedy.count == 6)
        var format = base.format
        format.stopTokens = [greedy[2]]
        let stopsAfter = greedy.firstIndex(of: greedy[2])! + 1
        let running = try await Self.start(served: ServedModel(model: base.model, format: format, baseName: "tiny"))
        defer { running.stop() }
        let client = running.client
        var cached: [Int?] = [], promptTokens: [Int?] = []
        for ignore in [false, true] {
            let reply = try await Self.blocking {
                try client.post("/v1/completions", [
                    "model": "tiny", "prompt": "Once upon a time", "max_tokens": 6, "temperature": 0, "ignore_eos": ignore,
                ])
            }
            #expect(reply.status == 200, "\(reply.text)")
            let choice = (reply.json["choices"] as? [[String: Any]])?.first
            let usage = reply.json["usage"] as? [String: Any]
            #expect(usage?["completion_tokens"] as? Int == (ignore ? 6 : stopsAfter))
            #expect(choice?["finish_reason"] as? String == (ignore ? "length" : "stop"))
            cached.append((usage?["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int)
            promptTokens.append(usage?["prompt_tokens"] as? Int)
        }
        #expect(promptTokens == [prompt.count, prompt.count])
        #expect(cached == [0, prompt.count - 1], "the repeated prompt's start from the prompt cache")
    }

    /// A reader that wants the whole answer (`perToken: false`: a request neither streamed nor cut by stop strings)
    /// gets what a reader taking the tokens one by one gets: the same tokens in order, then `.finished`; first, how
    /// many prompt tokens came from the prompt cache (the second request: all but its prompt's last).
    @Test func tokensHeldToTheEndEqualTheOnesSentOneByOne() async throws {
        let engine = try Engine(served: try Self.served(), promptCacheBytes: 1 << 20)
        engine.start()
        defer { engine.stop() }
        let prompt: [Int32] = [5, 9, 14, 3, 22]
        func outputs(perToken: Bool) async throws -> [String] {
            let (_, stream) = try engine.generate(
                prompt: prompt, adapter: "lora", options: GenerationOptions(maxNewTokens: 7), perToken: perToken)
            var seen: [String] = []
            for await output in stream {
                switch output {
                case let .cachedPromptTokens(n): seen.append("cached \(n)")
                case let .token(t): seen.append("token \(t)")
                case let .finished(f): seen.append("finished \(f)")
                case let .failed(message, _): seen.append("failed \(message)")
                }
            }
            return seen
        }
        let one = try await outputs(perToken: true), held = try await outputs(perToken: false)
        #expect(one.count == 9 && one.first == "cached 0" && one.last == "finished length", "\(one)")
        #expect(held.dropFirst() == one.dropFirst(), "the same tokens, then the finish")
        #expect(held.first == "cached \(prompt.count - 1)")
        #expect(throws: ModelError.self) { try Engine(served: try Self.served(), promptCacheBytes: -1) }
    }

    /// Eight clients at once, each on an adapter (or the base): every answer equals its adapter's alone, and the engine
    /// decoded several requests in one step — in one pass, or in lanes from one row per core (counted in `/metrics`).
    @Test(arguments: [0, 1])
    func concurrentClientsOnDifferentAdaptersAreBatched(laneRows: Int) async throws {
        let running = try await Self.start { $0.laneRows = laneRows }
        defer { running.stop() }
        let client = running.client
        let adapters = ["lora", "ia3", "prefix", "tiny", "lora", "prefix", "ia3", "tiny"]
        let words = ["white", "cat", "house", "river", "green", "bread", "moon", "door"]
        var expected: [String] = []
        for (a, w) in zip(adapters, words) {
            expected.append(try await Self.libraryAnswer(running, w, adapter: a == "tiny" ? nil : a, maxTokens: 12))
        }
        let answers = try await withThrowingTaskGroup(of: (Int, String).self) { group in
            for i in adapters.indices {
                let (a, w) = (adapters[i], words[i])
                group.addTask {
                    let reply = try await Self.blocking {
                        try client.post("/v1/chat/completions", ["model": a, "messages": Self.messages(w), "max_tokens": 12, "temperature": 0])
                    }
                    let choice = (reply.json["choices"] as? [[String: Any]])?.first
                    return (i, ((choice?["message"] as? [String: Any])?["content"] as? String) ?? "status \(reply.status)")
                }
            }
            var out = [String](repeating: "", count: adapters.count)
            for try await (i, text) in group { out[i] = text }
            return out
        }
        #expect(answers == expected)
        let statistics = running.server.engine.statistics
        #expect(statistics.largestBatch > 1, "requests shared decoding steps")
        // Lanes need a second core (CI's machines have two).
        #expect(laneRows > 0 && Parallel.threadCount > 1 ? statistics.laneSteps > 0 : statistics.laneSteps == 0)
        let metrics = try await Self.blocking { try client.request("GET", "/metrics") }
        let line = metrics.text.split(separator: "\n").first { $0.hasPrefix("reins_lane_steps_total ") }
        #expect(line.flatMap { Double($0.split(separator: " ")[1]) } == Double(statistics.laneSteps))
    }

    @Test func badAndHostileRequestsGetTheirStatusAndTheServerKeepsServing() async throws {
        let running = try await Self.start { $0.maxTokens = 64; $0.maxPromptTokens = 50; $0.maxBodyBytes = 64 << 10 }
        defer { running.stop() }
        let client = running.client
        func status(_ path: String, _ body: Data) async throws -> (Int, String) {
            let r = try await Self.blocking { try client.request("POST", path, body: body) }
            return (r.status, ((r.json["error"] as? [String: Any])?["message"] as? String) ?? r.text)
        }
        func object(_ o: [String: Any]) -> Data { try! JSONSerialization.data(withJSONObject: o) }
        let chat = "/v1/chat/completions"
        let cases: [(String, String, Data, Int, String)] = [
            ("invalid JSON", chat, Data("{\"model\": ".utf8), 400, "not valid JSON"),
            ("missing messages", chat, object(["model": "lora"]), 400, "messages"),
            ("wrong type", chat, object(["model": "lora", "messages": "hi"]), 400, "messages"),
            ("huge max_tokens", chat, object(["model": "lora", "messages": Self.messages("a"), "max_tokens": 1 << 40]), 400, "max_tokens"),
            ("negative max_tokens", chat, object(["model": "lora", "messages": Self.messages("a"), "max_tokens": -5]), 400, "max_tokens"),
            ("negative temperature", chat, object(["model": "lora", "messages": Self.messages("a"), "temperature": -1]), 400, "temperature"),
            ("n of 3", chat, object(["model": "lora", "messages": Self.messages("a"), "n": 3]), 400, "n must be 1"),
            ("unknown adapter", chat, object(["model": "nope", "messages": Self.messages("a")]), 404, "nope"),
            ("empty messages", chat, object(["model": "lora", "messages": []]), 400, "empty"),
            ("long prompt", "/v1/completions", object(["model": "lora", "prompt": String(repeating: "word ", count: 200)]), 413, "tokens"),
            ("10 MB body", chat, Data(repeating: UInt8(ascii: " "), count: 10 << 20), 413, "larger than"),
            ("wrong content type of input", "/v1/embeddings", object(["model": "lora", "input": 5]), 400, "input"),
            ("embedding of nothing", "/v1/embeddings", object(["model": "lora", "input": [String]()]), 400, "input"),
        ]
        for (name, path, body, expected, words) in cases {
            let (code, message) = try await status(path, body)
            #expect(code == expected, "\(name): \(code) \(message)")
            #expect(message.contains(words), "\(name): \(message)")
        }
        // A client that stalls mid-request holds only its own connection.
        let stalled = try client.connect()
        try HTTPTestClient.send(stalled, Data("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"mod".utf8))
        let answer = try await Self.blocking {
            try client.post("/v1/chat/completions", ["model": "ia3", "messages": Self.messages("cat"), "max_tokens": 3, "temperature": 0])
        }
        #expect(answer.status == 200)
        close(stalled)
        // Still serving after all of it.
        let models = try await Self.blocking { try client.request("GET", "/v1/models") }
        #expect(models.status == 200)
    }

    /// A full queue answers 503 with Retry-After; a client that hangs up mid-stream frees its place in the batch.
    @Test func aFullQueueAnswers503AndAClientThatLeavesFreesItsSlot() async throws {
        let budget = 20000
        let running = try await Self.start { $0.batchCapacity = 1; $0.queueLimit = 1; $0.maxTokens = budget }
        defer { running.stop() }
        let client = running.client
        // One streaming request decoding for a long time, then one waiting: the next is refused.
        let first = try client.connect()
        let body = try JSONSerialization.data(withJSONObject: [
            "model": "lora", "prompt": "one two", "max_tokens": budget, "temperature": 0.9, "stream": true,
        ])
        try HTTPTestClient.send(first, HTTPTestClient.head("POST", "/v1/completions", length: body.count) + body)
        // Waiting for the stream's first bytes blocks: on a thread of its own, never on the cooperative pool that the
        // server's handlers (and, in a parallel test run, other suites) need — blocking one of its two threads there
        // starved the server under ThreadSanitizer until the read timed out.
        let started = try await Self.blocking {
            var buffer = [UInt8](repeating: 0, count: 4096)
            return recv(first, &buffer, buffer.count, 0)
        }
        #expect(started > 0, "the stream started")
        let second = Task {
            try await Self.blocking {
                try client.post("/v1/completions", ["model": "ia3", "prompt": "x", "max_tokens": 2])
            }
        }
        // Until the long request runs and the second waits in the queue (seconds on a loaded machine: a third sent
        // before it would be queued in its place and wait behind the long request). The stream's first bytes are its
        // head, written before the engine admits the request: a stalled engine still had the first request queued,
        // the second and third raced for the place it left, and the third won once.
        func settled() -> Bool {
            let now = running.server.engine.statistics
            return now.running == 1 && now.queued == 1
        }
        for _ in 0..<1500 where !settled() { try await Task.sleep(nanoseconds: 20_000_000) }
        try #require(settled(), "the long request runs and the second is queued")
        let refused = try await Self.blocking { try client.post("/v1/completions", ["model": "ia3", "prompt": "x", "max_tokens": 2]) }
        #expect(refused.status == 503 && refused.headers["retry-after"] == "1", "\(refused.status) \(refused.text)")
        // Hanging up mid-stream: the long request leaves the batch and the waiting one runs.
        close(first)
        let waited = try await second.value
        #expect(waited.status == 200, "\(waited.text)")
        for _ in 0..<1500 where running.server.engine.statistics.running > 0 { try await Task.sleep(nanoseconds: 20_000_000) }
        #expect(running.server.engine.statistics.running == 0)
        #expect(running.server.engine.statistics.generatedTokens < budget / 2, "the abandoned request did not run to its budget")
    }

    /// Adapters load and unload while the server runs.
    /// Also with LoRA weights read from half-precision or 8-bit copies: an adapter's copies are made when it loads,
    /// and go when it is unloaded (the others' are made again, together).
    @Test(arguments: [nil, .half, .int8] as [LoRACopies.Precision?])
    func adaptersLoadAndUnloadAtRunTime(loraPrecision: LoRACopies.Precision?) async throws {
        let running = try await Self.start { $0.loraPrecision = loraPrecision }
        defer { running.stop() }
        let client = running.client
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("reins-serve-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        // Save the LoRA adapter from the served model, then load it again under a new name.
        try await running.server.engine.run { try $0.model.saveAdapter("lora", to: dir) }
        let loaded = try await Self.blocking { try client.post("/v1/adapters", ["name": "lora2", "path": dir.path]) }
        #expect(loaded.status == 201, "\(loaded.text)")
        let copies = { try await running.server.engine.run { $0.loraCopies?.count ?? 0 } }
        // Two adapters' LoRAs, each on q_proj, v_proj and down_proj of the 2 layers, copied as they loaded.
        #expect(try await copies() == (loraPrecision != nil ? 12 : 0))
        let again = try await Self.blocking { try client.post("/v1/adapters", ["name": "lora2", "path": dir.path]) }
        #expect(again.status == 409)
        let missing = try await Self.blocking { try client.post("/v1/adapters", ["name": "x", "path": "/nonexistent/adapter"]) }
        #expect(missing.status == 400)
        func answer(_ model: String) async throws -> (Int, String?) {
            let r = try await Self.blocking {
                try client.post("/v1/chat/completions", ["model": model, "messages": Self.messages("white"), "max_tokens": 6, "temperature": 0])
            }
            return (r.status, ((r.json["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String)
        }
        let (s1, a1) = try await answer("lora"), (s2, a2) = try await answer("lora2")
        #expect(s1 == 200 && s2 == 200 && a1 == a2, "the reloaded adapter answers as the original")
        #expect(try await copies() == (loraPrecision != nil ? 12 : 0), "reading made no further copy")
        let deleted = try await Self.blocking { try client.request("DELETE", "/v1/adapters/lora2") }
        #expect(deleted.status == 200)
        #expect(try await copies() == (loraPrecision != nil ? 6 : 0), "the remaining adapter's copies only")
        #expect(try await answer("lora2").0 == 404)
        #expect(try await Self.blocking { try client.request("DELETE", "/v1/adapters/lora2") }.status == 404)
    }

    /// Classification and question-answering adapters beside the generation ones: a PEFT `SEQ_CLS` LoRA saved from a
    /// Llama sequence classifier on the served decoder's weights answers on /v1/classify what that classifier computes;
    /// as `TOKEN_CLS` its last token agrees; a `QUESTION_ANS` adapter picks the best-scoring span of the context; wrong
    /// uses are named 400s.
    @Test func classificationAndQuestionAnsweringAdapters() async throws {
        let running = try await Self.start()
        defer { running.stop() }
        let client = running.client
        let dir = try temporaryDirectory()
        let texts = ["a wonderful film", "the worst day of my life", "ok"]
        let labels = ["negative", "neutral", "positive"]
        // The classifier: the served decoder's weights, a LoRA and its own 3-label head; each text's logits alone.
        let expected: [[Float]] = try await running.server.engine.run { served in
            guard let base = served.model as? LlamaForCausalLM else { throw ModelError.badInput("not a Llama") }
            var config = base.model.config
            config.labelCount = 3
            let classifier = try LlamaForSequenceClassification(config, seed: 9)
            let weights = Dictionary(base.namedParameters().map { ($0.key, $0.parameter) }, uniquingKeysWith: { a, _ in a })
            for (key, p) in classifier.namedParameters() where key.hasPrefix("model.") {
                p.replaceValue(try #require(weights[key]).value)
            }
            try classifier.addAdapter(
                "sentiment", .lora(LoRAConfig(rank: 3, alpha: 6, targets: ["q_proj", "v_proj"])), labels: 3, seed: 5)
            for (j, p) in classifier.parameters(ofAdapter: "sentiment").enumerated() {
                p.replaceValue(try p.value.detached() + Tensor.normal(p.value.shape, std: 0.5, seed: UInt64(700 + j)))
            }
            try classifier.saveAdapter("sentiment", to: dir.appendingPathComponent("sentiment"))
            return try Autograd.withoutGradients {
                try texts.map { t in
                    let ids = served.format.tokenizer.encode(t)
                    return try classifier.logits(try IntTensor(shape: [1, ids.count], values: ids)).scalars
                }
            }
        }
        let sentiment = dir.appendingPathComponent("sentiment")
        try JSONSerialization.data(withJSONObject: labels).write(to: sentiment.appendingPathComponent("labels.json"))
        // The same adapter read as a token classifier, and with a task type that takes no head.
        func variant(_ name: String, task: String) throws -> URL {
            let url = dir.appendingPathComponent(name)
            try FileManager.default.copyItem(at: sentiment, to: url)
            var config = try Checkpoint.readJSON(url.appendingPathComponent("adapter_config.json"))
            config["task_type"] = task
            try JSONSerialization.data(withJSONObject: config).write(to: url.appendingPathComponent("adapter_config.json"))
            return url
        }
        // A question-answering adapter: the LoRA, and a 2-row `qa_outputs` head with a bias.
        let reader = try variant("reader", task: "QUESTION_ANS")
        let file = try SafeTensorsFile(path: reader.appendingPathComponent("adapter_model.safetensors").path)
        var tensors = Dictionary(uniqueKeysWithValues: try file.tensorNames.map { ($0, try file.tensor($0)) })
        let removed = tensors.removeValue(forKey: "base_model.model.score.weight")
        let score = try #require(removed)
        tensors["base_model.model.qa_outputs.weight"] = try score.slice(axis: 0, 0..<2)
        tensors["base_model.model.qa_outputs.bias"] = try Tensor(shape: [2], values: [0.3, -0.2])
        try SafeTensorsFile.write(tensors, to: reader.appendingPathComponent("adapter_model.safetensors").path)
        let adapters = [
            ("sentiment", sentiment), ("tagger", try variant("tagger", task: "TOKEN_CLS")), ("reader", reader),
        ]
        for (name, url) in adapters {
            let loaded = try await Self.blocking { try client.post("/v1/adapters", ["name": name, "path": url.path]) }
            #expect(loaded.status == 201, "\(name): \(loaded.text)")
        }
        let bad = try variant("bad", task: "CAUSAL_LM").path
        let refused = try await Self.blocking { try client.post("/v1/adapters", ["name": "bad", "path": bad]) }
        #expect(refused.status == 400 && refused.text.contains("task_type"), "\(refused.text)")

        let models = try await Self.blocking { try client.request("GET", "/v1/models") }
        let entries = (models.json["data"] as? [[String: Any]]) ?? []
        let entry = entries.first { $0["id"] as? String == "sentiment" }
        #expect(entry?["task"] as? String == "SEQ_CLS" && entry?["labels"] as? [String] == labels)
        #expect(entries.first { $0["id"] as? String == "reader" }?["task"] as? String == "QUESTION_ANS")
        #expect(entries.first { $0["id"] as? String == "lora" }?["task"] == nil)

        // Sequence classification: the classifier's logits, its softmax and the label of the largest.
        let classified = try await Self.blocking { try client.post("/v1/classify", ["model": "sentiment", "input": texts]) }
        #expect(classified.status == 200, "\(classified.text)")
        let rows = (classified.json["data"] as? [[String: Any]]) ?? []
        #expect(rows.count == texts.count)
        for (i, row) in rows.enumerated() {
            let logits = (row["logits"] as? [Double])?.map(Float.init) ?? []
            #expect(logits.count == 3 && zip(logits, expected[i]).allSatisfy { abs($0 - $1) < 1e-4 }, "\(logits) vs \(expected[i])")
            let best = expected[i].indices.max { expected[i][$0] < expected[i][$1] }!
            #expect(row["label"] as? String == labels[best])
            let probs = (row["probs"] as? [Double]) ?? []
            #expect(abs(probs.reduce(0, +) - 1) < 1e-5 && probs.indices.max { probs[$0] < probs[$1] } == best)
        }
        // Token classification: one label per token; the last token's is the sequence classifier's (same head, same
        // state).
        let tagged = try await Self.blocking { try client.post("/v1/classify", ["model": "tagger", "input": texts[1]]) }
        let tokens = ((tagged.json["data"] as? [[String: Any]])?.first?["tokens"] as? [[String: Any]]) ?? []
        let ids = running.server.format.tokenizer.encode(texts[1])
        #expect(tokens.count == ids.count, "\(tagged.text)")
        #expect(tokens.map { $0["token"] as? String ?? "" }.joined() == texts[1])
        let lastBest = expected[1].indices.max { expected[1][$0] < expected[1][$1] }!
        #expect(tokens.last?["label"] as? String == labels[lastBest])

        // Question answering: the span of the context with the highest start + end logits (the library's head).
        let question = "who wrote it", context = "the book was written by a cat in a small house"
        let answered = try await Self.blocking {
            try client.post("/v1/classify", ["model": "reader", "input": ["question": question, "context": context], "max_answer_tokens": 4])
        }
        #expect(answered.status == 200, "\(answered.text)")
        let answer = (answered.json["data"] as? [[String: Any]])?.first ?? [:]
        let (q, c) = (running.server.format.tokenizer.encode(question), running.server.format.tokenizer.encode(context))
        let spans: [Float] = try await running.server.engine.run { served in
            try #require(served.heads["reader"]).logits(served.model, [q + c], adapter: "reader")[0].scalars
        }
        var best = (0, 0, -Float.infinity)
        for s in 0..<c.count {
            for e in s..<min(c.count, s + 4) where spans[2 * (q.count + s)] + spans[2 * (q.count + e) + 1] > best.2 {
                best = (s, e, spans[2 * (q.count + s)] + spans[2 * (q.count + e) + 1])
            }
        }
        #expect(answer["start_token"] as? Int == best.0 && answer["end_token"] as? Int == best.1, "\(answer)")
        #expect(answer["answer"] as? String == running.server.format.tokenizer.decode(Array(c[best.0...best.1])))

        // Requests for different adapters waiting together (the engine held busy until all three wait, however long
        // a loaded machine takes to deliver them) are answered in one pass, each as it was alone.
        let engine = running.server.engine
        let holding = DispatchSemaphore(value: 0)
        let blocker = Task {
            try await engine.run { _ in
                holding.signal()
                let deadline = Date().addingTimeInterval(60)
                while engine.waitingClassifications < 3, Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
            }
        }
        try await Self.blocking { holding.wait() }  // the engine's thread is in the blocker: nothing is taken before it ends
        let bodies = try [
            ["model": "sentiment", "input": texts], ["model": "tagger", "input": texts[1]],
            ["model": "reader", "input": ["question": question, "context": context], "max_answer_tokens": 4],
        ].map { try JSONSerialization.data(withJSONObject: $0) }
        let together = try await withThrowingTaskGroup(of: (Int, HTTPTestClient.Reply).self) { group in
            for (i, body) in bodies.enumerated() {
                group.addTask { (i, try await Self.blocking { try client.request("POST", "/v1/classify", body: body) }) }
            }
            var replies = [HTTPTestClient.Reply?](repeating: nil, count: bodies.count)
            for try await (i, reply) in group { replies[i] = reply }
            return replies.compactMap { $0 }
        }
        _ = try await blocker.value
        #expect(running.server.engine.statistics.largestClassificationBatch >= 2, "answered in one pass")
        let togetherRows = (together[0].json["data"] as? [[String: Any]]) ?? []
        for (i, row) in togetherRows.enumerated() {
            let logits = (row["logits"] as? [Double])?.map(Float.init) ?? []
            #expect(logits.count == 3 && zip(logits, expected[i]).allSatisfy { abs($0 - $1) < 1e-4 }, "together: \(logits)")
        }
        #expect(togetherRows.count == texts.count)
        let togetherTokens = ((together[1].json["data"] as? [[String: Any]])?.first?["tokens"] as? [[String: Any]]) ?? []
        #expect(togetherTokens.map { $0["label"] as? String } == tokens.map { $0["label"] as? String })
        #expect((together[2].json["data"] as? [[String: Any]])?.first?["answer"] as? String == answer["answer"] as? String)

        // Wrong uses: named 400s (and 404 for a name nobody has); the server keeps serving.
        let wrong: [([String: Any], String, Int, String)] = [
            (["model": "sentiment", "messages": Self.messages("a")], "/v1/chat/completions", 400, "/v1/classify"),
            (["model": "tiny", "input": "x"], "/v1/classify", 400, "no task head"),
            (["model": "lora", "input": "x"], "/v1/classify", 400, "generation adapter"),
            (["model": "sentiment", "input": ["question": "a", "context": "b"]], "/v1/classify", 400, "strings"),
            (["model": "reader", "input": "x"], "/v1/classify", 400, "question"),
            (["model": "reader", "input": ["question": "a", "context": ""]], "/v1/classify", 400, "context is empty"),
            (["model": "sentiment", "input": [String]()], "/v1/classify", 400, "input"),
            (["model": "sentiment", "input": [""]], "/v1/classify", 400, "empty"),
            (["model": "sentiment", "input": 7], "/v1/classify", 400, "input"),
            (["model": "sentiment", "input": [String](repeating: String(repeating: "word ", count: 80), count: 256)], "/v1/classify", 413, "padded tokens"),
            (["model": "nobody", "input": "x"], "/v1/classify", 404, "nobody"),
        ]
        for (body, path, status, words) in wrong {
            let data = try JSONSerialization.data(withJSONObject: body)
            let r = try await Self.blocking { try client.request("POST", path, body: data) }
            let message = ((r.json["error"] as? [String: Any])?["message"] as? String) ?? r.text
            #expect(r.status == status && message.contains(words), "\(body): \(r.status) \(message)")
        }
        let deleted = try await Self.blocking { try client.request("DELETE", "/v1/adapters/reader") }
        #expect(deleted.status == 200)
        #expect(try await running.server.engine.run { $0.heads["reader"] == nil })
    }
}
