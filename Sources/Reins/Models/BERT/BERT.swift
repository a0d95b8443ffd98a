import Foundation
import ReinsTensor

/// The sizes of a BERT model, read from its `config.json`.
public struct BertConfig: Sendable {
    public var vocabularySize: Int
    public var hidden: Int
    public var layers: Int
    public var heads: Int
    public var intermediate: Int
    public var positions: Int
    public var typeCount: Int
    public var activation: Activation
    public var layerNormEpsilon: Float
    public var labelCount: Int
    /// The padding token, whose word embedding gets no gradient.
    public var padTokenID: Int?
    /// Dropout in training mode (``TrainingMode``): after the embeddings and on each residual branch
    /// (`hidden_dropout_prob`), on the attention probabilities (`attention_probs_dropout_prob`), and on a classifier's
    /// input (`classifier_dropout`, by default the hidden dropout).
    public var hiddenDropout: Float
    public var attentionDropout: Float
    public var classifierDropout: Float

    /// A config from its fields, with BERT-base's values as defaults.
    /// - Throws: ``ModelError/badConfig(path:detail:)`` for sizes that do not make a model (see ``validate(path:)``).
    public init(
        vocabularySize: Int = 30522, hidden: Int = 768, layers: Int = 12, heads: Int = 12, intermediate: Int = 3072,
        positions: Int = 512, typeCount: Int = 2, activation: Activation = .gelu(.none),
        layerNormEpsilon: Float = 1e-12,
        labelCount: Int = 2, padTokenID: Int? = 0, hiddenDropout: Float = 0.1, attentionDropout: Float = 0.1,
        classifierDropout: Float? = nil
    ) throws {
        (self.vocabularySize, self.hidden, self.layers, self.heads, self.intermediate) = (
            vocabularySize, hidden, layers, heads, intermediate
        )
        (self.positions, self.typeCount, self.activation, self.layerNormEpsilon) = (
            positions, typeCount, activation, layerNormEpsilon
        )
        (self.labelCount, self.padTokenID) = (labelCount, padTokenID)
        (self.hiddenDropout, self.attentionDropout, self.classifierDropout) = (
            hiddenDropout, attentionDropout, classifierDropout ?? hiddenDropout
        )
        try validate()
    }

    /// The config as Hugging Face's `config.json` holds it (`model_type` `bert`), for ``Module/save(to:config:)``.
    public var json: [String: Any] {
        [
            "model_type": "bert", "vocab_size": vocabularySize, "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "intermediate_size": intermediate, "max_position_embeddings": positions,
            "type_vocab_size": typeCount, "hidden_act": activation.name, "layer_norm_eps": layerNormEpsilon,
            "num_labels": labelCount,
            "pad_token_id": padTokenID.map { $0 as Any } ?? NSNull(), "hidden_dropout_prob": hiddenDropout,
            "attention_probs_dropout_prob": attentionDropout, "classifier_dropout": classifierDropout,
            "position_embedding_type": "absolute",
        ]
    }

    public init(json: [String: Any], path: String = "config.json") throws {
        let c = ConfigReader(json: json, path: path)
        vocabularySize = try c.int("vocab_size", default: 30522)
        hidden = try c.int("hidden_size", default: 768)
        layers = try c.int("num_hidden_layers", default: 12)
        heads = try c.int("num_attention_heads", default: 12)
        intermediate = try c.int("intermediate_size", default: 3072)
        positions = try c.int("max_position_embeddings", default: 512)
        typeCount = try c.int("type_vocab_size", default: 2)
        activation = try Activation(try c.string("hidden_act", default: "gelu"), path: path)
        layerNormEpsilon = try c.float("layer_norm_eps", default: 1e-12)
        labelCount = try c.labelCount()
        hiddenDropout = try c.float("hidden_dropout_prob", default: 0.1)
        attentionDropout = try c.float("attention_probs_dropout_prob", default: 0.1)
        classifierDropout =
            json["classifier_dropout"] is NSNull
            ? hiddenDropout : try c.float("classifier_dropout", default: hiddenDropout)
        padTokenID = json["pad_token_id"] is NSNull ? nil : (try c.optionalInt("pad_token_id") ?? 0)
        let embedding = try c.string("position_embedding_type", default: "absolute")
        try c.require(embedding == "absolute", "position_embedding_type '\(embedding)' is not supported (absolute)")
        try validate(path: path)
    }

