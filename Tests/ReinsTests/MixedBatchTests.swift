import CReinsKernels
import Foundation
import ReinsTensor
import ReinsTestSupport
import Testing

@testable import Reins

/// Mixed-adapter batches: one forward pass over rows that each use their own adapter (or none) on one shared base
/// equals, row by row, running each row alone with its adapter active — for every adapter method, on GPT-2, Llama
/// (grouped-query heads, untied output) and Qwen2 (q/k/v biases, tied output), and BERT (per-adapter heads, and
/// prefix and prompt-tuning rows beside others).
struct MixedBatchTests {
    static let llamaLinear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    /// Every method, with the family's layer names.
    static func methods(_ family: String) -> [(String, AdapterMethod)] {
        let gpt2 = family == "gpt2-lm"
        let linear = gpt2 ? ["c_attn", "c_proj", "c_fc"] : llamaLinear
        var m: [(String, AdapterMethod)] = [
            ("lora", .lora(LoRAConfig(rank: 2, alpha: 4, targets: linear))),
            ("lora-r3", .lora(LoRAConfig(rank: 3, alpha: 3, targets: [linear[0], linear.last!]))),
            ("dora", .lora(LoRAConfig(rank: 2, alpha: 4, targets: [linear[1], linear.last!], dora: true))),
            ("lora-embedding-head", .lora(LoRAConfig(rank: 2, alpha: 4, targets: gpt2 ? ["wte", "lm_head"] : ["embed_tokens", "lm_head"]))),
            ("ia3", .ia3()),
            ("loha", .loha(LoHaConfig(rank: 2, alpha: 4, targets: [linear[0]]))),
            ("houlsby", .houlsby(bottleneck: 4)), ("pfeiffer", .pfeiffer(bottleneck: 5)),
            ("adapterbias", .adapterBias), ("parallel", .parallel(bottleneck: 3)),
            ("prefix", .prefix(length: 2)), ("prefix-3", .prefix(length: 3)), ("prompt", .promptTuning(length: 3)),
            ("prompt-1", .promptTuning(length: 1)),
        ]
        if family != "llama-tiny" { m.append(("bitfit", .bitFit)) }  // GPT-2's biases; Qwen2's q/k/v biases
        return m
    }

