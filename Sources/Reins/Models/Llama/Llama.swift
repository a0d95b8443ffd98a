import Foundation
import ReinsTensor

/// RMS normalisation over the last axis (arXiv 1910.07467), Llama's norm: `x / √(mean(x²) + eps) · weight`.
public final class RMSNorm: Module {
    public let weight: Parameter
    public let eps: Float

    public init(_ size: Int, eps: Float = 1e-6) throws {
        guard size > 0, eps.isFinite, eps >= 0 else {
            throw ModelError.badInput("RMSNorm needs a positive size and a finite eps >= 0, got \(size) and \(eps)")
        }
        weight = Parameter("weight", try Tensor.ones([size]))
        self.eps = eps
    }

    public func visitParameters(_ visit: inout ParameterVisitor) { visit.parameter("weight", weight) }

    public func callAsFunction(_ x: Tensor) throws -> Tensor { try Tensor.rmsNorm(x, weight: weight.value, eps: eps) }
}

/// Llama's attention projections: queries for `heads` heads, keys and values for `keyValueHeads` (grouped-query).
public final class LlamaAttention: Module {
    public let queryProjection: Linear, keyProjection: Linear, valueProjection: Linear, outputProjection: Linear

    public init(_ config: LlamaConfig, seed: UInt64 = 0) throws {
        let (C, q, kv) = (config.hidden, config.heads * config.headSize, config.keyValueHeads * config.headSize)
        queryProjection = try Linear(inputs: C, outputs: q, bias: config.qkvBias, seed: seed)
        keyProjection = try Linear(inputs: C, outputs: kv, bias: config.qkvBias, seed: seed + 1)
        valueProjection = try Linear(inputs: C, outputs: kv, bias: config.qkvBias, seed: seed + 2)
        outputProjection = try Linear(inputs: q, outputs: C, bias: config.outputBias, seed: seed + 3)
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("q_proj", queryProjection)
        visit.module("k_proj", keyProjection)
        visit.module("v_proj", valueProjection)
        visit.module("o_proj", outputProjection)
    }
}

/// Llama's gated feed-forward network: `down(silu(gate(x)) ⊙ up(x))`.
public final class LlamaMLP: Module {
    public let gateProjection: Linear, upProjection: Linear, downProjection: Linear

    public init(_ config: LlamaConfig, seed: UInt64 = 0) throws {
        let (C, I) = (config.hidden, config.intermediate)
        gateProjection = try Linear(inputs: C, outputs: I, bias: config.mlpBias, seed: seed)
        upProjection = try Linear(inputs: C, outputs: I, bias: config.mlpBias, seed: seed + 1)
        downProjection = try Linear(inputs: I, outputs: C, bias: config.mlpBias, seed: seed + 2)
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("gate_proj", gateProjection)
        visit.module("up_proj", upProjection)
        visit.module("down_proj", downProjection)
    }
}

/// One Llama decoder layer (pre-norm): `x + attn(norm(x))`, then `x + mlp(norm(x))`, with rotary embeddings on
/// queries and keys and grouped-query attention. Keys follow Hugging Face's `LlamaDecoderLayer`.
public final class LlamaDecoderLayer: Module {
    public let inputNorm: RMSNorm, postAttentionNorm: RMSNorm
    public let attention: LlamaAttention
    public let mlp: LlamaMLP
    /// The layer's adapter insertion points (after attention, after the FFN, parallel to it).
    public let adapters = BlockAdapters()
    let heads: Int, keyValueHeads: Int, headSize: Int
    let slidingWindow: Int?, attentionDropout: Float

    public init(_ config: LlamaConfig, seed: UInt64 = 0) throws {
        try config.validate()
        inputNorm = try RMSNorm(config.hidden, eps: config.rmsNormEpsilon)
        postAttentionNorm = try RMSNorm(config.hidden, eps: config.rmsNormEpsilon)
        attention = try LlamaAttention(config, seed: seed)
        mlp = try LlamaMLP(config, seed: seed + 5)
        (heads, keyValueHeads, headSize) = (config.heads, config.keyValueHeads, config.headSize)
        (slidingWindow, attentionDropout) = (config.slidingWindow, config.attentionDropout)
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("self_attn", attention)
        visit.module("mlp", mlp)
        visit.module("input_layernorm", inputNorm)
        visit.module("post_attention_layernorm", postAttentionNorm)
        visit.module("adapters", adapters)
    }