    /// Checks a config whether read from a file or set by hand; every model built from one calls it first.
    /// - Throws: ``ModelError/badConfig(path:detail:)`` naming the field: a size that is not positive, heads that do
    ///   not divide `hidden_size`, a pad token outside the vocabulary, a dropout outside [0, 1), or sizes whose
    ///   weights would not fit in memory (counted before anything is allocated).
    public func validate(path: String = "BertConfig") throws {
        let check = ConfigCheck(path: path)
        try check.positive([
            "vocab_size": vocabularySize, "hidden_size": hidden, "num_attention_heads": heads,
            "intermediate_size": intermediate, "max_position_embeddings": positions, "type_vocab_size": typeCount,
            "num_labels": labelCount,
        ])
        try check.require(layers >= 0, "num_hidden_layers is \(layers); it must not be negative")
        try check.require(hidden % heads == 0, "hidden_size \(hidden) is not divisible by num_attention_heads \(heads)")
        try check.require(
            vocabularySize <= Int(Int32.max), "vocab_size \(vocabularySize) does not fit 32-bit token ids")
        try check.require(layerNormEpsilon.isFinite && layerNormEpsilon >= 0, "layer_norm_eps is \(layerNormEpsilon)")
        try check.probabilities([
            "hidden_dropout_prob": hiddenDropout, "attention_probs_dropout_prob": attentionDropout,
            "classifier_dropout": classifierDropout,
        ])
        if let padTokenID {
            try check.require(
                (0..<vocabularySize).contains(padTokenID),
                "pad_token_id \(padTokenID) is outside the vocabulary of \(vocabularySize)")
        }
        try check.fitsInMemory(parameterTerms)
    }

    /// The parameters of the model, a pooler and a task head, as products of sizes: embeddings and their norm, per
    /// layer (q, k, v, output, two norms, FFN in and out), the pooler, the head. Multiplied in checked arithmetic.
    var parameterTerms: [[Int]] {
        let (C, I, L) = (hidden, intermediate, max(layers, 0))
        return [
            [vocabularySize, C], [positions, C], [typeCount, C], [2, C], [L, 4, C, C], [L, 8, C],
            [L, C, I], [L, I], [L, I, C], [L, C], [C, C], [C], [labelCount, C],
        ]
    }

    /// About how many parameters the model has (with a pooler and a task head), counted without building it;
    /// `Int.max` when the sizes overflow.
    public var parameterCount: Int { ConfigCheck.count(parameterTerms) ?? .max }
}

/// Word + position + token-type embeddings, then layer norm.
public final class BertEmbeddings: Module {
    public let word: Embedding, position: Embedding, tokenType: Embedding
    public let norm: LayerNorm

    init(_ c: BertConfig, seed: UInt64) throws {
        word = try Embedding(count: c.vocabularySize, size: c.hidden, paddingIndex: c.padTokenID, seed: seed)
        position = try Embedding(count: c.positions, size: c.hidden, seed: seed + 1)
        tokenType = try Embedding(count: c.typeCount, size: c.hidden, seed: seed + 2)
        norm = try LayerNorm(c.hidden, eps: c.layerNormEpsilon)
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("word_embeddings", word)
        visit.module("position_embeddings", position)
        visit.module("token_type_embeddings", tokenType)
        visit.module("LayerNorm", norm)
    }
}

/// One BERT layer (post-LN): `h = LN(x + attn(x))`, `out = LN(h + ffn(h))`.
public final class BertLayer: Module {
    public let query: Linear, key: Linear, value: Linear, attentionOut: Linear
    public let attentionNorm: LayerNorm
    public let feedForwardIn: Linear, feedForwardOut: Linear
    public let outputNorm: LayerNorm
    /// The layer's adapter insertion points.
    public let adapters = BlockAdapters()
    let heads: Int
    let activation: Activation
    let dropout: Float, attentionDropout: Float