    /// A Llama layer's query, key and value products (and its gate and up products) taken together over a quantized
    /// base — the input quantized once, one parallel region — equal the layers applied one by one, bit for bit: the
    /// base alone, each method active, and a batch whose rows are routed to all of them (IA3 scaling the up
    /// projection's input computes its own product there from a scaled copy of the input; one by one, the up
    /// projection scales those rows as it quantizes the input, `Tensor.integerProduct`: the two meet bit for bit).
    @Test func sharedInputProductsEqualTheLayersOneByOne() throws {
        let config = try LlamaConfig(
            vocabularySize: 40, hidden: 96, intermediate: 160, layers: 1, heads: 4, keyValueHeads: 2, positions: 64,
            ropeTheta: 10000, tieWordEmbeddings: true)
        let model = try LlamaForCausalLM(config, seed: 3)
        _ = try model.quantizeWeights(.q4_1)
        let methods: [(String, AdapterMethod)] = [
            ("lora", .lora(LoRAConfig(rank: 3, alpha: 6, targets: Self.llamaLinear))),
            ("dora", .lora(LoRAConfig(rank: 2, alpha: 4, targets: ["k_proj", "gate_proj"], dora: true))),
            ("ia3", .ia3(targets: ["k_proj", "up_proj"], feedForward: ["up_proj"])),
            ("loha", .loha(LoHaConfig(rank: 2, alpha: 4, targets: ["q_proj", "up_proj"]))),
        ]
        for (i, (name, method)) in methods.enumerated() {
            try model.addAdapter(name, method, seed: UInt64(i))
            for (j, p) in model.parameters(ofAdapter: name).enumerated() {
                p.replaceValue(try p.value.detached() + Tensor.normal(p.value.shape, std: 0.3, seed: UInt64(10 * i + j)))
            }
        }
        let layer = model.model.layers[0]
        let groups = [
            [layer.attention.queryProjection, layer.attention.keyProjection, layer.attention.valueProjection],
            [layer.mlp.gateProjection, layer.mlp.upProjection],
        ]
        let x = try Tensor(shape: [4, 3, 96], values: randomFloats(4 * 3 * 96, seed: 7))
        func check(_ label: String) throws {
            for group in groups {
                let together = try Autograd.withoutGradients { try Linear.products(of: group, x) }
                let alone = try Autograd.withoutGradients { try group.map { try $0(x) } }
                #expect(together.count == group.count)
                for (t, a) in zip(together, alone) { #expect(t.shape == a.shape && t.scalars == a.scalars, "\(label)") }
            }
        }
        model.activateAdapter(nil)
        try check("base")
        let base = try Autograd.withoutGradients { try groups.flatMap { try Linear.products(of: $0, x).map(\.scalars) } }
        for (name, _) in methods {
            model.activateAdapter(name)
            try check(name)
            // Each adapter really changes some product of the groups (else the comparison above shows little).
            let adapted = try Autograd.withoutGradients { try groups.flatMap { try Linear.products(of: $0, x).map(\.scalars) } }
            #expect(adapted != base, "\(name) changes nothing")
        }
        model.activateAdapter(nil)
        try model.withAdapters(perRow: ["lora", nil, "ia3", "loha"]) { try check("routed") }
        try model.withAdapters(perRow: ["dora", "ia3", "ia3", nil]) { try check("routed with DoRA") }
    }

    static func causalLM(_ name: String) throws -> any CausalLanguageModel {
        switch try PretrainedModel.load(directory: Fixtures.model(name)) {
        case let .gpt2LMHead(m): return m
        case let .llamaCausalLM(m): return m
        default: throw ModelError.badInput("\(name) is not a causal LM")
        }
    }

    /// Adds every method under its name with values far from its identity start (LoRA's B starts at zero, IA3 at
    /// ones), so that each adapter really changes its rows.
    static func adapted(_ name: String) throws -> (any CausalLanguageModel, [String]) {
        let model = try causalLM(name)
        var names: [String] = []
        for (i, (adapter, method)) in methods(name).enumerated() {
            try model.addAdapter(adapter, method, seed: UInt64(10 + i))
            for (j, p) in model.parameters(ofAdapter: adapter).enumerated() {
                let noise = try Tensor.normal(p.value.shape, std: 0.3, seed: UInt64(100 * i + j))
                p.replaceValue(try p.value.detached() + noise)
            }
            names.append(adapter)
        }
        model.activateAdapter(nil)
        return (model, names)
    }

    static func logits(_ model: any CausalLanguageModel, _ ids: IntTensor, mask: IntTensor? = nil) throws -> Tensor {
        try model.outputLogits(model.decoderStates(ids, attentionMask: mask, positionIDs: nil, cache: nil))
    }

    /// Row `b` of `[B, rows, V]`, its last `count` rows.
    static func lastRows(_ t: Tensor, row b: Int, count: Int) throws -> [Float] {
        let n = t.shape[1]
        return try t.slice(axis: 0, b..<(b + 1)).slice(axis: 1, (n - count)..<n).scalars
    }

    @Test(arguments: ["gpt2-lm", "llama-tiny", "qwen2-tiny"])
    func everyRowOfAMixedBatchEqualsItsAdapterAlone(family: String) throws {
        let (model, names) = try Self.adapted(family)
        // Rows: every adapter, the bare base between them, and one adapter twice (rows of a group not adjacent).
        let routing: [String?] = [names[0], nil] + names.dropFirst().map { $0 } + [nil, names[0]]
        let B = routing.count, T = 5
        let ids = try IntTensor(shape: [B, T], values: (0..<(B * T)).map { Int32(3 + ($0 * 7) % 40) })
        // Right padding in two rows: the mask reaches every routed path.
        var maskValues = [Int32](repeating: 1, count: B * T)
        maskValues[T - 1] = 0
        maskValues[4 * T - 1] = 0
        let mask = try IntTensor(shape: [B, T], values: maskValues)
        let mixed = try model.withAdapters(perRow: routing) { try Self.logits(model, ids, mask: mask) }
        #expect(model.activeAdapterName == nil, "the active adapter is restored")
        // Inference (no gradients) gathers every LoRA's update into one kernel call: the same logits.
        let gathered = try Autograd.withoutGradients {
            try model.withAdapters(perRow: routing) { try Self.logits(model, ids, mask: mask) }
        }
        expectClose(gathered.scalars, mixed.scalars, atol: 1e-5, rtol: 1e-5, "\(family): gathered LoRA rows")
        var differing = 0
        for (b, name) in routing.enumerated() {
            model.activateAdapter(name)
            let alone = try Self.logits(model, ids.rows([b]), mask: mask.rows([b]))
            let tokens = alone.shape[1] - T  // the prompt's rows come first; compare the tokens' and the prompt's
            let own = try Self.lastRows(alone, row: 0, count: alone.shape[1])
            expectClose(
                try Self.lastRows(mixed, row: b, count: T + tokens), own, atol: 2e-5, rtol: 1e-4,
                "\(family) row \(b) (\(name ?? "base"))")
            model.activateAdapter(nil)
            let base = try Self.lastRows(Self.logits(model, ids.rows([b]), mask: mask.rows([b])), row: 0, count: T)
            if name != nil, zip(base, try Self.lastRows(alone, row: 0, count: T)).contains(where: { abs($0 - $1) > 1e-3 }) {
                differing += 1
            }
        }
        let adapted = routing.compactMap { $0 }.count
        #expect(differing == adapted, "every adapter changes its row (\(differing) of \(adapted))")
    }

    /// Decoding rows over their own caches (a continuous batch's steps) gives each position the logits of the whole
    /// sequence's pass: rows of different lengths stepped together (one parallel region per layer does each row's
    /// rotation, cache writes and attention), a single row, and a prompt's positions as rows of one shared cache —
    /// with grouped-query heads of size 6, Qwen2's biases and Mistral's sliding window of 3.
    @Test(arguments: ["gpt2-lm", "llama-tiny", "qwen2-tiny", "mistral-tiny"])
    func rowCacheDecodingEqualsTheWholeSequencePass(family: String) throws {
        let model = try Self.causalLM(family)
        let V = model.vocabularySize
        let sequences: [[Int32]] = (0..<6).map { (s: Int) -> [Int32] in
            let length = 4 + s % 3 + s
            return (0..<length).map { (t: Int) -> Int32 in Int32(3 + (s * 13 + t * 7) % 40) }
        }
        let whole = try sequences.map { try Self.logits(model, IntTensor(shape: [1, $0.count], values: $0)).scalars }
        try Autograd.withoutGradients {
            // Every sequence a row with its own cache, each step one token of every sequence still going (6 rows down
            // to 1 as the short ones end).
            let caches = sequences.map { _ in KVCache(layers: model.layerCount) }
            for t in 0..<sequences.map(\.count).max()! {
                let going = sequences.indices.filter { t < sequences[$0].count }
                let logits = try model.rowLogits(going.map { sequences[$0][t] }, caches: going.map { caches[$0] })
                for (row, s) in going.enumerated() {
                    expectClose(
                        Array(logits.scalars[(row * V)..<((row + 1) * V)]), Array(whole[s][(t * V)..<((t + 1) * V)]),
                        atol: 1e-5, rtol: 1e-4, "\(family): sequence \(s) at \(t), \(going.count) rows")
                }
            }
            // Keys someone holds are not written under them: the next position goes to a copy (sequence 1's 6
            // positions leave its storage room for 8).
            let held = try #require(caches[1].layers[0].keys), snapshot = held.scalars
            #expect(held.shape[2] > sequences[1].count)
            _ = try model.rowLogits([5], caches: [caches[1]])
            #expect(held.scalars == snapshot, "\(family): held keys unchanged")
            #expect(caches[1].length == sequences[1].count + 1)
            // A prompt's positions as rows of one cache, after two positions decoded one at a time.
            let s = sequences[5], cache = KVCache(layers: model.layerCount)
            for t in 0..<2 { _ = try model.rowLogits([s[t]], caches: [cache]) }
            let rest = Array(s[2...])
            let logits = try model.rowLogits(
                rest, caches: rest.map { _ in cache }, positions: rest.indices.map { Int32($0 + 2) })
            expectClose(
                logits.scalars, Array(whole[5][(2 * V)...]), atol: 1e-5, rtol: 1e-4, "\(family): one shared cache")
            #expect(cache.length == s.count)
        }
    }

    /// Continuous batching: requests for different adapters (virtual-token methods included) join at token boundaries
    /// and leave when done; each gets exactly the tokens it gets alone — greedy and seeded sampling, its own stop
    /// tokens and budget. Joining requests are prefilled alone (`add`) or folded into the running steps (`enqueue`,
    /// with a chunk of 3 prompt tokens a step, so that prompts are fed over several steps and share steps). In lanes
    /// (a step's rows cut between requests into two passes side by side), the same.
    @Test(arguments: ["gpt2-lm", "llama-tiny"], [(false, false), (true, false), (false, true), (true, true)])
    func continuousBatchingGivesEachRequestItsTokensAlone(family: String, setting: (folded: Bool, lanes: Bool)) throws {
        let folded = setting.folded
        let (model, names) = try Self.adapted(family)
        let pick = ["lora", "prefix", "prompt", "ia3", "houlsby", "dora", "prefix-3", "adapterbias"]
        var requests: [(prompt: [Int32], adapter: String?, options: GenerationOptions)] = []
        for (i, adapter) in ([nil] + pick.map { Optional($0) }).enumerated() {
            #expect(adapter == nil || names.contains(adapter!))
            let prompt = (0..<(2 + i % 4)).map { Int32(4 + (i * 11 + $0 * 3) % 37) }
            var options = GenerationOptions(maxNewTokens: 3 + i % 5, greedy: i % 3 != 2, temperature: 0.8, topK: 12, seed: UInt64(i))
            if i == 4 { options.stopTokens = [] }
            requests.append((prompt, adapter, options))
        }
        // Alone: each request's tokens with its adapter active.
        var alone: [[Int32]] = []
        for r in requests {
            model.activateAdapter(r.adapter)
            alone.append(Array(try model.generate(prompts: [r.prompt], options: r.options)[0].dropFirst(r.prompt.count)))
        }
        model.activateAdapter(nil)
        // A stop token that request 1 really emits (first at step k > 0) ends it early, in the batch as alone.
        let k = try #require((1..<alone[1].count).first { !alone[1][..<$0].contains(alone[1][$0]) })
        requests[1].options.stopTokens = [alone[1][k]]
        model.activateAdapter(requests[1].adapter)
        alone[1] = Array(try model.generate(prompts: [requests[1].prompt], options: requests[1].options)[0].dropFirst(requests[1].prompt.count))
        model.activateAdapter(nil)
        #expect(alone[1].count == k + 1)

        let batch = try ContinuousBatch(model: model, capacity: 4)
        batch.prefillChunk = 3
        // Lanes from two rows a lane, two lanes whatever the machine's cores (more lanes than threads run in turn).
        (batch.laneRows, batch.laneThreads) = setting.lanes ? (1, 2) : (0, 2)
        var produced: [Int: [Int32]] = [:], finished: [Int: ContinuousBatch.Event.Finish] = [:], idOf: [Int: Int] = [:]
        var waiting = Array(requests.indices), largest = 0, laned = 0
        func record(_ e: ContinuousBatch.Event) {
            produced[e.id, default: []].append(e.token)
            if let f = e.finish { finished[e.id] = f }
        }
        while !waiting.isEmpty || batch.count > 0 {
            // Join at a token boundary while there is room (the capacity is below the request count).
            while !batch.isFull, let next = waiting.first {
                waiting.removeFirst()
                let r = requests[next]
                if folded {
                    idOf[next] = try batch.enqueue(prompt: r.prompt, adapter: r.adapter, options: r.options)
                } else if let e = try batch.add(prompt: r.prompt, adapter: r.adapter, options: r.options) {
                    idOf[next] = e.id
                    record(e)
                }
            }
            largest = max(largest, batch.count)
            for e in try batch.step() { record(e) }
            if batch.lastStepLanes > 1 { laned += 1 }
        }
        #expect(largest == 4, "the batch ran full")
        #expect(setting.lanes ? laned > 3 : laned == 0, "\(laned) steps in lanes")
        #expect(model.activeAdapterName == nil)
        for (i, r) in requests.enumerated() {
            let id = try #require(idOf[i])
            #expect(produced[id] == alone[i], "\(family) request \(i) (\(r.adapter ?? "base"))")
            #expect(finished[id] == (i == 1 ? .stop : .length), "request \(i)")
        }
    }

    /// A kept prompt's positions are what computing them gives: a prompt that shares its start with a kept one, under
    /// the same adapter (the base, LoRA, DoRA, IA3, a bottleneck adapter, a prefix of three positions), takes that
    /// start from the prompt cache and computes the rest over it, and the rest's logits equal the whole prompt's pass.
    /// The start taken is never the whole prompt: its last token is computed, for its logits.
    @Test(arguments: ["gpt2-lm", "llama-tiny"])
    func promptCachePositionsContinueAsTheWholePass(family: String) throws {
        let (model, _) = try Self.adapted(family)
        let V = model.vocabularySize
        let kept: [Int32] = [5, 9, 14, 3, 22, 7, 30]
        let asked: [Int32] = Array(kept[..<4]) + [11, 6, 19]
        for adapter in [nil, "lora", "dora", "ia3", "houlsby", "prefix-3"] as [String?] {
            let what = "\(family), \(adapter ?? "base")"
            model.activateAdapter(adapter)
            let whole = try Self.logits(model, IntTensor(shape: [1, asked.count], values: asked)).scalars
            model.activateAdapter(nil)
            let cache = try PromptCache(capacity: 1 << 20)
            let owner = PromptCache.Owner(
                model: model, adapter: adapter,
                weights: adapter.map { model.parameters(ofAdapter: $0).map(\.value.storage) } ?? [], precision: nil)
            // A row cache as a continuous batch starts one: the adapter's learned positions first, if it has any.
            func seeded() throws -> KVCache {
                let c = KVCache(layers: model.layerCount)
                model.activateAdapter(adapter)
                defer { model.activateAdapter(nil) }
                #expect(try model.seedPrefix(c))
                return c
            }
            func feed(_ tokens: ArraySlice<Int32>, _ c: KVCache, after start: Int) throws -> [Float] {
                try Autograd.withoutGradients {
                    try model.routingRows(tokens.map { _ in adapter }) {
                        try model.rowLogits(
                            Array(tokens), caches: tokens.map { _ in c },
                            positions: tokens.indices.map { Int32(start + $0) }
                        ).scalars
                    }
                }
            }
            let first = try seeded()
            let start = first.length
            #expect(start == (adapter == "prefix-3" ? 3 : 0), "\(what): learned positions")
            _ = try feed(kept[...], first, after: start)
            try cache.keep(kept, owner: owner, from: first, start: start)
            let second = try seeded()
            let n = try cache.restore(asked, owner: owner, into: second)
            #expect(n == 4 && second.length == start + 4, "\(what): the shared start taken")
            expectClose(
                try feed(asked[n...], second, after: start), Array(whole[(n * V)...]), atol: 1e-5, rtol: 1e-4,
                "\(what): the rest over the kept start")
            #expect(try cache.restore(kept, owner: owner, into: try seeded()) == kept.count - 1, "\(what): all but one")
            #expect(cache.hits == 2 && cache.reusedTokens == 4 + kept.count - 1)
        }
    }

    /// A continuous batch with a prompt cache: requests whose prompts share a start with an earlier request's, under
    /// the same adapter, take it from the cache and get the tokens they get alone (greedy and sampled); another
    /// adapter's, a prompt-tuning adapter's (its prompt vectors need a pass of their own) and an adapter's replaced
    /// under its name take nothing, and the replaced one's prompts go. A capacity of one prompt keeps the latest; a
    /// larger prompt is not kept; a negative capacity is a named error.
    @Test func continuousBatchTakesSharedPromptStartsFromTheCache() throws {
        let (model, _) = try Self.adapted("llama-tiny")
        let system: [Int32] = [4, 17, 9, 23, 12, 8]
        let jobs: [(tail: [Int32], adapter: String?, greedy: Bool, cached: Int)] = [
            ([30, 5], "lora", true, 0), ([31], "lora", false, 6), ([30, 5], "lora", true, 7), ([30], nil, true, 0),
            ([30, 2], nil, false, 7), ([33], "prefix", true, 0), ([34], "prefix", false, 6), ([30], "prompt", true, 0),
            ([30], "prompt", true, 0), ([31], "ia3", true, 0), ([31], "lora", true, 6),
        ]
        let batch = try ContinuousBatch(model: model, capacity: 3)
        let cache = try PromptCache(capacity: 1 << 22)
        batch.promptCache = cache
        func run(_ prompt: [Int32], _ adapter: String?, greedy: Bool) throws
            -> (tokens: [Int32], alone: [Int32], cached: Int)
        {
            let options = GenerationOptions(
                maxNewTokens: 5, greedy: greedy, temperature: 0.9, seed: UInt64(prompt.count))
            model.activateAdapter(adapter)
            let alone = Array(try model.generate(prompts: [prompt], options: options)[0].dropFirst(prompt.count))
            model.activateAdapter(nil)
            let id = try #require(try batch.enqueue(prompt: prompt, adapter: adapter, options: options))
            let cached = try #require(batch.request(id)).cachedTokens
            var tokens: [Int32] = []
            while batch.count > 0 { tokens += try batch.step().filter { $0.id == id }.map(\.token) }
            return (tokens, alone, cached)
        }
        for (i, job) in jobs.enumerated() {
            let r = try run(system + job.tail, job.adapter, greedy: job.greedy)
            #expect(r.cached == job.cached, "job \(i) (\(job.adapter ?? "base")): cached prompt tokens")
            #expect(r.tokens == r.alone, "job \(i) (\(job.adapter ?? "base")): its tokens alone")
        }
        #expect(cache.hits == jobs.filter { $0.cached > 0 }.count)
        // 'lora' replaced under its name: its kept prompts (two) never match again and go at the next lookup.
        let before = cache.count
        try model.deleteAdapter("lora")
        try model.addAdapter("lora", .lora(LoRAConfig(rank: 2, alpha: 4, targets: Self.llamaLinear)), seed: 77)
        for (j, p) in model.parameters(ofAdapter: "lora").enumerated() {
            p.replaceValue(try p.value.detached() + Tensor.normal(p.value.shape, std: 0.3, seed: 900 + UInt64(j)))
        }
        model.activateAdapter(nil)
        let replaced = try run(system + [31], "lora", greedy: true)
        #expect(replaced.cached == 0, "the replaced adapter takes nothing")
        #expect(replaced.tokens == replaced.alone, "the replaced adapter's tokens alone")
        #expect(cache.count == before - 2 + 1, "the old adapter's prompts went, the new one's is kept")

        // A capacity of exactly one 8-token prompt's positions.
        let config = try #require(model as? LlamaForCausalLM).model.config
        let perPosition = model.layerCount * 2 * config.keyValueHeads * config.headSize * MemoryLayout<Float>.stride
        let small = try PromptCache(capacity: 8 * perPosition)
        batch.promptCache = small
        _ = try run(system + [30, 5], nil, greedy: true)
        _ = try run([7, 7] + system, nil, greedy: true)
        #expect(small.count == 1 && small.bytes == 8 * perPosition, "the latest prompt only")
        #expect(try run(system + [30, 5], nil, greedy: true).cached == 0, "the first prompt went")
        #expect(try run(system + [30, 5, 2], nil, greedy: true).cached == 8, "the kept 8-token prompt taken")
        #expect(small.count == 1 && small.bytes == 8 * perPosition, "a 9-token prompt is not kept")
        // Room for two: the least recently used goes, not the first kept (taken since, it is used again).
        let two = try PromptCache(capacity: 16 * perPosition)
        batch.promptCache = two
        let (a, b, c) = (system + [30, 5], [7, 7] + system, [9, 9] + system)
        for (prompt, cached) in [(a, 0), (b, 0), (a, 7), (c, 0), (a, 7), (b, 0)] {
            #expect(try run(prompt, nil, greedy: true).cached == cached, "\(prompt)")
            #expect(two.bytes <= 16 * perPosition)
        }
        #expect(two.count == 2)
        #expect(throws: ModelError.self) { try PromptCache(capacity: -1) }
    }

    /// A layer keeps its routed groups' adapters between batches routed to the same names (a server's decoding steps);
    /// an adapter deleted and added anew under its name, on the same layers or on fewer, is seen by the next batch:
    /// each row still equals its adapter alone, and the replaced adapter's rows change.
    @Test func routedBatchesSeeAdaptersReplacedUnderTheirNames() throws {
        let (model, _) = try Self.adapted("llama-tiny")
        let routing: [String?] = ["lora", nil, "ia3", "lora"]
        let ids = try IntTensor(shape: [routing.count, 4], values: (0..<(routing.count * 4)).map { Int32(3 + ($0 * 5) % 40) })
        func routed() throws -> Tensor {
            try Autograd.withoutGradients { try model.withAdapters(perRow: routing) { try Self.logits(model, ids) } }
        }
        func expectEachRowAlone(_ mixed: Tensor, _ what: String) throws {
            for (b, name) in routing.enumerated() {
                model.activateAdapter(name)
                let alone = try Self.logits(model, ids.rows([b]))
                model.activateAdapter(nil)
                expectClose(try Self.lastRows(mixed, row: b, count: 4), try Self.lastRows(alone, row: 0, count: 4),
                            atol: 2e-5, rtol: 1e-4, "\(what): row \(b) (\(name ?? "base"))")
            }
        }
        func replaceLoRA(targets: [String], seed: UInt64) throws {
            if model.adapterNames.contains("lora") { try model.deleteAdapter("lora") }
            try model.addAdapter("lora", .lora(LoRAConfig(rank: 2, alpha: 4, targets: targets)), seed: seed)
            for (j, p) in model.parameters(ofAdapter: "lora").enumerated() {
                p.replaceValue(try p.value.detached() + Tensor.normal(p.value.shape, std: 0.3, seed: seed + UInt64(j)))
            }
            model.activateAdapter(nil)
        }
        let first = try routed()
        try expectEachRowAlone(first, "first batch")
        // Deleted, the adapter's objects are freed at once (the layers' caches of the batch let them go).
        final class Weak { weak var lora: LoRA?; init(_ l: LoRA) { lora = l } }
        let old = model.namedModules().compactMap { ($0.module as? Linear)?.loras["lora"] }.map(Weak.init)
        #expect(old.count == Self.llamaLinear.count * 2, "a LoRA on every linear layer of both layers")
        try model.deleteAdapter("lora")
        #expect(old.allSatisfy { $0.lora == nil }, "the deleted adapter's LoRAs are freed")
        try replaceLoRA(targets: Self.llamaLinear, seed: 500)
        let replaced = try routed()
        try expectEachRowAlone(replaced, "after 'lora' added anew")
        let moved = zip(try Self.lastRows(first, row: 0, count: 4), try Self.lastRows(replaced, row: 0, count: 4))
            .map { abs($0 - $1) }.max() ?? 0
        #expect(moved > 1e-3, "the replaced adapter's rows changed (\(moved))")
        try replaceLoRA(targets: ["q_proj"], seed: 700)
        try expectEachRowAlone(try routed(), "after 'lora' added anew on q_proj only")
    }

    /// A routed batch reading LoRA weights from copies (half precision; 8-bit integers with a scale per row of A and
    /// of Bᵀ; 4-bit ones with a scale per group of 32 along those rows) equals the float path over the weights rounded
    /// as the copies store them (so the copies are what is read, and read whole), differs from the unrounded weights
    /// by more (the rounding shows), leaves rows without a LoRA as they were, and after `removeAll` reads changed
    /// weights anew. Only the LoRAs the row kernel reads are copied (a
    /// DoRA row is computed in float32, its LoRAs not copied).
    @Test(arguments: ["gpt2-lm", "llama-tiny"], LoRACopies.Precision.allCases)
    func loraCopiesAreTheRoundedWeights(family: String, precision: LoRACopies.Precision) throws {
        let (model, _) = try Self.adapted(family)
        let routing: [String?] = ["lora", nil, "lora-r3", "lora-embedding-head", "ia3", "lora", "dora"]
        let ids = try IntTensor(shape: [routing.count, 4], values: (0..<(routing.count * 4)).map { Int32(3 + ($0 * 5) % 40) })
        let copies = LoRACopies(precision: precision)
        func run(_ copies: LoRACopies?) throws -> [Float] {
            try Autograd.withoutGradients {
                try model.withAdapters(perRow: routing) {
                    try model.routingRows(routing, loraCopies: copies) { try Self.logits(model, ids).scalars }
                }
            }
        }
        let float = try run(nil), copied = try run(copies)
        // The same weights rounded as the copies store them, read in float.
        let loras = ["lora", "lora-r3", "lora-embedding-head"].flatMap { name in
            model.namedModules().compactMap { ($0.module as? Linear)?.loras[name] }
        }
        #expect(!loras.isEmpty)
        #expect(copies.count == loras.count, "the plain LoRAs' copies, none of DoRA's (\(copies.count) of \(loras.count))")
        let saved = loras.map { ($0.a.value, $0.b.value) }
        // Half: each value rounded. 8-bit: A's rows ([rank, in]) and B's columns (Bᵀ's rows), each on a grid of
        // 255 steps spanning its largest magnitude. 4-bit: each run of 32 along those rows on a grid of 15 steps.
        func rounded(_ t: Tensor, perColumn: Bool) throws -> Tensor {
            var v = t.scalars
            guard precision != .half else {
                return try Tensor(shape: t.shape, values: v.map { rk_half_to_float(rk_float_to_half($0)) })
            }
            let (n, m) = (t.shape[0], t.count / t.shape[0])
            let lines = perColumn ? (0..<m).map { j in (0..<n).map { $0 * m + j } } : (0..<n).map { i in (0..<m).map { i * m + $0 } }
            let (width, levels): (Int, Float) = precision == .int4 ? (32, 7) : (Int.max, 127)
            for line in lines {
                for start in stride(from: 0, to: line.count, by: min(width, line.count)) {
                    let group = line[start..<min(line.count, start + width)]
                    let step = group.map { abs(v[$0]) }.max()! / levels
                    for i in group where step > 0 { v[i] = (v[i] / step).rounded() * step }
                }
            }
            return try Tensor(shape: t.shape, values: v)
        }
        for l in loras {
            l.a.replaceValue(try rounded(l.a.value, perColumn: false))
            l.b.replaceValue(try rounded(l.b.value, perColumn: true))
        }
        let roundedFloat = try run(nil)
        let (near, far) = (
            zip(copied, roundedFloat).map { abs($0 - $1) }.max() ?? 0, zip(copied, float).map { abs($0 - $1) }.max() ?? 0
        )
        expectClose(copied, roundedFloat, atol: 2e-5, rtol: 1e-5, "\(family): \(precision) copies vs rounded weights")
        #expect(far > 10 * near, "\(family): the rounding shows (\(far) against \(near))")
        // Rows 1 and 4 (no LoRA) are unchanged by the copies.
        let V = model.vocabularySize, per = 4 * V
        for row in [1, 4] {
            #expect(Array(copied[(row * per)..<((row + 1) * per)]) == Array(float[(row * per)..<((row + 1) * per)]), "row \(row)")
        }
        // Changed weights: the old copies still read the old ones until removeAll.
        for (l, (a, b)) in zip(loras, saved) {
            l.a.replaceValue(a)
            l.b.replaceValue(b.scaled(by: 2))
        }
        #expect(try run(copies) == copied)
        copies.removeAll()
        #expect(try run(copies) != copied)
    }

    /// Copies made at once for an adapter (`prepare`, as a server does when it loads one) are those a batch makes as
    /// it reads the LoRAs: one per plain LoRA of the adapter (none of DoRA's, none for a name the model lacks), and
    /// the routed logits equal bit for bit.
    @Test(arguments: [LoRACopies.Precision.int8, .int4, .half])
    func preparedCopiesEqualTheOnesMadeAsRead(precision: LoRACopies.Precision) throws {
        let (model, _) = try Self.adapted("llama-tiny")
        let routing: [String?] = ["lora", nil, "lora-r3", "dora", "lora"]
        let ids = try IntTensor(
            shape: [routing.count, 4], values: (0..<(routing.count * 4)).map { Int32(3 + ($0 * 5) % 40) })
        func run(_ copies: LoRACopies) throws -> [Float] {
            try Autograd.withoutGradients {
                try model.withAdapters(perRow: routing) {
                    try model.routingRows(routing, loraCopies: copies) { try Self.logits(model, ids).scalars }
                }
            }
        }
        let prepared = LoRACopies(precision: precision)
        for name in ["lora", "lora-r3", "dora", "absent"] { prepared.prepare(adapter: name, in: model) }
        let plain = ["lora", "lora-r3"].flatMap { name in
            model.namedModules().compactMap { ($0.module as? Linear)?.loras[name] }
        }
        #expect(prepared.count == plain.count, "one copy per plain LoRA (\(prepared.count) of \(plain.count))")
        let asRead = LoRACopies(precision: precision)
        #expect(try run(prepared) == run(asRead))
        #expect(prepared.count == asRead.count, "reading made no further copy")
    }

    /// 8-bit and 4-bit copies of weights that are not ordinary numbers, made without a trap: an infinity in one
    /// LoRA's A (its row's logits are then not finite, as float32's are: the copy's row reads as NaN), and another
    /// LoRA's B of subnormal magnitudes, whose step is rounded so coarsely that quotients pass 127 or 7 (clamped). The
    /// row without an adapter stays finite.
    @Test(arguments: [LoRACopies.Precision.int8, .int4])
    func integerCopiesOfUnusualWeights(precision: LoRACopies.Precision) throws {
        let (model, _) = try Self.adapted("llama-tiny")
        let loras = model.namedModules().compactMap { ($0.module as? Linear)?.loras["lora"] }
        let subnormal = model.namedModules().compactMap { ($0.module as? Linear)?.loras["lora-r3"] }
        #expect(!loras.isEmpty && !subnormal.isEmpty)
        // The last layer's down_proj: its output reaches the logits through the residual stream and the final norm.
        let last = loras[loras.count - 1]
        var a = last.a.value.scalars
        a[1] = .infinity
        last.a.replaceValue(try Tensor(shape: last.a.value.shape, values: a))
        for l in subnormal {  // magnitudes 100...190 units of the smallest subnormal
            let b = l.b.value
            l.b.replaceValue(try Tensor(shape: b.shape, values: (0..<b.count).map { Float(bitPattern: UInt32(100 + $0 * 7 % 91)) }))
        }
        let routing: [String?] = ["lora", nil, "lora-r3"]
        let ids = try IntTensor(shape: [3, 4], values: (0..<12).map { Int32(3 + $0 * 5 % 40) })
        let copies = LoRACopies(precision: precision)
        func run(_ copies: LoRACopies?) throws -> [Float] {
            try Autograd.withoutGradients {
                try model.withAdapters(perRow: routing) {
                    try model.routingRows(routing, loraCopies: copies) { try Self.logits(model, ids).scalars }
                }
            }
        }
        let (float, copied) = (try run(nil), try run(copies))
        let per = 4 * model.vocabularySize
        for values in [float, copied] {
            #expect(values[0..<per].contains { !$0.isFinite }, "the row whose LoRA has an infinity")
            #expect(!values[per...].contains { !$0.isFinite }, "the other rows")
        }
        // Subnormal B: an update far below the rounding of the rest.
        expectClose(Array(copied[(2 * per)...]), Array(float[(2 * per)...]), atol: 1e-5, rtol: 1e-5, "subnormal LoRA row")
    }

    /// A continuous batch's draw reads each row's logits in place (greedy and plain sampling copy nothing): the same
    /// token, and the generator left in the same state, as the copying draw — for greedy (ties included), sampling at
    /// several temperatures and seeds, and the settings that fall back to the copy (top-k, top-p, repetition penalty).
    @Test func inPlaceDrawEqualsTheCopyingOne() throws {
        let V = 1003
        var source = SeededGenerator(seed: 5)
        var logits = (0..<V).map { _ in Float(source.nextUniform()) * 8 - 4 }
        logits[17] = 5
        logits[700] = 5  // a tie for the greedy pick: the lower id
        let history: [Int32] = [3, 17, 700, 999]
        let settings: [GenerationOptions] = [
            GenerationOptions(greedy: true), GenerationOptions(greedy: false, temperature: 0.7),
            GenerationOptions(greedy: false, temperature: 1.3), GenerationOptions(greedy: false, temperature: 0.2),
            GenerationOptions(greedy: false, temperature: 0.9, topK: 5),
            GenerationOptions(greedy: false, temperature: 0.9, topP: 0.8),
            GenerationOptions(greedy: false, temperature: 0.9, repetitionPenalty: 1.3),
            GenerationOptions(greedy: true, repetitionPenalty: 100),
        ]
        var scratch = [Float](repeating: .nan, count: V)
        var distinct = Set<Int32>()
        for (i, options) in settings.enumerated() {
            for seed in 0..<12 {
                var (a, b) = (SeededGenerator(seed: UInt64(seed)), SeededGenerator(seed: UInt64(seed)))
                var copy = logits
                let expected = pickToken(&copy, history: history, options: options, rng: &a)
                let got = logits.withUnsafeBufferPointer { row in
                    scratch.withUnsafeMutableBufferPointer {
                        pickToken(row, scratch: $0, history: { history }, options: options, rng: &b)
                    }
                }
                #expect(got == expected, "setting \(i), seed \(seed)")
                #expect(a.next() == b.next(), "setting \(i), seed \(seed): the generator's state")
                distinct.insert(got)
            }
        }
        #expect(distinct.count > 10, "the draws vary (\(distinct.count) distinct tokens)")
    }

    /// Sequence classification with a head per adapter: rows of different adapters read their own heads; heads of
    /// different label counts cannot share one logits tensor, by name.
    @Test func bertHeadsPerRow() throws {
        guard case let .bertSequenceClassification(model) = try PretrainedModel.load(directory: Fixtures.model("bert-cls"))
        else { Issue.record("bert-cls did not load as a classifier"); return }
        let labels = model.heads.base.outputs
        try model.addAdapter("a", .lora(LoRAConfig(rank: 2, alpha: 4, targets: ["query", "value"])), labels: labels, seed: 1)
        try model.addAdapter("b", .houlsby(bottleneck: 3), labels: labels, seed: 2)
        try model.addAdapter("c", .bitFit, labels: labels, seed: 3)
        try model.addAdapter("wide", .ia3(), labels: labels + 2, seed: 4)
        for name in ["a", "b", "c", "wide"] {
            for (j, p) in model.parameters(ofAdapter: name).enumerated() {
                p.replaceValue(try p.value.detached() + Tensor.normal(p.value.shape, std: 0.3, seed: UInt64(j + 7)))
            }
        }
        let ids = try IntTensor(shape: [4, 6], values: (0..<24).map { Int32(5 + ($0 * 5) % 50) })
        let routing: [String?] = ["b", nil, "a", "c"]
        let mixed = try model.withAdapters(perRow: routing) { try model.logits(ids) }
        for (b, name) in routing.enumerated() {
            model.activateAdapter(name)
            expectClose(
                try mixed.slice(axis: 0, b..<(b + 1)).scalars, try model.logits(ids.rows([b])).scalars, atol: 2e-5,
                rtol: 1e-4, "BERT row \(b) (\(name ?? "base"))")
        }
        #expect { try model.withAdapters(perRow: ["a", "wide", nil, nil]) { try model.logits(ids) } } throws: {
            "\($0)".contains("cannot share one logits tensor")
        }
    }