    /// `x: [B, T, C]`; `angles` (cos, sin `[B, T, hs/2]`) for the new positions; `keyMask: [B, Tk]` over the prefix,
    /// cached and new positions. `prefix` (keys, values `[B, NKV, P, hs]`, not rotated, as PEFT hands them to the
    /// model) is prepended when nothing is cached yet. With a cache, the new keys and values are appended to it.
    /// With `rowCaches` (one new position per row, no gradients), each row appends to and attends over its own cache.
    public func callAsFunction(
        _ x: Tensor, angles: (cos: Tensor, sin: Tensor), keyMask: IntTensor? = nil, cache: KVCache.Layer? = nil,
        prefix: (keys: Tensor, values: Tensor)? = nil, rowCaches: [KVCache.Layer]? = nil
    ) throws -> Tensor {
        guard x.rank == 3, x.shape[2] == attention.queryProjection.inputs else {
            throw ModelError.badInput(
                "a Llama layer takes [batch, length, \(attention.queryProjection.inputs)], got \(x.shape)")
        }
        let h = try inputNorm(x)
        let qkv = try Linear.products(
            of: [attention.queryProjection, attention.keyProjection, attention.valueProjection], h)
        if let rowCaches {
            let a = try Tensor.attendingRowCaches(
                query: qkv[0], key: qkv[1], value: qkv[2], heads: heads, keyValueHeads: keyValueHeads, angles: angles,
                caches: rowCaches, window: slidingWindow)
            return try feedForward(x, attended: a)
        }
        let q = try qkv[0].rotated(heads: heads, cos: angles.cos, sin: angles.sin)
        var k = try qkv[1].rotated(heads: keyValueHeads, cos: angles.cos, sin: angles.sin)
        var v = try qkv[2].splittingHeads(keyValueHeads)
        if let prefix, cache?.keys == nil {
            k = try Tensor.concatenate([prefix.keys, k], axis: 2)
            v = try Tensor.concatenate([prefix.values, v], axis: 2)
        }
        var keyLength: Int?
        if let cache {
            if !Autograd.isEnabled {
                // Decoding: append in place to storage with room to grow; attention reads its filled rows.
                try cache.append(k, v)
                (k, v, keyLength) = (cache.keys!, cache.values!, cache.length)  // append just set them
            } else {
                if let pk = cache.keys, let pv = cache.values, cache.length > 0 {
                    k = try Tensor.concatenate([pk.slice(axis: 2, 0..<cache.length), k], axis: 2)
                    v = try Tensor.concatenate([pv.slice(axis: 2, 0..<cache.length), v], axis: 2)
                }
                cache.set(k, v)
            }
        }
        let drop = attentionProbabilityDropout(
            attentionDropout, probabilities: q.shape[0] * heads * q.shape[2] * (keyLength ?? k.shape[2]))
        let a = try Tensor.attention(
            query: q, key: k, value: v, causal: true, keyMask: keyMask, dropout: drop, window: slidingWindow,
            keyLength: keyLength
        ).mergingHeads()
        return try feedForward(x, attended: a)
    }

    /// The block after attention: output projection, residual, norm, SwiGLU feed-forward and the adapters around them.
    func feedForward(_ x: Tensor, attended a: Tensor) throws -> Tensor {
        let afterAttention = try x + adapters.attention(attention.outputProjection(a), residual: x)
        let normed = try postAttentionNorm(afterAttention)
        let gateUp = try Linear.products(of: [mlp.gateProjection, mlp.upProjection], normed)
        let z = try Tensor.swiGLU(gate: gateUp[0], up: gateUp[1])
        let f = try mlp.downProjection(z)
        return try afterAttention
            + adapters.feedForward(adapters.parallel(f, input: normed, intermediate: z), residual: afterAttention)
    }
}

/// The Llama-family decoder stack (Touvron et al., arXiv 2302.13971): token embeddings, pre-norm layers with rotary
/// position embeddings and grouped-query attention, a final RMSNorm. Also Qwen2 (q/k/v biases), Mistral (sliding
/// window) and SmolLM2. Keys follow Hugging Face's `LlamaModel`.
public final class LlamaModel: Module, VirtualTokenHost {
    public let config: LlamaConfig
    public let tokenEmbedding: Embedding
    public let layers: [LlamaDecoderLayer]
    public let finalNorm: RMSNorm
    public let rotary: RotaryEmbedding
    /// Prefix tuning: per layer `P` keys and values of the key/value heads' width (`num_key_value_heads · head_dim`,
    /// as PEFT builds them for grouped-query attention).
    public let prefixes = PrefixSet()
    /// Prompt tuning: `P` vectors `[P, hidden]` before the token embeddings.
    public let prompts = PromptSet()
    /// Gradient checkpointing while training (transformers' `gradient_checkpointing_enable()`): each layer keeps only
    /// its input and is computed again in backward, so activations take one layer's memory instead of every layer's,
    /// for one more forward pass. Not used with prefix tuning or a KV cache.
    public var gradientCheckpointing = false