    /// A layer of `c`'s sizes.
    /// - Throws: ``ModelError/badConfig(path:detail:)`` for a config that does not make a model.
    public init(_ c: BertConfig, seed: UInt64 = 0) throws {
        try c.validate()
        query = try Linear(inputs: c.hidden, outputs: c.hidden, seed: seed)
        key = try Linear(inputs: c.hidden, outputs: c.hidden, seed: seed + 1)
        value = try Linear(inputs: c.hidden, outputs: c.hidden, seed: seed + 2)
        attentionOut = try Linear(inputs: c.hidden, outputs: c.hidden, seed: seed + 3)
        attentionNorm = try LayerNorm(c.hidden, eps: c.layerNormEpsilon)
        feedForwardIn = try Linear(inputs: c.hidden, outputs: c.intermediate, seed: seed + 4)
        feedForwardOut = try Linear(inputs: c.intermediate, outputs: c.hidden, seed: seed + 5)
        outputNorm = try LayerNorm(c.hidden, eps: c.layerNormEpsilon)
        heads = c.heads
        activation = c.activation
        (dropout, attentionDropout) = (c.hiddenDropout, c.attentionDropout)
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("attention.self.query", query)
        visit.module("attention.self.key", key)
        visit.module("attention.self.value", value)
        visit.module("attention.output.dense", attentionOut)
        visit.module("attention.output.LayerNorm", attentionNorm)
        visit.module("intermediate.dense", feedForwardIn)
        visit.module("output.dense", feedForwardOut)
        visit.module("output.LayerNorm", outputNorm)
        visit.module("adapters", adapters)
    }

    /// - Parameter leading: with a count `n`, only the first `n` positions are computed (their queries still attend to
    ///   every key): the output is `[B, n, C]`, equal to the first `n` rows of the full layer's output.
    public func callAsFunction(
        _ input: Tensor, keyMask: IntTensor? = nil, prefix: (keys: Tensor, values: Tensor)? = nil,
        leading: Int? = nil
    ) throws -> Tensor {
        guard input.rank == 3, input.shape[2] == query.inputs else {
            throw ModelError.badInput("a BERT layer takes [batch, length, \(query.inputs)], got \(input.shape)")
        }
        var k = try key(input).splittingHeads(heads), v = try value(input).splittingHeads(heads)
        if let prefix {
            k = try Tensor.concatenate([prefix.keys, k], axis: 2)
            v = try Tensor.concatenate([prefix.values, v], axis: 2)
        }
        // Everything after the keys and values is per position: the rows not asked for are never computed.
        let x = try leading.map { try input.slice(axis: 1, 0..<$0) } ?? input
        let q = try query(x).splittingHeads(heads)
        let drop = attentionProbabilityDropout(
            attentionDropout, probabilities: q.shape[0] * heads * q.shape[2] * k.shape[2])
        let a = try Tensor.attention(query: q, key: k, value: v, keyMask: keyMask, dropout: drop).mergingHeads()
        let h = try attentionNorm(
            x + adapters.attention(attentionOut(a).trainingDropout(dropout), residual: x, norm: attentionNorm))
        let z = try activation.apply(h, feedForwardIn)
        let f = try feedForwardOut(z).trainingDropout(dropout)
        return try outputNorm(
            h + adapters.feedForward(adapters.parallel(f, input: h, intermediate: z), residual: h, norm: outputNorm))
    }
}

