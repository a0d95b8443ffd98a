import Foundation
import Reins
import ReinsTestSupport
import Testing

struct BottleneckAdapterTests {
    func gpt2() throws -> GPT2LMHeadModel {
        guard case let .gpt2LMHead(m) = try PretrainedModel.load(directory: ModelParityTests.directory("gpt2-lm")) else { throw ModelError.badInput("fixture") }
        return m
    }
    func bert() throws -> BertForSequenceClassification {
        guard case let .bertSequenceClassification(m) = try PretrainedModel.load(directory: ModelParityTests.directory("bert-cls")) else { throw ModelError.badInput("fixture") }
        return m
    }

    @Test(arguments: [BottleneckPlacement.houlsby, .pfeiffer])
    func adaptersStartAsNoOpsAndTrainAloneOnBothModels(placement: BottleneckPlacement) throws {
        let (C, m, L) = (30, 5, 2)
        let perAdapter = C * m + m + m * C + C
        let count = placement == .houlsby ? 2 * L : L

        let lm = try gpt2()
        let ids = try IntTensor(shape: [1, 6], values: [5, 17, 42, 3, 8, 60])
        let base = try lm.logits(ids).scalars
        lm.freeze()
        #expect(try lm.addBottleneckAdapter("task", placement: placement, size: C, bottleneck: m) == count)
        expectClose(try lm.logits(ids).scalars, base, atol: 1e-6, rtol: 1e-6, "GPT-2: W_up = 0, nothing changes")
        #expect(lm.trainableParameterCount == count * perAdapter)
        try LoRATests.trainAdapterAlone(lm, ids, marker: ".adapters.")
        #expect(try lm.logits(ids).scalars != base)

        let cls = try bert()
        let bids = try IntTensor(shape: [1, 5], values: [2, 14, 15, 16, 3])
        let bbase = try cls.logits(bids).scalars
        cls.freeze()
        try cls.addBottleneckAdapter("task", placement: placement, size: C, bottleneck: m, nonLinearity: .gelu)
        cls.unfreeze { $0.hasPrefix("classifier.") }
        expectClose(try cls.logits(bids).scalars, bbase, atol: 1e-6, rtol: 1e-6, "BERT: nothing changes at attach")
        #expect(cls.trainableParameterCount == count * perAdapter + (C * 3 + 3))
        try Tensor.crossEntropy(logits: cls.logits(bids), targets: IntTensor([1])).backward()
        for (key, p) in cls.namedParameters() {
            #expect((p.gradient != nil) == (key.contains(".adapters.") || key.hasPrefix("classifier.")), "\(key)")
        }
    }

    @Test func adaptersSwitchOnOneBase() throws {
        let lm = try gpt2()
        let ids = try IntTensor(shape: [1, 6], values: [5, 17, 42, 3, 8, 60])
        let base = try lm.logits(ids).scalars
        lm.freeze()
        try lm.addBottleneckAdapter("a", placement: .pfeiffer, size: 30, bottleneck: 4, seed: 1)
        try lm.addBottleneckAdapter("b", placement: .houlsby, size: 30, bottleneck: 3, seed: 2)
        // Give both adapters non-zero up-projections so that they differ from the base and from each other.
        for (key, p) in lm.namedParameters() where key.contains("adapter_up.weight") {
            p.value = try Tensor.normal(p.value.shape, std: 0.5, seed: UInt64(key.count)).requiringGradient()
        }
        lm.activateAdapter("a")
        let a = try lm.logits(ids).scalars
        lm.activateAdapter("b")
        let b = try lm.logits(ids).scalars
        lm.activateAdapter(nil)
        expectClose(try lm.logits(ids).scalars, base, atol: 1e-6, rtol: 1e-6, "all adapters off")
        #expect(a != base && b != base && a != b)
        lm.activateAdapter("a")
        expectClose(try lm.logits(ids).scalars, a, atol: 1e-6, rtol: 1e-6, "back to a")
        for block in lm.blockAdapters { block.afterFeedForward.remove("a") }
        expectClose(try lm.logits(ids).scalars, base, atol: 1e-6, rtol: 1e-6, "a deleted")
    }