    /// BERT rows with prefix and prompt-tuning adapters of different lengths, LoRA and none, in one batch with
    /// padding: each row's pooled classification (its first position — [CLS], or its own prompt's first vector),
    /// mean-pooled classification, token states and sentence embeddings equal that row alone with its adapter.
    @Test func bertVirtualTokensPerRow() throws {
        guard case let .bertSequenceClassification(model) = try PretrainedModel.load(directory: Fixtures.model("bert-cls"))
        else { Issue.record("bert-cls did not load as a classifier"); return }
        let labels = model.heads.base.outputs
        let methods: [(String, AdapterMethod)] = [
            ("prefix", .prefix(length: 2)), ("prefix-3", .prefix(length: 3)), ("prompt", .promptTuning(length: 3)),
            ("prompt-1", .promptTuning(length: 1)), ("lora", .lora(LoRAConfig(rank: 2, alpha: 4, targets: ["query", "value"]))),
        ]
        for (i, (name, method)) in methods.enumerated() {
            try model.addAdapter(name, method, labels: labels, seed: UInt64(i + 1))
            for (j, p) in model.parameters(ofAdapter: name).enumerated() {
                p.replaceValue(try p.value.detached() + Tensor.normal(p.value.shape, std: 0.3, seed: UInt64(40 * i + j)))
            }
        }
        model.activateAdapter(nil)
        let (B, T) = (6, 5)
        let ids = try IntTensor(shape: [B, T], values: (0..<(B * T)).map { Int32(5 + ($0 * 7) % 50) })
        let mask = try IntTensor(shape: [B, T], values: (0..<(B * T)).map { i in i / T == 1 && i % T >= 3 ? 0 : 1 })
        let routing: [String?] = ["prompt", "prefix-3", nil, "prompt-1", "lora", "prefix"]
        func each(_ compute: (IntTensor, IntTensor) throws -> Tensor, _ what: String) throws {
            let mixed = try model.withAdapters(perRow: routing) { try compute(ids, mask) }
            for (b, name) in routing.enumerated() {
                model.activateAdapter(name)
                defer { model.activateAdapter(nil) }
                let alone = try compute(ids.rows([b]), mask.rows([b]))
                expectClose(
                    try mixed.slice(axis: 0, b..<(b + 1)).scalars, alone.scalars, atol: 2e-5, rtol: 1e-4,
                    "BERT \(what), row \(b) (\(name ?? "base"))")
            }
        }
        try Autograd.withoutGradients {
            try each({ try model.logits($0, attentionMask: $1) }, "pooled classification")
            try each({ try model.bert.tokenStates($0, attentionMask: $1) }, "token states")
            try each({ try model.bert.sentenceEmbeddings($0, attentionMask: $1) }, "sentence embeddings")
            model.pooling = .mean
            try each({ try model.logits($0, attentionMask: $1) }, "mean-pooled classification")
        }
    }