/// The BERT encoder (Devlin et al., arXiv 1810.04805): bidirectional attention with a padding mask, token types,
/// post-LN layers, and an optional pooler (tanh of a dense layer on [CLS]). Keys follow Hugging Face's `BertModel`.
public final class BertModel: Module, VirtualTokenHost {
    public let config: BertConfig
    public let embeddings: BertEmbeddings
    public let layers: [BertLayer]
    public let pooler: Linear?
    /// Named learned key/value prefixes (prefix tuning), one active (see ``VirtualTokenHost``).
    public let prefixes = PrefixSet()
    /// Prompt tuning (Lester et al., arXiv 2104.08691), the input-embedding insertion point: `P` learned vectors
    /// `[P, C]` placed before the token embeddings, as PEFT does on BERT: they take positions 0..<P (the tokens follow),
    /// token type 0, are always attended to, and the hidden states include them (`[B, P + T, C]`; the pooler reads the
    /// first virtual token).
    public let prompts = PromptSet()

    public init(_ config: BertConfig, pooler: Bool = true, seed: UInt64 = 0) throws {
        try config.validate()
        self.config = config
        embeddings = try BertEmbeddings(config, seed: seed)
        layers = try (0..<config.layers).map { try BertLayer(config, seed: seed + 10 + UInt64($0) * 10) }
        self.pooler = pooler ? try Linear(inputs: config.hidden, outputs: config.hidden, seed: seed + 5) : nil
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("embeddings", embeddings)
        visit.modules("encoder.layer", layers)
        visit.module("pooler.dense", pooler)
        prefix?.visitParameters(&visit)
        visit.parameter("prompt_tuning_embeddings", prompt)
    }

    /// The last hidden states `[B, T, C]` (`[B, P + T, C]` with a prompt).
    /// - Parameters:
    ///   - attentionMask: `[B, T]`, 1 for real tokens, 0 for padding (default: all 1).
    ///   - tokenTypeIDs: `[B, T]` segment ids (default: all 0).
    /// - Throws: ``ModelError`` for ids or types out of range, sequences longer than the positions, bad shapes.
    public func hiddenStates(_ ids: IntTensor, attentionMask: IntTensor? = nil, tokenTypeIDs: IntTensor? = nil) throws
        -> Tensor
    {
        try encode(ids, attentionMask: attentionMask, tokenTypeIDs: tokenTypeIDs, firstOnly: false)
    }

    /// The last hidden state of the first position only, `[B, 1, C]` — [CLS], or the first virtual token with a
    /// prompt: what ``pooled(_:)`` reads. Equal to the first row of ``hiddenStates(_:attentionMask:tokenTypeIDs:)``,
    /// for less work: the last layer still builds keys and values for every position, but its queries, attention
    /// output and feed-forward run on one row per sequence (about 7% of BERT-base's matrix products, forward and
    /// backward). Same parameters and errors as ``hiddenStates(_:attentionMask:tokenTypeIDs:)``.
    public func firstHiddenState(_ ids: IntTensor, attentionMask: IntTensor? = nil, tokenTypeIDs: IntTensor? = nil)
        throws -> Tensor
    {
        try encode(ids, attentionMask: attentionMask, tokenTypeIDs: tokenTypeIDs, firstOnly: true)
    }