    public init(_ config: LlamaConfig, seed: UInt64 = 0) throws {
        try config.validate()
        self.config = config
        tokenEmbedding = try Embedding(count: config.vocabularySize, size: config.hidden, seed: seed)
        layers = try (0..<config.layers).map { try LlamaDecoderLayer(config, seed: seed + 10 + UInt64($0) * 10) }
        finalNorm = try RMSNorm(config.hidden, eps: config.rmsNormEpsilon)
        rotary = RotaryEmbedding(headSize: config.headSize, theta: config.ropeTheta, scaling: config.ropeScaling)
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("embed_tokens", tokenEmbedding)
        visit.modules("layers", layers)
        visit.module("norm", finalNorm)
        prefix?.visitParameters(&visit)
        visit.parameter("prompt_tuning_embeddings", prompt)
    }

    public var prefixLength: Int { prefix?.length ?? 0 }
    var virtualLength: Int { prefixLength + promptLength }

    /// The last hidden states `[B, T, C]` (with prompt tuning `[B, P + T, C]`) for `ids: [B, T]`.
    /// - Parameters:
    ///   - attentionMask: `[B, cached + T]`, 1 for tokens to attend to, 0 for padding (default: all 1).
    ///   - positionIDs: `[B, T]` (default: cached + 0..<T in every row, as transformers without position ids).
    ///   - cache: keys and values of earlier positions; the new ones are appended.
    /// - Throws: ``ModelError`` for ids outside the vocabulary and bad shapes.
    public func hiddenStates(
        _ ids: IntTensor, attentionMask: IntTensor? = nil, positionIDs: IntTensor? = nil, cache: KVCache? = nil
    ) throws -> Tensor {
        guard ids.shape.count == 2 else {
            throw ModelError.badInput("input ids must be [batch, length], got \(ids.shape)")
        }
        let (B, T) = (ids.shape[0], ids.shape[1])
        if let routed = try routedVirtualTokens(rows: B) {
            return try routedHiddenStates(ids, attentionMask: attentionMask, positionIDs: positionIDs, cache: cache, routed)
        }
        let P = prefixLength
        let cached = cache?.length ?? 0
        let past = cached > 0 ? cached - P - promptLength : 0
        let firstPass = cached == 0, Q = firstPass ? promptLength : 0
        try checkTokens(ids, vocabularySize: config.vocabularySize)
        if let attentionMask, attentionMask.shape != [B, past + T] {
            throw ModelError.badInput(
                "attention mask \(attentionMask.shape) does not match [batch, cached + new] = [\(B), \(past + T)]")
        }
        if let cache, cache.layers.count != layers.count {
            throw ModelError.badInput("the KV cache has \(cache.layers.count) layers, the model \(layers.count)")
        }
        var keyMask = attentionMask == nil ? nil : try maskWithPrompt(attentionMask, batch: B, length: past + T)
        keyMask = try prefix.map { try $0.extend(keyMask, batch: B, width: promptLength + past + T) } ?? keyMask
        // Positions: real tokens start after the prefix and the prompt (as PEFT on transformers).
        let shift = Int32(P + promptLength)
        var positions = try positionIDs ?? IntTensor(shape: [B, T], values: (0..<(B * T)).map { Int32(past + $0 % T) })
        if positions.shape != ids.shape {
            throw ModelError.badInput("position ids \(positions.shape) do not match input ids \(ids.shape)")
        }
        if shift > 0 { positions = try IntTensor(shape: positions.shape, values: positions.values.map { $0 + shift }) }
        var x = try tokenEmbedding(ids)
        if Q > 0, let prompt {
            let one = try prompt.value.reshaped([1, Q, config.hidden])
            x = try Tensor.concatenate([one.repeatedOverBatch(B), x], axis: 1)
            // The prompt vectors take positions P..<P+Q, before the tokens.
            var all: [Int32] = []
            for b in 0..<B {
                all += (0..<Q).map { Int32(P + $0) } + positions.values[(b * T)..<((b + 1) * T)]
            }
            positions = try IntTensor(shape: [B, Q + T], values: all)
        }
        let angles = try rotary.angles(positions)
        let prefixes = firstPass ? try prefix?.keysValues(batch: B) : nil
        for (i, layer) in layers.enumerated() {
            if gradientCheckpointing, Autograd.isEnabled, cache == nil, prefixes == nil {
                let trainable = layer.parameters.map(\.value).filter(\.requiresGradient)
                let replay = TrainingMode.replayable(), mask = keyMask
                x = try Tensor.checkpointed(x, parameters: trainable) { input in
                    try replay { try layer(input, angles: angles, keyMask: mask) }
                }
            } else {
                x = try layer(x, angles: angles, keyMask: keyMask, cache: cache?.layers[i], prefix: prefixes?[i])
            }
        }
        return try finalNorm(x)
    }
}