    /// Where a step's rows are cut into lanes: between requests (a prompt's rows stay together), nearest an even
    /// share; no cut when one lane would get more than two rows past its share, or no request boundary exists.
    @Test func laneCutsFallBetweenRequests() throws {
        func caches(_ rows: [Int]) -> [KVCache] {
            let made = (0..<((rows.max() ?? 0) + 1)).map { _ in KVCache(layers: 1) }
            return rows.map { made[$0] }
        }
        #expect(ContinuousBatch.laneBounds(caches([0, 1, 2, 3, 4, 5]), lanes: 2) == [0, 3, 6])
        #expect(ContinuousBatch.laneBounds(caches([0, 1, 2, 3, 4, 5]), lanes: 3) == [0, 2, 4, 6])
        #expect(ContinuousBatch.laneBounds(caches([0, 1, 2, 3, 4, 5, 6]), lanes: 2) == [0, 3, 7])
        // A prompt of five rows after three running requests: cut before it (5 rows against a share of 4).
        #expect(ContinuousBatch.laneBounds(caches([0, 1, 2, 3, 3, 3, 3, 3]), lanes: 2) == [0, 3, 8])
        // A prompt of nine rows beside one request; one prompt alone: no cut.
        #expect(ContinuousBatch.laneBounds(caches([0] + Array(repeating: 1, count: 9)), lanes: 2) == nil)
        #expect(ContinuousBatch.laneBounds(caches([0, 0, 0, 0]), lanes: 2) == nil)
        // More lanes than requests.
        #expect(ContinuousBatch.laneBounds(caches([0, 1]), lanes: 3) == nil)
        let batch = try ContinuousBatch(model: try Self.causalLM("llama-tiny"), capacity: 8)
        batch.laneThreads = 2
        batch.laneRows = -1
        #expect(batch.laneRows == 0 && batch.laneCount(rows: 8) == 1)
        batch.laneRows = 3
        #expect(batch.laneCount(rows: 5) == 1 && batch.laneCount(rows: 6) == 2)
    }