    @Test func bitFitTrainsOnlyBiasesAndCombinesWithLoRA() throws {
        let lm = try gpt2()
        lm.applyBitFit()
        let biases = lm.namedParameters().filter { $0.key.hasSuffix(".bias") }
        #expect(lm.trainableParameterCount == biases.map { $0.parameter.value.count }.reduce(0, +))
        let ids = try IntTensor(shape: [1, 4], values: [1, 2, 3, 4])
        try lm.loss(ids).backward()
        for (key, p) in lm.namedParameters() { #expect((p.gradient != nil) == key.hasSuffix(".bias"), "\(key)") }
        // LoRA + BitFit in one adapter.
        let layer = lm.transformer.blocks[0].attentionIn
        try layer.attachLoRA("combo", LoRA(inputs: layer.inputs, outputs: layer.outputs, rank: 2, alpha: 4, seed: 3))
        lm.applyBitFit(alsoTrain: { $0.contains(".lora_") })
        #expect(lm.trainableParameterCount == biases.map { $0.parameter.value.count }.reduce(0, +) + 2 * (30 + 90))
    }
}

struct LoRAConfigTests {
    @Test func targetsFollowPEFTMatchingAndLayersNarrowThem() throws {
        guard case let .bertSequenceClassification(m) = try PretrainedModel.load(directory: ModelParityTests.directory("bert-cls")) else { return }
        let keys = try m.addLoRA("a", LoRAConfig(rank: 2, targets: ["query", "output.dense"]))
        #expect(keys == ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.output.dense",
                         "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.output.dense", "bert.encoder.layer.1.output.dense"])
        let one = try m.addLoRA("b", LoRAConfig(rank: 4, alpha: 8, targets: ["value"], layers: [1]))
        #expect(one == ["bert.encoder.layer.1.attention.self.value"])
        #expect(throws: ModelError.self) { try m.addLoRA("c", LoRAConfig(targets: ["c_attn"])) }
        // Parameter count: r · (in + out) per adapted layer (C = 30, intermediate 37).
        m.freeze()
        m.unfreeze { $0.contains(".lora_A.a.") || $0.contains(".lora_B.a.") }
        // Per layer: query 30 -> 30, attention.output.dense 30 -> 30, output.dense 37 -> 30; two layers, r = 2.
        #expect(m.trainableParameterCount == 2 * 2 * ((30 + 30) + (30 + 30) + (37 + 30)))
        // Merged equals unmerged; unmerging restores the base exactly.
        m.activateAdapter("a")
        for (key, p) in m.namedParameters() where key.contains("lora_B.a.") { p.value = try Tensor.normal(p.value.shape, std: 0.3, seed: 9).requiringGradient() }
        let ids = try IntTensor(shape: [1, 5], values: [2, 14, 15, 16, 3])
        let live = try m.logits(ids)
        let weights = m.namedParameters().filter { $0.key.hasSuffix("dense.weight") }.map { $0.parameter.value.scalars }
        try m.mergeLoRA()
        expectClose(try m.logits(ids), live, atol: 1e-5, rtol: 1e-5, "merged")
        try m.unmergeLoRA()
        #expect(m.namedParameters().filter { $0.key.hasSuffix("dense.weight") }.map { $0.parameter.value.scalars } == weights)
    }
}

struct ParallelInsertionPointTests {
    /// AdapterBias and the parallel adapter on both model families: no change at attach, only they train, counts.
    @Test(arguments: ["AdapterBias", "parallel"])
    func startAsNoOpsAndTrainAlone(method: String) throws {
        let (C, I, L, m) = (30, 37, 2, 6)
        guard case let .gpt2LMHead(lm) = try PretrainedModel.load(directory: ModelParityTests.directory("gpt2-lm")),
              case let .bertSequenceClassification(cls) = try PretrainedModel.load(directory: ModelParityTests.directory("bert-cls")) else { return }
        let ids = try IntTensor(shape: [1, 5], values: [2, 14, 15, 16, 3])
        for model in [lm as any Module, cls] {
            func run() throws -> Tensor {
                if let lm = model as? GPT2LMHeadModel { return try lm.loss(ids) }
                return try Tensor.crossEntropy(logits: (model as! BertForSequenceClassification).logits(ids), targets: IntTensor([1]))
            }
            let before = try run().item
            model.freeze()
            if method == "AdapterBias" { try model.addAdapterBias("t", intermediate: I, size: C) } else { try model.addParallelAdapter("t", size: C, bottleneck: m) }
            #expect(abs(try run().item - before) < 1e-6, "\(method): nothing changes at attach")
            let perLayer = method == "AdapterBias" ? (I + 1) + C : (C * m + m) + (m * C + C)
            #expect(model.trainableParameterCount == L * perLayer)
            try run().backward()
            for (key, p) in model.namedParameters() {
                #expect((p.gradient != nil) == key.contains(method == "AdapterBias" ? ".adapter_bias." : ".parallel_adapter."), "\(key)")
            }
            // Once v (or W_up) moves, the output moves; switching the adapter off restores it.
            for (key, p) in model.namedParameters() where key.hasSuffix("adapter_vector") || key.hasSuffix("adapter_alpha.weight") || key.contains("parallel_adapter.t.adapter_up.weight") {
                p.value = try Tensor.normal(p.value.shape, std: 0.5, seed: 3).requiringGradient()
            }
            #expect(abs(try run().item - before) > 1e-4)
            model.activateAdapter(nil)
            #expect(abs(try run().item - before) < 1e-6)
        }
    }
}