    private func encode(_ ids: IntTensor, attentionMask: IntTensor?, tokenTypeIDs: IntTensor?, firstOnly: Bool) throws
        -> Tensor
    {
        guard ids.shape.count == 2 else {
            throw ModelError.badInput("input ids must be [batch, length], got \(ids.shape)")
        }
        let (B, T) = (ids.shape[0], ids.shape[1])
        // In a batch routed to adapters of which some bring a prefix or prompt vectors, each row gets its own, padded
        // on the left to the longest (P, Q) and masked out, so that it sees what it would alone.
        let routed = try routedVirtualTokens(rows: B)
        let P = routed?.P ?? prefix?.length ?? 0, Q = routed?.Q ?? promptLength
        let longest = routed.map { r in (0..<B).map { r.prefixLength($0) + r.promptLength($0) }.max() ?? 0 } ?? P + Q
        guard longest + T <= config.positions else {
            throw ModelError.sequenceTooLong(length: longest + T, maximum: config.positions)
        }
        try checkTokens(ids, vocabularySize: config.vocabularySize)
        for (name, t) in [("attention mask", attentionMask), ("token type ids", tokenTypeIDs)] {
            if let t, t.shape != ids.shape {
                throw ModelError.badInput("\(name) \(t.shape) does not match input ids \(ids.shape)")
            }
        }
        let types = try tokenTypeIDs ?? IntTensor(shape: [B, T], values: [Int32](repeating: 0, count: B * T))
        if let bad = types.values.firstIndex(where: { $0 < 0 || Int($0) >= config.typeCount }) {
            throw ModelError.tokenTypeOutOfRange(
                position: bad, type: Int(types.values[bad]), typeCount: config.typeCount)
        }
        var words = try embeddings.word(ids)
        var typeIDs = types
        if Q > 0 {
            // As PEFT: prompt vectors first, then the tokens; positions and token types run over both.
            let vectors =
                try routed?.promptInputs(width: config.hidden)
                ?? prompt.map { try $0.value.reshaped([1, Q, config.hidden]).repeatedOverBatch(B) }
            if let vectors { words = try Tensor.concatenate([vectors, words], axis: 1) }
            var values: [Int32] = []
            for b in 0..<B { values += [Int32](repeating: 0, count: Q) + types.values[(b * T)..<((b + 1) * T)] }
            typeIDs = try IntTensor(shape: [B, Q + T], values: values)
        }
        let W = Q + T
        let positions =
            try routed?.positions(IntTensor(shape: [B, T], values: (0..<(B * T)).map { Int32($0 % T) }))
            ?? IntTensor(shape: [B, W], values: (0..<(B * W)).map { Int32(P + $0 % W) })
        let e = try words + embeddings.position(positions) + embeddings.tokenType(typeIDs)
        var x = try embeddings.norm(e).trainingDropout(config.hiddenDropout)
        let keyMask: IntTensor?, prefixes: [(keys: Tensor, values: Tensor)]?
        if let routed {
            keyMask = try routed.keyMask(attentionMask, length: T)
            prefixes = try routed.keysValues(layers: layers.count, heads: config.heads, headSize: config.hidden / config.heads)
        } else {
            let withPrompt = try maskWithPrompt(attentionMask, batch: B, length: T)
            keyMask = try prefix.map { try $0.extend(withPrompt, batch: B, width: W) } ?? withPrompt
            prefixes = try prefix?.keysValues(batch: B)
        }
        // The first position read (firstOnly): [CLS], or with a prompt its first vector — in a routed batch each row's
        // own, after its padding.
        let leading = firstOnly && routed == nil
        for (i, layer) in layers.enumerated() {
            x = try layer(x, keyMask: keyMask, prefix: prefixes?[i], leading: leading && i == layers.count - 1 ? 1 : nil)
        }
        if firstOnly, let routed { return try x.positions((0..<B).map { Q - routed.promptLength($0) }) }
        return firstOnly && layers.isEmpty ? try x.slice(axis: 1, 0..<1) : x
    }

    /// The last hidden states of the tokens, `[B, T, C]`: ``hiddenStates(_:attentionMask:tokenTypeIDs:)`` without the
    /// prompt vectors' positions (for per-token heads), or with them (`includingPrompt`, `[B, P + T, C]`, PEFT's layout).
    public func tokenStates(
        _ ids: IntTensor, attentionMask: IntTensor? = nil, tokenTypeIDs: IntTensor? = nil,
        includingPrompt: Bool = false
    ) throws -> Tensor {
        let h = try hiddenStates(ids, attentionMask: attentionMask, tokenTypeIDs: tokenTypeIDs)
        let Q = includingPrompt ? 0 : leadingPromptRows
        return Q == 0 ? h : try h.slice(axis: 1, Q..<h.shape[1])
    }

    /// The pooled [CLS] vector `[B, C]`: `tanh(dense(h[:, 0]))`.
    public func pooled(_ hidden: Tensor) throws -> Tensor {
        guard let pooler else { throw ModelError.badInput("this model was built without a pooler") }
        guard hidden.rank == 3, hidden.shape[1] > 0 else {
            throw ModelError.badInput("pooled expects hidden states [batch, length >= 1, hidden], got \(hidden.shape)")
        }
        let cls = try hidden.slice(axis: 1, 0..<1).reshaped([hidden.shape[0], hidden.shape[2]])
        return try pooler(cls).tanh()
    }
}