    @Test func badRoutingIsRefusedByName() throws {
        let (model, _) = try Self.adapted("llama-tiny")
        let ids = try IntTensor(shape: [2, 3], values: [3, 4, 5, 6, 7, 8])
        #expect { try model.withAdapters(perRow: ["lora", "nope"]) { 0 } } throws: {
            "\($0)".contains("no adapter named 'nope'")
        }
        #expect { try model.withAdapters(perRow: ["lora", nil, "ia3"]) { try Self.logits(model, ids) } } throws: {
            "\($0)".contains("routed to 3 rows")
        }
        // A merged adapter is one adapter's weight, not the batch's.
        model.activateAdapter("lora")
        try model.mergeAdapter("lora")
        #expect { try model.withAdapters(perRow: ["lora", nil]) { 0 } } throws: { "\($0)".contains("unmerge it") }
        try model.unmergeAdapters()
        // The continuous batch: full, unknown adapter, empty prompt, bad options.
        let batch = try ContinuousBatch(model: model, capacity: 1)
        #expect { try batch.add(prompt: [3], adapter: "nope", options: GenerationOptions()) } throws: {
            "\($0)".contains("no adapter named 'nope'")
        }
        #expect { try batch.add(prompt: [], adapter: nil, options: GenerationOptions()) } throws: {
            "\($0)".contains("at least one token")
        }
        #expect { try batch.add(prompt: [3], adapter: nil, options: GenerationOptions(maxNewTokens: -1)) } throws: {
            "\($0)".contains("must not be negative")
        }
        #expect { try batch.add(prompt: [3, 1 << 20], adapter: nil, options: GenerationOptions()) } throws: { _ in true }
        #expect { try batch.enqueue(prompt: [3], adapter: "nope", options: GenerationOptions()) } throws: {
            "\($0)".contains("no adapter named 'nope'")
        }
        #expect { try batch.enqueue(prompt: [3, 1 << 20], adapter: nil, options: GenerationOptions()) } throws: {
            "\($0)".contains("outside the vocabulary")
        }
        #expect { try batch.enqueue(prompt: [3], adapter: nil, options: GenerationOptions(temperature: .nan)) } throws: {
            "\($0)".contains("temperature")
        }
        #expect(try batch.enqueue(prompt: [3], adapter: nil, options: GenerationOptions(maxNewTokens: 0)) == nil)
        // A joining request holds its place; cancelled before its prompt is fed, it leaves without a token.
        let joiner = try #require(try batch.enqueue(prompt: [3, 4], adapter: "lora", options: GenerationOptions(maxNewTokens: 5)))
        #expect { try batch.add(prompt: [3], adapter: nil, options: GenerationOptions()) } throws: {
            "\($0)".contains("the batch is full")
        }
        batch.cancel(joiner)
        #expect(batch.count == 0)
        #expect(try batch.step().isEmpty)
        _ = try batch.add(prompt: [3], adapter: "lora", options: GenerationOptions(maxNewTokens: 5))
        #expect { try batch.add(prompt: [3], adapter: nil, options: GenerationOptions()) } throws: {
            "\($0)".contains("the batch is full")
        }
        #expect(throws: (any Error).self) { try ContinuousBatch(model: model, capacity: 0) }
    }
}
