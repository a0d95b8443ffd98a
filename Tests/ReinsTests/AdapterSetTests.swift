import Foundation
import Reins
import ReinsTensor
import ReinsTestSupport
import Testing

/// Many adapters on one frozen base: each trains alone, owns its head (with its own label count), switches at run
/// time, saves and loads with its head, and leaves the base and the other adapters untouched.
struct AdapterSetTests {
    static let methods: [(String, AdapterMethod)] = [
        ("bitfit", .bitFit), ("houlsby", .houlsby(bottleneck: 4)), ("pfeiffer", .pfeiffer(bottleneck: 5)),
        ("adapterbias", .adapterBias), ("parallel", .parallel(bottleneck: 3)), ("prefix", .prefix(length: 2)),
        ("prefix-mlp", .prefix(length: 3, projection: 7)), ("prompt", .promptTuning(length: 3)),
        ("lora", .lora(LoRAConfig(rank: 2, alpha: 4, targets: ["query", "value"]))),
        ("lora+bitfit", .loraBitFit(LoRAConfig(rank: 2, alpha: 4, targets: ["attention.output.dense"]))),
        ("ia3", .ia3()),
    ]

    func task(_ model: BertForSequenceClassification, labels: Int) throws -> SequenceClassificationTask {
        let examples = (0..<8).map { LabeledText(text: String($0), label: $0 % labels) }
        return try SequenceClassificationTask(model: model, labels: labels, train: examples, evaluation: [], padID: 0) {
            t, _ in
            let i = Int(t)!
            return ((0..<(3 + i % 4)).map { Int32(2 + (i * 5 + $0 * 7) % 90) }, [Int32](repeating: 0, count: 3 + i % 4))
        }
    }

    @Test func adaptersTrainAloneSwitchAndRoundTripWithTheirHeads() throws {
        let model = try BottleneckAdapterTests().bert()
        let ids = try IntTensor(shape: [2, 5], values: [2, 14, 15, 16, 3, 2, 50, 51, 3, 0])
        let mask = try IntTensor(shape: [2, 5], values: [1, 1, 1, 1, 1, 1, 1, 1, 1, 0])
        let baseLogits = try model.logits(ids, attentionMask: mask).scalars
        let baseWeights = model.namedParameters().map { ($0.key, $0.parameter.value.scalars) }
        var trained: [String: [Float]] = [:]
        let dir = try temporaryDirectory()
        for (i, (name, method)) in Self.methods.enumerated() {
            let labels = 2 + i % 3  // every adapter its own label count
            try model.addAdapter(name, method, labels: labels, seed: UInt64(i))
            // Only this adapter (and its head) trains.
            let trainable = Set(model.trainableParameters.map { ObjectIdentifier($0) })
            let trainer = try Trainer(
                task: task(model, labels: labels), options: TrainingOptions(steps: 3, batchSize: 4, learningRate: 0.05))
            try trainer.run()
            for (key, p) in model.namedParameters() where !trainable.contains(ObjectIdentifier(p)) {
                #expect(p.gradient == nil, "\(name): \(key) got a gradient")
            }
            let logits = try model.logits(ids, attentionMask: mask)
            #expect(logits.shape == [2, labels])
            trained[name] = logits.scalars
            try model.saveAdapter(name, to: dir.appendingPathComponent(name))
        }
        // The base is untouched, with every adapter switched off.
        model.activateAdapter(nil)
        for (key, before) in baseWeights {
            let now = model.namedParameters().first { $0.key == key }?.parameter.value.scalars
            #expect(now == before, "base \(key) changed")
        }
        expectClose(try model.logits(ids, attentionMask: mask).scalars, baseLogits, atol: 1e-6, rtol: 0, "base logits")
        // Switching back reproduces each adapter exactly; a fresh base with every adapter loaded does too.
        let fresh = try BottleneckAdapterTests().bert()
        for (name, _) in Self.methods {
            model.activateAdapter(name)
            expectClose(
                try model.logits(ids, attentionMask: mask).scalars, trained[name]!, atol: 1e-6, rtol: 0,
                "\(name) after switching")
            try fresh.loadAdapter(name, from: dir.appendingPathComponent(name))
        }
        #expect(fresh.adapterNames == Self.methods.map(\.0).sorted())
        for (name, _) in Self.methods {
            fresh.activateAdapter(name)
            expectClose(
                try fresh.logits(ids, attentionMask: mask).scalars, trained[name]!, atol: 1e-5, rtol: 1e-4,
                "\(name) loaded on a fresh base")
        }
        try model.deleteAdapter("houlsby")
        #expect(!model.adapterNames.contains("houlsby"))
        #expect(throws: ModelError.self) { try model.saveAdapter("houlsby", to: dir.appendingPathComponent("gone")) }
    }

    @Test func adapterFilesHoldOnlyAdapterTensors() throws {
        let model = try BottleneckAdapterTests().bert()
        let dir = try temporaryDirectory()
        for (name, method) in Self.methods where name != "prefix-mlp" {  // its MLP trains; the folded prefix is saved
            let count = try model.addAdapter(name, method, labels: 3)
            try model.saveAdapter(name, to: dir.appendingPathComponent(name))
            let file = try SafeTensorsFile(path: dir.appendingPathComponent("\(name)/adapter_model.safetensors").path)
            let stored = file.names.reduce(0) { $0 + (file.entries[$1]!.shape.reduce(1, *)) }
            #expect(stored == count, "\(name): \(stored) stored scalars, \(count) trainable")
        }
    }

