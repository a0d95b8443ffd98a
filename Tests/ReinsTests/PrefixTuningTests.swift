import Foundation
import Reins
import ReinsTestSupport
import Testing

struct PrefixTuningTests {
    @Test func peftPrefixOnBERTWithPaddingAndSavedHeadReproducesPEFTLogits() throws {
        guard
            case let .bertSequenceClassification(model) = try PretrainedModel.load(
                directory: Fixtures.model("bert-cls"))
        else { return }
        let dir = LoRATests.adapter("bert-prefix")
        try PEFTAdapter.load(directory: dir, into: model)
        #expect(model.bert.prefix?.length == 3)
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        let logits = try model.logits(
            try io.intTensor("input_ids"), attentionMask: try io.intTensor("attention_mask"),
            tokenTypeIDs: try io.intTensor("token_type_ids"))
        expectClose(logits, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "BERT + prefix + head logits")
        model.freeze()
        model.bert.prefix!.embeddings.isTrainable = true
        let loss = try Tensor.crossEntropy(
            logits: model.logits(try io.intTensor("input_ids"), attentionMask: try io.intTensor("attention_mask")),
            targets: IntTensor([0, 1]))
        try loss.backward()
        for (key, p) in model.namedParameters() {
            #expect((p.gradient != nil) == (key == "bert.prompt_embeddings"), "\(key)")
        }
    }