/// BERT with the masked-LM head: dense + activation + layer norm, then a decoder tied to the word embeddings.
public final class BertForMaskedLM: Module {
    public let bert: BertModel
    public let transform: Linear
    public let transformNorm: LayerNorm
    public let decoderBias: Parameter
    /// The decoder: the word embedding's table as its weight (and a LoRA insertion point, PEFT's `decoder`).
    public let decoder: TiedOutput

    public init(_ config: BertConfig, seed: UInt64 = 0) throws {
        bert = try BertModel(config, pooler: false, seed: seed)
        transform = try Linear(inputs: config.hidden, outputs: config.hidden, seed: seed + 6)
        transformNorm = try LayerNorm(config.hidden, eps: config.layerNormEpsilon)
        decoderBias = Parameter("bias", try Tensor.zeros([config.vocabularySize]))
        decoder = TiedOutput(table: bert.embeddings.word, bias: decoderBias)
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("bert", bert)
        visit.module("cls.predictions.transform.dense", transform)
        visit.module("cls.predictions.transform.LayerNorm", transformNorm)
        visit.parameter("cls.predictions.bias", decoderBias)
        visit.module("cls.predictions.decoder", decoder)
    }

    /// Vocabulary logits `[B, T, V]`.
    public func logits(_ ids: IntTensor, attentionMask: IntTensor? = nil, tokenTypeIDs: IntTensor? = nil) throws
        -> Tensor
    {
        let h = try bert.hiddenStates(ids, attentionMask: attentionMask, tokenTypeIDs: tokenTypeIDs)
        let t = try transformNorm(bert.config.activation.apply(h, transform))
        return try decoder(t)
    }
}

/// BERT with a classifier on the pooled [CLS] vector (single sentences, or pairs with token types).
public final class BertForSequenceClassification: Module {
    public let bert: BertModel
    /// The classifier in use: the model's own, or the active adapter's.
    public var classifier: Linear { heads.current }
    public let heads: Variants<Linear>
    /// How a sequence becomes one vector: the pooler on [CLS] (BERT's recipe), or the mean of the token states.
    public var pooling: Pooling

    public init(_ config: BertConfig, pooling: Pooling = .cls, seed: UInt64 = 0) throws {
        bert = try BertModel(config, pooler: pooling == .cls, seed: seed)
        heads = Variants(try Linear(inputs: config.hidden, outputs: config.labelCount, seed: seed + 6))
        self.pooling = pooling
    }

    public func newHead(labels: Int, seed: UInt64) throws -> Linear {
        try Linear(inputs: bert.config.hidden, outputs: labels, seed: seed)
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("bert", bert)
        visit.module("classifier", classifier)
    }

    /// Class logits `[B, labels]`.
    public func logits(_ ids: IntTensor, attentionMask: IntTensor? = nil, tokenTypeIDs: IntTensor? = nil) throws
        -> Tensor
    {
        let pooled =
            try pooling == .cls
            ? bert.pooled(bert.firstHiddenState(ids, attentionMask: attentionMask, tokenTypeIDs: tokenTypeIDs))
            : Pooling.mean(
                bert.hiddenStates(ids, attentionMask: attentionMask, tokenTypeIDs: tokenTypeIDs),
                attentionMask: bert.maskWithPrompt(attentionMask, batch: ids.shape[0], length: ids.shape[1]))
        return try heads.apply(pooled.trainingDropout(bert.config.classifierDropout))
    }
}

/// BERT with a per-token classifier (tagging).
public final class BertForTokenClassification: Module {
    public let bert: BertModel
    /// The classifier in use: the model's own, or the active adapter's.
    public var classifier: Linear { heads.current }
    public let heads: Variants<Linear>