    @Test func trainableCountsMatchTheirFormulas() throws {
        // The BERT fixture: C = 30, I = 37, L = 2 layers, a 3-label head (C·3 + 3) per adapter.
        let (C, I, L, head) = (30, 37, 2, 30 * 3 + 3)
        let bitFit = L * (7 * C + I) + 2 * C  // per layer q, k, v, o, both norms, FFN out (C each) and FFN in (I); embeddings norm and pooler
        func bottleneck(_ m: Int) -> Int { C * m + m + m * C + C }
        let expected: [String: Int] = [
            "bitfit": bitFit, "houlsby": L * 2 * bottleneck(4), "pfeiffer": L * bottleneck(5),
            "adapterbias": L * (I + 1 + C),
            "parallel": L * bottleneck(3), "prefix": 2 * L * 2 * C,
            "prefix-mlp": 3 * C + (C * 7 + 7) + (7 * L * 2 * C + L * 2 * C),
            "prompt": 3 * C, "lora": L * 2 * (2 * C + C * 2), "lora+bitfit": L * (2 * C + C * 2) + bitFit,
            // PEFT's BERT defaults: key and value outputs (C each); both output.dense layers scale their inputs (C, I).
            "ia3": L * (3 * C + I),
        ]
        for (name, method) in Self.methods {
            let model = try BottleneckAdapterTests().bert()
            #expect(try model.addAdapter(name, method, labels: 3) == expected[name]! + head, "\(name)")
        }
    }

    @Test func noOpMethodsChangeNothingAtAttachOnBothModelTypes() throws {
        let noOps = Self.methods.filter { !["prefix", "prefix-mlp", "prompt"].contains($0.0) }  // virtual tokens always act
        let ids = try IntTensor(shape: [2, 5], values: [2, 14, 15, 16, 3, 2, 50, 51, 3, 0])
        let mask = try IntTensor(shape: [2, 5], values: [1, 1, 1, 1, 1, 1, 1, 1, 1, 0])
        let bert = try BottleneckAdapterTests().bert(), gpt2 = try BottleneckAdapterTests().gpt2()
        let bertBase = try bert.bert.hiddenStates(ids, attentionMask: mask).scalars,
            gptBase = try gpt2.logits(ids, attentionMask: mask).scalars
        for (name, method) in noOps {
            try bert.addAdapter(name, method, labels: 3)
            expectClose(
                try bert.bert.hiddenStates(ids, attentionMask: mask).scalars, bertBase, atol: 1e-6, rtol: 1e-6,
                "BERT \(name) at attach")
            let gptMethod: AdapterMethod
            switch method {  // GPT-2's linear layers have other names
            case .lora: gptMethod = .lora(LoRAConfig(rank: 2, alpha: 4, targets: ["c_attn"]))
            case .loraBitFit: gptMethod = .loraBitFit(LoRAConfig(rank: 2, alpha: 4, targets: ["mlp.c_proj"]))
            default: gptMethod = method
            }
            try gpt2.addAdapter(name, gptMethod)
            expectClose(
                try gpt2.logits(ids, attentionMask: mask).scalars, gptBase, atol: 1e-6, rtol: 1e-6,
                "GPT-2 \(name) at attach")
        }
    }

    /// LoRA + BitFit in one adapter is saved as PEFT's LoRA with `bias: "all"`: the adapter's own biases under the
    /// model's bias keys. (REINS_SAVE_ADAPTERS=dir also writes it there, with its inputs and logits, for
    /// Tests/Fixtures/check_reins_adapters_in_peft.py.)
    @Test func loraWithBitFitSavesAsPEFTBiasAll() throws {
        let model = try BottleneckAdapterTests().bert()
        try model.addAdapter(
            "combo", .loraBitFit(LoRAConfig(rank: 2, alpha: 4, targets: ["query", "value"])), labels: 3, seed: 3)
        _ = try Trainer(
            task: task(model, labels: 3), options: TrainingOptions(steps: 3, batchSize: 4, learningRate: 0.05)
        ).run()
        let ids = try IntTensor(shape: [2, 5], values: [2, 14, 15, 16, 3, 2, 50, 51, 3, 0])
        let mask = try IntTensor(shape: [2, 5], values: [1, 1, 1, 1, 1, 1, 1, 1, 1, 0])
        let logits = try model.logits(ids, attentionMask: mask)
        let dirs =
            [try temporaryDirectory()]
            + (ProcessInfo.processInfo.environment["REINS_SAVE_ADAPTERS"].map {
                [URL(fileURLWithPath: $0).appendingPathComponent("bert-lora-bitfit")]
            } ?? [])
        for dir in dirs {
            try model.saveAdapter("combo", to: dir)
            try SafeTensorsFile.write(
                ["logits": logits.detached()], integers: ["input_ids": ids, "attention_mask": mask],
                to: dir.appendingPathComponent("expected.safetensors").path)
        }
        let config = try Checkpoint.readJSON(dirs[0].appendingPathComponent("adapter_config.json"))
        #expect(config["bias"] as? String == "all" && config["peft_type"] as? String == "LORA")
        let file = try SafeTensorsFile(path: dirs[0].appendingPathComponent("adapter_model.safetensors").path)
        #expect(file.names.contains("base_model.model.bert.encoder.layer.1.output.dense.bias"))
        let fresh = try BottleneckAdapterTests().bert()
        try fresh.loadAdapter("combo", from: dirs[0])
        expectClose(
            try fresh.logits(ids, attentionMask: mask), logits, atol: 1e-6, rtol: 1e-6,
            "LoRA + BitFit after save and load")
    }
}