struct BlockAdapterFileTests {
    @Test func blockAdaptersRoundTripAndBadFilesAreNamed() throws {
        func load() throws -> GPT2LMHeadModel {
            guard case let .gpt2LMHead(m) = try PretrainedModel.load(directory: ModelParityTests.directory("gpt2-lm")) else { throw ModelError.badInput("fixture") }
            return m
        }
        let model = try load()
        try model.addBottleneckAdapter("t", placement: .houlsby, size: 30, bottleneck: 4, nonLinearity: .tanh)
        try model.addAdapterBias("t", intermediate: 37, size: 30)
        try model.addParallelAdapter("t", size: 30, bottleneck: 3, scale: 2)
        for (i, (key, p)) in model.namedParameters().enumerated() where key.contains(".adapters.") {
            p.value = try Tensor.normal(p.value.shape, std: 0.3, seed: UInt64(i)).requiringGradient()
        }
        let ids = try IntTensor(shape: [1, 5], values: [5, 17, 42, 3, 8])
        let expected = try model.logits(ids)
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try AdapterFiles.saveBlockAdapters(model, name: "t", to: dir)
        let fresh = try load()
        try AdapterFiles.load(directory: dir, into: fresh, name: "restored")
        expectClose(try fresh.logits(ids), expected, atol: 1e-6, rtol: 1e-6, "block adapters after save and load")
        // Only adapter tensors and JSON: 4 bytes per adapter parameter plus the header.
        let count = model.namedParameters().filter { $0.key.contains(".adapters.") }.map { $0.parameter.value.count }.reduce(0, +)
        let bytes = try FileManager.default.attributesOfItem(atPath: dir.appendingPathComponent("adapter_model.safetensors").path)[.size] as! Int
        #expect(bytes >= 4 * count && bytes < 4 * count + 8192)

        // A missing tensor and an unexpected one are named.
        let file = try SafeTensorsFile(path: dir.appendingPathComponent("adapter_model.safetensors").path)
        var tensors = try Dictionary(uniqueKeysWithValues: file.names.map { ($0, try file.tensor($0)) })
        tensors["transformer.h.1.adapters.output_adapter.adapter_up.bias"] = nil
        try SafeTensorsFile.write(tensors, to: dir.appendingPathComponent("adapter_model.safetensors").path)
        #expect(throws: ModelError.checkpointMismatch(missing: ["transformer.h.1.adapters.output_adapter.adapter_up.bias"], unexpected: [], misshaped: [])) {
            try AdapterFiles.load(directory: dir, into: try load())
        }
        tensors["transformer.h.1.adapters.output_adapter.adapter_up.bias"] = try Tensor.zeros([30])
        tensors["transformer.h.9.adapters.output_adapter.adapter_up.bias"] = try Tensor.zeros([30])
        try SafeTensorsFile.write(tensors, to: dir.appendingPathComponent("adapter_model.safetensors").path)
        #expect(throws: ModelError.checkpointMismatch(missing: [], unexpected: ["transformer.h.9.adapters.output_adapter.adapter_up.bias (no parameter 'transformer.h.9.adapters.output_adapter.adapter_up.bias' in the model)"], misshaped: [])) {
            try AdapterFiles.load(directory: dir, into: try load())
        }
    }
}