    public init(_ config: BertConfig, seed: UInt64 = 0) throws {
        bert = try BertModel(config, pooler: false, seed: seed)
        heads = Variants(try Linear(inputs: config.hidden, outputs: config.labelCount, seed: seed + 6))
    }

    public func newHead(labels: Int, seed: UInt64) throws -> Linear {
        try Linear(inputs: bert.config.hidden, outputs: labels, seed: seed)
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("bert", bert)
        visit.module("classifier", classifier)
    }

    /// Per-token logits `[B, T, labels]` (with prompt tuning, for the tokens only, not the prompt vectors; with
    /// `includingPrompt`, `[B, P + T, labels]`, the virtual positions first, as PEFT returns them).
    public func logits(
        _ ids: IntTensor, attentionMask: IntTensor? = nil, tokenTypeIDs: IntTensor? = nil, includingPrompt: Bool = false
    ) throws -> Tensor {
        let h = try bert.tokenStates(
            ids, attentionMask: attentionMask, tokenTypeIDs: tokenTypeIDs, includingPrompt: includingPrompt)
        return try heads.apply(h.trainingDropout(bert.config.classifierDropout))
    }
}

/// BERT for extractive question answering: per-token start and end logits.
public final class BertForQuestionAnswering: Module {
    public let bert: BertModel
    /// The start/end head in use: the model's own, or the active adapter's.
    public var outputs: Linear { heads.current }
    public let heads: Variants<Linear>

    public init(_ config: BertConfig, seed: UInt64 = 0) throws {
        bert = try BertModel(config, pooler: false, seed: seed)
        heads = Variants(try Linear(inputs: config.hidden, outputs: 2, seed: seed + 6))
    }

    public func newHead(labels: Int, seed: UInt64) throws -> Linear {
        try Linear(inputs: bert.config.hidden, outputs: 2, seed: seed)
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("bert", bert)
        visit.module("qa_outputs", outputs)
    }

    /// Start and end logits, each `[B, T]` (with prompt tuning, over the tokens only; with `includingPrompt`,
    /// `[B, P + T]`, the virtual positions first, as PEFT returns them).
    public func logits(
        _ ids: IntTensor, attentionMask: IntTensor? = nil, tokenTypeIDs: IntTensor? = nil,
        includingPrompt: Bool = false
    ) throws -> (start: Tensor, end: Tensor) {
        let h = try bert.tokenStates(
            ids, attentionMask: attentionMask, tokenTypeIDs: tokenTypeIDs, includingPrompt: includingPrompt)
        let both = try heads.apply(h)
        let (B, T) = (h.shape[0], h.shape[1])
        return (try both.slice(axis: 2, 0..<1).reshaped([B, T]), try both.slice(axis: 2, 1..<2).reshaped([B, T]))
    }

    /// The best answer span per sequence: the `(start, end)` maximising `start + end` logits with
    /// `start <= end < start + maxAnswerLength`, among positions where `allowed` is true (e.g. context tokens).
    /// - Throws: ``ModelError/badInput(_:)`` when `start`, `end` and `allowed` differ in length.
    public static func bestSpan(start: [Float], end: [Float], allowed: [Bool]? = nil, maxAnswerLength: Int = 30) throws
        -> (start: Int, end: Int, score: Float)?
    {
        guard end.count == start.count, allowed.map({ $0.count == start.count }) ?? true else {
            throw ModelError.badInput(
                "bestSpan: \(start.count) start logits, \(end.count) end logits and \(allowed.map { "\($0.count)" } ?? "no") allowed flags must agree"
            )
        }
        var best: (Int, Int, Float)?
        for s in start.indices where allowed?[s] ?? true {
            let last = min(
                end.count,
                s.addingReportingOverflow(max(maxAnswerLength, 1)).overflow ? end.count : s + max(maxAnswerLength, 1))
            for e in s..<last where allowed?[e] ?? true {
                let score = start[s] + end[e]
                if best == nil || score > best!.2 { best = (s, e, score) }
            }
        }
        return best.map { (start: $0.0, end: $0.1, score: $0.2) }
    }
}