    @Test func peftPromptTuningOnBERTReproducesPEFTLogits() throws {
        guard
            case let .bertSequenceClassification(model) = try PretrainedModel.load(
                directory: Fixtures.model("bert-cls"))
        else { return }
        let dir = LoRATests.adapter("bert-prompt")
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        let ids = try io.intTensor("input_ids"), mask = try io.intTensor("attention_mask"),
            types = try io.intTensor("token_type_ids")
        try model.loadAdapter("prompt", from: dir)
        #expect(model.bert.promptLength == 4)
        expectClose(
            try model.logits(ids, attentionMask: mask, tokenTypeIDs: types), try io.tensor("logits"), atol: 1e-4,
            rtol: 1e-4, "BERT + prompt + head logits")
        // Only the prompt and the head train.
        try Tensor.crossEntropy(
            logits: model.logits(ids, attentionMask: mask, tokenTypeIDs: types), targets: IntTensor([0, 2])
        ).backward()
        for (key, p) in model.namedParameters() {
            #expect(
                (p.gradient != nil) == (key == "bert.prompt_tuning_embeddings" || key.hasPrefix("classifier.")),
                "\(key)")
        }
        // Switched off, the base model's own logits come back (the prompt's positions are gone).
        model.activateAdapter(nil)
        #expect(try model.bert.hiddenStates(ids, attentionMask: mask).shape == [2, 9, 30])
    }

    /// Token classification with a prompt: PEFT's logits cover the virtual positions first, `[B, P + T, labels]`
    /// (`includingPrompt`, what `reins logits` writes); without it, the tokens' rows alone, the same numbers.
    @Test func peftPromptTuningOnTokenClassificationReproducesPEFTLogits() throws {
        guard case let .bertTokenClassification(model) = try PretrainedModel.load(directory: Fixtures.model("bert-tok"))
        else {
            Issue.record("bert-tok is a token classifier"); return
        }
        let dir = LoRATests.adapter("bert-tok-prompt")
        try PEFTAdapter.load(directory: dir, into: model)
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        let ids = try io.intTensor("input_ids"), mask = try io.intTensor("attention_mask"),
            types = try io.intTensor("token_type_ids")
        let all = try model.logits(ids, attentionMask: mask, tokenTypeIDs: types, includingPrompt: true)
        #expect(all.shape == [2, 11, 5])
        expectClose(
            all, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "BERT token classification + prompt, P + T positions")
        expectClose(
            try model.logits(ids, attentionMask: mask, tokenTypeIDs: types), try all.slice(axis: 1, 2..<11),
            atol: 0, rtol: 0, "the tokens' rows")
    }

    @Test func peftPrefixReproducesPEFTLogitsAndGenerationAgreesWithRecomputing() throws {
        guard case let .gpt2LMHead(model) = try PretrainedModel.load(directory: Fixtures.model("gpt2-lm")) else {
            return
        }
        let dir = LoRATests.adapter("gpt2-prefix")
        try PEFTAdapter.load(directory: dir, into: model)
        #expect(model.transformer.prefixLength == 4)
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        let ids = try io.intTensor("input_ids"), mask = try io.intTensor("attention_mask")
        expectClose(
            try model.logits(ids, attentionMask: mask), try io.tensor("logits"), atol: 1e-4, rtol: 1e-4,
            "GPT-2 + prefix logits")
        // Generation with the KV cache (prefix in the cache) continues exactly as recomputing from scratch would.
        let out = try model.generate(prompts: [[5, 17, 42]], options: GenerationOptions(maxNewTokens: 6))[0]
        let full = try model.logits(try IntTensor(shape: [1, out.count - 1], values: Array(out.dropLast())))
        let V = full.shape[2]
        for t in 2..<(out.count - 1) {
            let row = Array(full.scalars[(t * V)..<((t + 1) * V)])
            #expect(Int32(row.indices.max { row[$0] < row[$1] }!) == out[t + 1], "step \(t)")
        }
        // The prefix gets gradients; nothing else does once the base is frozen.
        model.freeze()
        model.transformer.prefix!.embeddings.isTrainable = true
        try model.loss(ids, attentionMask: mask).backward()
        for (key, p) in model.namedParameters() {
            #expect((p.gradient != nil) == (key == "transformer.prompt_embeddings"), "\(key)")
        }
        #expect(model.trainableParameterCount == 4 * 2 * 2 * 30)
        // A prefix for another model size is refused with the shapes named.
        #expect { try model.transformer.attachPrefix(Parameter("p", try Tensor.zeros([4, 100]))) } throws: {
            "\($0)".contains("expected [P, 120]")
        }
    }

    /// A prefix started from real tokens' activations (``CausalLanguageModel/initializePrefix(_:fromTokens:)``) makes
    /// the model compute what the bare base computes with those tokens written first: the same logits at the real
    /// positions — GPT-2's learned positions, and Llama's rotary ones with grouped-query heads.
    @Test(arguments: ["gpt2-lm", "llama-tiny"])
    func prefixInitializedFromTokensActsAsThoseTokens(name: String) throws {
        let model: any CausalLanguageModel
        switch try PretrainedModel.load(directory: Fixtures.model(name)) {
        case let .gpt2LMHead(m): model = m
        case let .llamaCausalLM(m): model = m
        default: Issue.record("\(name) is not a causal LM"); return
        }
        func logits(_ ids: [Int32]) throws -> Tensor {
            try model.outputLogits(
                model.decoderStates(
                    IntTensor(shape: [1, ids.count], values: ids), attentionMask: nil, positionIDs: nil, cache: nil))
        }
        let lead = [3, 11, 7, 19, 2], rest: [Int32] = [5, 17, 29, 8, 1, 23, 9]
        let written = try logits(lead.map(Int32.init) + rest).slice(axis: 1, lead.count..<(lead.count + rest.count))
        let trainable = try model.addAdapter("p", .prefix(length: lead.count), seed: 3)
        let noise = try logits(rest)
        try model.initializePrefix("p", fromTokens: lead)
        expectClose(try logits(rest), written, atol: 1e-4, rtol: 1e-4, "\(name): prefix from tokens = tokens written")
        #expect(
            zip(noise.scalars, written.scalars).map { abs($0 - $1) }.max()! > 1e-2, "the random prefix was not already equal")
        // Still exactly the prefix trains; bad requests are named.
        #expect(model.trainableParameterCount == trainable)
        #expect { try model.initializePrefix("p", fromTokens: [1, 2]) } throws: { "\($0)".contains("5 virtual tokens") }
        #expect { try model.initializePrefix("q", fromTokens: lead) } throws: { "\($0)".contains("no prefix adapter named 'q'") }
        #expect { try model.initializePrefix("p", fromTokens: [1, 2, 3, 4, 1 << 40]) } throws: {
            "\($0)".contains("outside the vocabulary")
        }
    }
}
