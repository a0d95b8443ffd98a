import Foundation
import Reins
import ReinsTestSupport
import Testing

/// LoRA on embedding tables (PEFT's `lora_embedding_A` / `lora_embedding_B`), and P-tuning adapters.
struct EmbeddingLoRATests {
    /// A new LoRA on GPT-2's tied wte and on c_attn: a no-op at attach, r·(V + C) parameters for the table, only adapter
    /// tensors train, merged equals unmerged (the tied output layer keeps reading the base table, as in PEFT) and
    /// unmerging restores the table bit for bit, greedy generation agrees with recomputing, and save -> load into a
    /// fresh base reproduces the trained logits.
    @Test func freshEmbeddingLoRATrainsMergesAndRoundTrips() throws {
        let model = try LoRATests().gpt2()
        let ids = try IntTensor(shape: [2, 5], values: [5, 17, 42, 3, 8, 9, 1, 77, 30, 2])
        let base = try model.logits(ids).scalars
        model.freeze()
        #expect { try model.addLoRA("bad", LoRAConfig(rank: 2, targets: ["wte"], dora: true)) } throws: {
            "\($0)".contains("'transformer.wte' is an embedding table: DoRA is not supported")
        }
        let keys = try model.addLoRA("task", LoRAConfig(rank: 3, alpha: 6, targets: ["wte", "c_attn"]), seed: 5)
        #expect(keys.sorted() == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn", "transformer.wte"])
        expectClose(try model.logits(ids).scalars, base, atol: 1e-6, rtol: 1e-6, "A = 0: attaching changes nothing")
        #expect(model.trainableParameterCount == 3 * (97 + 30) + 2 * 3 * (30 + 90))
        try LoRATests.trainAdapterAlone(model, ids)
        let table = model.transformer.tokenEmbedding
        #expect(table.loras["task"]!.a.value.scalars.contains { $0 != 0 }, "the table's A moved off zero")
        let trained = try model.logits(ids)
        #expect(trained.scalars != base, "the adapter learned something")
        let generated = try model.generate(prompts: [[5, 17, 42]], options: GenerationOptions(maxNewTokens: 4))[0]
        let recomputed = try model.logits(
            try IntTensor(shape: [1, generated.count - 1], values: Array(generated.dropLast())))
        let V = recomputed.shape[2]
        for t in 2..<(generated.count - 1) {
            let row = Array(recomputed.scalars[(t * V)..<((t + 1) * V)])
            #expect(Int32(row.indices.max { row[$0] < row[$1] }!) == generated[t + 1], "step \(t)")
        }
        #expect(model.tiedOutputEmbedding === table)
        let before = table.weight.value.scalars
        try model.mergeLoRA()
        #expect(table.isMerged && table.weight.value.scalars != before)
        expectClose(try model.logits(ids), trained, atol: 1e-5, rtol: 1e-5, "merged")
        try model.unmergeLoRA()
        #expect(table.weight.value.scalars == before)
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try PEFTAdapter.save(model, name: "task", to: dir, taskType: "CAUSAL_LM")
        let file = try SafeTensorsFile(path: dir.appendingPathComponent("adapter_model.safetensors").path)
        #expect(file.entries["base_model.model.transformer.wte.lora_embedding_A"]?.shape == [3, 97])
        #expect(file.entries["base_model.model.transformer.wte.lora_embedding_B"]?.shape == [30, 3])
        let fresh = try LoRATests().gpt2()
        try PEFTAdapter.load(directory: dir, into: fresh)
        expectClose(try fresh.logits(ids), trained, atol: 1e-6, rtol: 1e-6, "after save and load")
    }

    /// The lookup against plain loops: row + s·Σ_k B[:, k]·A[k, id]; the padding id's column of A gets no gradient (as
    /// torch's `padding_idx` in PEFT's lookup), the others the sum over their positions.
    @Test func embeddingLoRAEqualsPlainLoopsAndSkipsThePaddingColumn() throws {
        let (V, C, r) = (7, 5, 2), s: Float = 1.5
        let table = try Embedding(count: V, size: C, paddingIndex: 0, seed: 3)
        table.weight.isTrainable = false
        let lora = LoRA(
            a: try Tensor.normal([r, V], std: 1, seed: 4), b: try Tensor.normal([C, r], std: 1, seed: 5), scale: s)
        try table.attachLoRA("task", lora)
        let ids: [Int32] = [0, 3, 0, 5, 3]
        let out = try table(try IntTensor(shape: [5], values: ids))
        let (w, a, b) = (table.weight.value.scalars, lora.a.value.scalars, lora.b.value.scalars)
        var expected: [Float] = []
        for id in ids.map(Int.init) {
            for c in 0..<C {
                expected.append(w[id * C + c] + s * (0..<r).map { b[c * r + $0] * a[$0 * V + id] }.reduce(0, +))
            }
        }
        expectClose(out.scalars, expected, atol: 1e-6, rtol: 1e-6, "lookup")
        try out.sum().backward()
        let g = try #require(lora.a.gradient).scalars
        for k in 0..<r {
            #expect(g[k * V + 0] == 0, "padding column")
            let bSum = (0..<C).map { b[$0 * r + k] }.reduce(0, +)
            expectClose(
                [g[k * V + 3], g[k * V + 5], g[k * V + 1]], [2 * s * bSum, s * bSum, 0], atol: 1e-5, rtol: 1e-5,
                "∂/∂A row \(k)")
        }
        #expect {
            try table.attachLoRA("wide", LoRA(a: try Tensor.zeros([r, V + 1]), b: try Tensor.zeros([C, r]), scale: 1))
        } throws: {
            "\($0)".contains("do not fit a 7 x 5 embedding table")
        }
    }

    /// PEFT's AdaLoRA after rank allocation: the kept ranks per module (1 to 2 of 4), E folded into A, the scale
    /// α / (r₀ + 1e-5) of every module: PEFT's logits; a missing E is named.
    @Test func peftAdaLoRALoadsAsTheLoRAItComputes() throws {
        let dir = LoRATests.adapter("bert-adalora")
        guard
            case let .bertSequenceClassification(model) = try PretrainedModel.load(
                directory: Fixtures.model("bert-cls"))
        else {
            Issue.record("bert-cls is a sequence classifier"); return
        }
        try PEFTAdapter.load(directory: dir, into: model)
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        expectClose(
            try model.logits(
                io.intTensor("input_ids"), attentionMask: io.intTensor("attention_mask"),
                tokenTypeIDs: io.intTensor("token_type_ids")),
            try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "BERT + AdaLoRA + head")
        let adapted = model.namedModules().compactMap { $0.module as? Linear }.compactMap { $0.loras["default"] }
        #expect(adapted.map(\.rank).sorted() == [1, 1, 1, 2])
        #expect(adapted.allSatisfy { abs($0.scale - 6 / (4 + 1e-5)) < 1e-6 })
        // Saved, it is a PEFT LoRA adapter (per-module ranks and alphas in rank_pattern / alpha_pattern) with the same logits.
        let saved = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: saved) }
        try PEFTAdapter.save(model, to: saved, taskType: "SEQ_CLS", modulesToSave: ["classifier"])
        if let keep = ProcessInfo.processInfo.environment["REINS_SAVE_ADAPTERS"] {  // for check_reins_adapters_in_peft.py
            try PEFTAdapter.save(
                model, to: URL(fileURLWithPath: keep).appendingPathComponent("bert-adalora"), taskType: "SEQ_CLS",
                modulesToSave: ["classifier"])
        }
        #expect(
            try Checkpoint.readJSON(saved.appendingPathComponent("adapter_config.json"))["peft_type"] as? String
                == "LORA")
        guard
            case let .bertSequenceClassification(fresh) = try PretrainedModel.load(
                directory: Fixtures.model("bert-cls"))
        else { return }
        try PEFTAdapter.load(directory: saved, into: fresh)
        expectClose(
            try fresh.logits(
                io.intTensor("input_ids"), attentionMask: io.intTensor("attention_mask"),
                tokenTypeIDs: io.intTensor("token_type_ids")),
            try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "saved as LoRA and loaded back")
        let broken = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: broken) }
        try FileManager.default.copyItem(
            at: dir.appendingPathComponent("adapter_config.json"),
            to: broken.appendingPathComponent("adapter_config.json"))
        let file = try SafeTensorsFile(path: dir.appendingPathComponent("adapter_model.safetensors").path)
        var tensors = try Dictionary(uniqueKeysWithValues: file.names.map { ($0, try file.tensor($0)) })
        tensors["base_model.model.bert.encoder.layer.1.attention.self.query.lora_E"] = nil
        try SafeTensorsFile.write(tensors, to: broken.appendingPathComponent("adapter_model.safetensors").path)
        #expect(
            throws: ModelError.checkpointMismatch(
                missing: ["bert.encoder.layer.1.attention.self.query.lora_E"], unexpected: [], misshaped: [])
        ) {
            try PEFTAdapter.load(
                directory: broken, into: try PretrainedModel.load(directory: Fixtures.model("bert-cls")).module)
        }
    }

    /// A new LoRA on the tied output layer (GPT-2's lm_head): a no-op at attach, r·(C + V) parameters, only A and B get
    /// gradients (the shared table none), the input lookups are untouched, and merging is refused by name.
    @Test func freshOutputLayerLoRATrainsAloneAndRefusesToMerge() throws {
        let model = try LoRATests().gpt2()
        let ids = try IntTensor(shape: [1, 6], values: [5, 17, 42, 3, 8, 9])
        let base = try model.logits(ids).scalars
        let states = try model.transformer.hiddenStates(ids).scalars
        model.freeze()
        #expect(try model.addLoRA("task", LoRAConfig(rank: 2, alpha: 4, targets: ["lm_head"]), seed: 3) == ["lm_head"])
        expectClose(try model.logits(ids).scalars, base, atol: 1e-6, rtol: 1e-6, "B = 0: attaching changes nothing")
        #expect(model.trainableParameterCount == 2 * (30 + 97))
        model.lmHead.loras["task"]!.b.value = try Tensor.normal([97, 2], std: 0.5, seed: 8).requiringGradient()
        try model.loss(ids).backward()
        for (key, p) in model.namedParameters() {
            #expect((p.gradient != nil) == key.hasPrefix("lm_head.lora_"), "\(key)")
        }
        #expect(try model.logits(ids).scalars != base)
        #expect(try model.transformer.hiddenStates(ids).scalars == states, "the lookups read the table as before")
        #expect { try model.mergeLoRA() } throws: {
            "\($0)".contains("LoRA 'task' on the output layer cannot be merged")
        }
    }

    /// PEFT's P-tuning trains virtual tokens through an MLP and saves them folded (`prompt_embeddings`): loaded, it is
    /// prompt tuning with PEFT's logits.
    @Test(arguments: [("gpt2-ptuning", 4), ("bert-ptuning", 3)])
    func peftPTuningLoadsAsPromptTuning(adapter: String, tokens: Int) throws {
        let dir = LoRATests.adapter(adapter)
        #expect(
            try Checkpoint.readJSON(dir.appendingPathComponent("adapter_config.json"))["peft_type"] as? String
                == "P_TUNING")
        let loaded = try PretrainedModel.load(
            directory: Fixtures.model(adapter.hasPrefix("gpt2") ? "gpt2-lm" : "bert-cls"))
        try PEFTAdapter.load(directory: dir, into: loaded.module)
        switch loaded {
        case let .gpt2LMHead(m): #expect(m.transformer.promptLength == tokens)
        case let .bertSequenceClassification(m): #expect(m.bert.promptLength == tokens)
        default: Issue.record("unexpected model type")
        }
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        expectClose(
            try LoRATests.fixtureLogits(loaded, io), try io.tensor("logits"), atol: 1e-4, rtol: 1e-4,
            "\(adapter) logits")
    }
}