extension LlamaModel {
    public var modelType: String { config.modelType }
    public var feedForwardSize: Int { config.intermediate }
    public var virtualTokenShape: (layers: Int, hidden: Int, heads: Int) {
        (config.layers, config.hidden, config.heads)
    }
    public var prefixShape: (layers: Int, width: Int, heads: Int) {
        (config.layers, config.keyValueHeads * config.headSize, config.keyValueHeads)
    }
}

/// An output projection from hidden states to vocabulary logits: a layer of its own or the embedding table, tied.
public protocol OutputLayer: Module {
    func callAsFunction(_ h: Tensor) throws -> Tensor
}
extension Linear: OutputLayer {}
extension TiedOutput: OutputLayer {}

/// A Llama-family decoder with the language-model head (`lm_head`): its own `[V, C]` weight, or the token embedding's
/// table when `tie_word_embeddings` is set (SmolLM2, small Qwen2 models).
public final class LlamaForCausalLM: Module {
    public let model: LlamaModel
    public let lmHead: any OutputLayer

    public init(_ config: LlamaConfig, seed: UInt64 = 0) throws {
        model = try LlamaModel(config, seed: seed)
        lmHead =
            config.tieWordEmbeddings
            ? TiedOutput(table: model.tokenEmbedding)
            : try Linear(inputs: config.hidden, outputs: config.vocabularySize, bias: false, seed: seed + 3)
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("model", model)
        visit.module("lm_head", lmHead)
    }

    /// Next-token logits `[B, T, V]` (with prompt tuning `[B, P + T, V]`).
    public func logits(
        _ ids: IntTensor, attentionMask: IntTensor? = nil, positionIDs: IntTensor? = nil, cache: KVCache? = nil
    ) throws -> Tensor {
        try lmHead(model.hiddenStates(ids, attentionMask: attentionMask, positionIDs: positionIDs, cache: cache))
    }
}

/// A Llama-family decoder with a sequence-classification head (`score`, no bias), read at each row's last token that
/// is not `pad_token_id`, as transformers does.
public final class LlamaForSequenceClassification: Module {
    public let model: LlamaModel
    public var score: Linear { heads.current }
    public let heads: Variants<Linear>

    public init(_ config: LlamaConfig, seed: UInt64 = 0) throws {
        model = try LlamaModel(config, seed: seed)
        heads = Variants(try Linear(inputs: config.hidden, outputs: config.labelCount, bias: false, seed: seed + 7))
    }

    public func newHead(labels: Int, seed: UInt64) throws -> Linear {
        try Linear(inputs: model.config.hidden, outputs: labels, bias: false, seed: seed)
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("model", model)
        visit.module("score", score)
    }

    /// Class logits `[B, labels]`, read at each row's last token that is not `pad_token_id` (with prompt tuning the
    /// prompt vectors come first).
    public func logits(_ ids: IntTensor, attentionMask: IntTensor? = nil) throws -> Tensor {
        let last = try lastRealTokens(ids, padTokenID: model.config.padTokenID)
        let h = try model.hiddenStates(ids, attentionMask: attentionMask)
        let picked = try h.positions(last.map { $0 + model.leadingPromptRows })
        let logits = try heads.apply(picked)
        return try logits.reshaped([last.count, logits.shape.last!])
    }
}

extension LlamaModel {
    /// ``hiddenStates(_:attentionMask:positionIDs:cache:)`` for a batch routed to adapters of which some bring a prefix
    /// or prompt vectors: each row's own, left-padded to the longest and masked (`[B, Q + T, C]`, `Q` the longest
    /// prompt). No shared cache: generation gives each row its own (``ContinuousBatch``).
    func routedHiddenStates(
        _ ids: IntTensor, attentionMask: IntTensor?, positionIDs: IntTensor?, cache: KVCache?,
        _ virtual: RoutedVirtualTokens
    ) throws -> Tensor {
        try checkTokens(ids, vocabularySize: config.vocabularySize)
        var (x, positions, keyMask) = try virtual.start(
            ids, attentionMask: attentionMask, positionIDs: positionIDs, cache: cache, width: config.hidden,
            embed: tokenEmbedding.callAsFunction)
        let angles = try rotary.angles(positions)
        let prefixes = try virtual.keysValues(layers: layers.count, heads: config.keyValueHeads, headSize: config.headSize)
        for (i, layer) in layers.enumerated() {
            x = try layer(x, angles: angles, keyMask: keyMask, prefix: prefixes?[i])
        }
        return try finalNorm(x)
    }
}
