import Foundation
import ReinsTensor

/// The sizes of a GPT-2 model, read from its `config.json`.
public struct GPT2Config: Sendable {
    public var vocabularySize: Int
    public var positions: Int
    public var hidden: Int
    public var layers: Int
    public var heads: Int
    public var inner: Int
    public var activation: Activation
    public var layerNormEpsilon: Float
    /// Scores divided by √hs (`scale_attn_weights`), and further by the layer number (`scale_attn_by_inverse_layer_idx`).
    /// Note: transformers 4.57 honours the second flag only with `attn_implementation="eager"`; its default sdpa
    /// path ignores it. Reins always follows the flag.
    public var scaleAttentionWeights: Bool
    public var scaleAttentionByLayer: Bool
    public var labelCount: Int
    public var padTokenID: Int?
    /// Dropout in training mode (``TrainingMode``): after the embeddings (`embd_pdrop`), on each residual branch
    /// (`resid_pdrop`) and on the attention probabilities (`attn_pdrop`).
    public var embeddingDropout: Float
    public var residualDropout: Float
    public var attentionDropout: Float

    /// A config from its fields, with GPT-2 small's values as defaults (`inner` defaults to 4 × `hidden`).
    /// - Throws: ``ModelError/badConfig(path:detail:)`` for sizes that do not make a model (see ``validate(path:)``).
    public init(
        vocabularySize: Int = 50257, positions: Int = 1024, hidden: Int = 768, layers: Int = 12, heads: Int = 12,
        inner: Int? = nil, activation: Activation = .gelu(.tanh), layerNormEpsilon: Float = 1e-5,
        scaleAttentionWeights: Bool = true, scaleAttentionByLayer: Bool = false, labelCount: Int = 2,
        padTokenID: Int? = nil,
        embeddingDropout: Float = 0.1, residualDropout: Float = 0.1, attentionDropout: Float = 0.1
    ) throws {
        let fourTimes = hidden.multipliedReportingOverflow(by: 4)
        (self.vocabularySize, self.positions, self.hidden, self.layers, self.heads) = (
            vocabularySize, positions, hidden, layers, heads
        )
        self.inner = inner ?? (fourTimes.overflow ? -1 : fourTimes.partialValue)
        (self.activation, self.layerNormEpsilon) = (activation, layerNormEpsilon)
        (self.scaleAttentionWeights, self.scaleAttentionByLayer) = (scaleAttentionWeights, scaleAttentionByLayer)
        (self.labelCount, self.padTokenID) = (labelCount, padTokenID)
        (self.embeddingDropout, self.residualDropout, self.attentionDropout) = (
            embeddingDropout, residualDropout, attentionDropout
        )
        try validate()
    }

    /// The config as Hugging Face's `config.json` holds it (`model_type` `gpt2`), for ``Module/save(to:config:)``.
    public var json: [String: Any] {
        var j: [String: Any] = [
            "model_type": "gpt2", "vocab_size": vocabularySize, "n_positions": positions, "n_embd": hidden,
            "n_layer": layers,
            "n_head": heads, "n_inner": inner, "activation_function": activation.name,
            "layer_norm_epsilon": layerNormEpsilon,
            "scale_attn_weights": scaleAttentionWeights, "scale_attn_by_inverse_layer_idx": scaleAttentionByLayer,
            "num_labels": labelCount, "embd_pdrop": embeddingDropout, "resid_pdrop": residualDropout,
            "attn_pdrop": attentionDropout,
        ]
        if let padTokenID { j["pad_token_id"] = padTokenID }
        return j
    }

    public init(json: [String: Any], path: String = "config.json") throws {
        let c = ConfigReader(json: json, path: path)
        vocabularySize = try c.int("vocab_size", default: 50257)
        positions = try c.int("n_positions", default: 1024)
        hidden = try c.int("n_embd", default: 768)
        layers = try c.int("n_layer", default: 12)
        heads = try c.int("n_head", default: 12)
        // The default is computed only when n_inner is absent, in checked arithmetic (n_embd comes from the file).
        let fourTimes = hidden.multipliedReportingOverflow(by: 4)
        inner = try c.optionalInt("n_inner") ?? (fourTimes.overflow ? -1 : fourTimes.partialValue)
        activation = try Activation(try c.string("activation_function", default: "gelu_new"), path: path)
        layerNormEpsilon = try c.float("layer_norm_epsilon", default: 1e-5)
        scaleAttentionWeights = c.json["scale_attn_weights"] as? Bool ?? true
        scaleAttentionByLayer = c.json["scale_attn_by_inverse_layer_idx"] as? Bool ?? false
        labelCount = try c.labelCount()
        padTokenID = try c.optionalInt("pad_token_id")
        embeddingDropout = try c.float("embd_pdrop", default: 0.1)
        residualDropout = try c.float("resid_pdrop", default: 0.1)
        attentionDropout = try c.float("attn_pdrop", default: 0.1)
        try validate(path: path)
    }

    /// Checks a config whether read from a file or set by hand; every model built from one calls it first.
    /// - Throws: ``ModelError/badConfig(path:detail:)`` naming the field: a size that is not positive, heads that do
    ///   not divide `n_embd`, a pad token outside the vocabulary, a dropout outside [0, 1), or sizes whose weights
    ///   would not fit in memory (counted before anything is allocated).
    public func validate(path: String = "GPT2Config") throws {
        let check = ConfigCheck(path: path)
        try check.positive([
            "vocab_size": vocabularySize, "n_positions": positions, "n_embd": hidden, "n_head": heads,
            "n_inner": inner, "num_labels": labelCount,
        ])
        try check.require(layers >= 0, "n_layer is \(layers); it must not be negative")
        try check.require(hidden % heads == 0, "n_embd \(hidden) is not divisible by n_head \(heads)")
        try check.require(
            vocabularySize <= Int(Int32.max), "vocab_size \(vocabularySize) does not fit 32-bit token ids")
        try check.require(
            layerNormEpsilon.isFinite && layerNormEpsilon >= 0, "layer_norm_epsilon is \(layerNormEpsilon)")
        try check.probabilities([
            "embd_pdrop": embeddingDropout, "resid_pdrop": residualDropout, "attn_pdrop": attentionDropout,
        ])
        if let padTokenID {
            try check.require(
                (0..<vocabularySize).contains(padTokenID),
                "pad_token_id \(padTokenID) is outside the vocabulary of \(vocabularySize)")
        }
        try check.fitsInMemory(parameterTerms)
    }

    /// The parameters of the model and a classification head, as products of sizes: embeddings, per block (two
    /// norms, qkv, output, FFN in and out), the final norm, the head. Multiplied in checked arithmetic by the caller.
    var parameterTerms: [[Int]] {
        let (C, I, L) = (hidden, inner, max(layers, 0))
        return [
            [vocabularySize, C], [positions, C], [L, 4, C], [L, 3, C, C], [L, 3, C], [L, C, C], [L, C],
            [L, C, I], [L, I], [L, I, C], [L, C], [2, C], [labelCount, C],
        ]
    }

    /// About how many parameters the model has (with a classification head), counted without building it; `Int.max`
    /// when the sizes overflow.
    public var parameterCount: Int { ConfigCheck.count(parameterTerms) ?? .max }
}

/// One GPT-2 block (pre-LN): `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
public final class GPT2Block: Module {
    public let ln1: LayerNorm, ln2: LayerNorm
    /// Query, key and value in one `Conv1D` (`[C, 3C]`), then the output projection.
    public let attentionIn: Linear, attentionOut: Linear
    public let feedForwardIn: Linear, feedForwardOut: Linear
    /// The block's adapter insertion points.
    public let adapters = BlockAdapters()
    let heads: Int
    let activation: Activation
    let attentionScale: Float
    let dropout: Float, attentionDropout: Float

    /// A block of `config`'s sizes; `layer` (0-based) matters only with `scale_attn_by_inverse_layer_idx`.
    /// - Throws: ``ModelError/badConfig(path:detail:)`` for a config that does not make a model.
    public init(_ config: GPT2Config, layer: Int = 0, seed: UInt64 = 0) throws {
        try config.validate()
        let C = config.hidden
        ln1 = try LayerNorm(C, eps: config.layerNormEpsilon)
        ln2 = try LayerNorm(C, eps: config.layerNormEpsilon)
        attentionIn = try Linear(inputs: C, outputs: 3 * C, weightTransposed: true, seed: seed)
        attentionOut = try Linear(inputs: C, outputs: C, weightTransposed: true, seed: seed + 1)
        feedForwardIn = try Linear(inputs: C, outputs: config.inner, weightTransposed: true, seed: seed + 2)
        feedForwardOut = try Linear(inputs: config.inner, outputs: C, weightTransposed: true, seed: seed + 3)
        heads = config.heads
        activation = config.activation
        (dropout, attentionDropout) = (config.residualDropout, config.attentionDropout)
        let hs = Float(config.hidden / config.heads)
        attentionScale =
            (config.scaleAttentionWeights ? 1 / hs.squareRoot() : 1)
            / (config.scaleAttentionByLayer ? Float(layer + 1) : 1)
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("ln_1", ln1)
        visit.module("attn.c_attn", attentionIn)
        visit.module("attn.c_proj", attentionOut)
        visit.module("ln_2", ln2)
        visit.module("mlp.c_fc", feedForwardIn)
        visit.module("mlp.c_proj", feedForwardOut)
        visit.module("adapters", adapters)
    }

    /// `x: [B, T, C]`; `keyMask: [B, Tk]` (1 = real token) over the prefix, cached and new positions.
    /// `prefix` (keys, values `[B, NH, P, hs]`) is prepended when nothing is cached yet (afterwards it is in the
    /// cache). With a cache, the new keys and values are appended to it and the queries attend to all of them.
    ///
    /// With `rows` (one position per sequence, no cache), only those positions are computed: each attends to every key
    /// up to and including itself (the prefix too), and the output is `[B, 1, C]`, equal to those rows of the full
    /// block's output.
    public func callAsFunction(
        _ input: Tensor, keyMask: IntTensor? = nil, cache: KVCache.Layer? = nil,
        prefix: (keys: Tensor, values: Tensor)? = nil, rows: [Int]? = nil, rowCaches: [KVCache.Layer]? = nil
    ) throws -> Tensor {
        guard input.rank == 3, input.shape[2] == attentionOut.outputs else {
            throw ModelError.badInput(
                "a GPT-2 block takes [batch, length, \(attentionOut.outputs)], got \(input.shape)")
        }
        let C = input.shape[2]
        let qkv = try attentionIn(ln1(input))
        // The block is per position after the keys and values: pick the rows asked for.
        let x = try rows.map { try input.positions($0) } ?? input
        if let rowCaches {
            // One new position per row, each against its own cache (rows of a continuous batch).
            let a = try Tensor.attendingRowCaches(
                query: (rows.map { try qkv.positions($0) } ?? qkv).slice(axis: 2, 0..<C),
                key: qkv.slice(axis: 2, C..<(2 * C)), value: qkv.slice(axis: 2, (2 * C)..<(3 * C)), heads: heads,
                keyValueHeads: heads, angles: nil, caches: rowCaches, scale: attentionScale)
            return try feedForward(x, attended: a)
        }
        var k = try qkv.slice(axis: 2, C..<(2 * C)).splittingHeads(heads)
        var v = try qkv.slice(axis: 2, (2 * C)..<(3 * C)).splittingHeads(heads)
        let q = try (rows.map { try qkv.positions($0) } ?? qkv).slice(axis: 2, 0..<C).splittingHeads(heads)
        if let prefix, cache?.keys == nil {
            k = try Tensor.concatenate([prefix.keys, k], axis: 2)
            v = try Tensor.concatenate([prefix.values, v], axis: 2)
        }
        if let cache {
            if let pk = cache.keys, let pv = cache.values {
                k = try Tensor.concatenate([pk, k], axis: 2)
                v = try Tensor.concatenate([pv, v], axis: 2)
            }
            cache.set(k, v)
        }
        let drop = attentionProbabilityDropout(
            attentionDropout, probabilities: q.shape[0] * heads * q.shape[2] * k.shape[2])
        let a: Tensor
        if let rows {
            // One query per sequence at its own position: the causal limit becomes a per-sequence key mask.
            let (B, Tk) = (input.shape[0], k.shape[2]), P = Tk - input.shape[1]
            var visible = [Int32](repeating: 0, count: B * Tk)
            for b in 0..<B {
                for j in 0...(P + rows[b]) where keyMask?.values[b * Tk + j] ?? 1 != 0 { visible[b * Tk + j] = 1 }
            }
            a = try Tensor.attention(
                query: q, key: k, value: v, keyMask: IntTensor(shape: [B, Tk], values: visible), scale: attentionScale,
                dropout: drop
            ).mergingHeads()
        } else {
            a = try Tensor.attention(
                query: q, key: k, value: v, causal: true, keyMask: keyMask, scale: attentionScale, dropout: drop
            ).mergingHeads()
        }
        return try feedForward(x, attended: a)
    }

    /// The block after attention: output projection, residual, norm, feed-forward and the adapters around them.
    func feedForward(_ x: Tensor, attended a: Tensor) throws -> Tensor {
        let h = try x + adapters.attention(attentionOut(a).trainingDropout(dropout), residual: x)
        let normed = try ln2(h)
        let z = try activation.apply(normed, feedForwardIn)
        let f = try feedForwardOut(z).trainingDropout(dropout)
        return try h + adapters.feedForward(adapters.parallel(f, input: normed, intermediate: z), residual: h)
    }
}

/// The GPT-2 transformer (arXiv: Radford et al. 2019): token and learned position embeddings, pre-LN blocks with
/// causal attention, a final layer norm. Keys follow Hugging Face's `GPT2Model`.
public final class GPT2Model: Module, VirtualTokenHost {
    public let config: GPT2Config
    public let tokenEmbedding: Embedding, positionEmbedding: Embedding
    public let blocks: [GPT2Block]
    public let finalNorm: LayerNorm
    /// Named learned key/value prefixes (prefix tuning), one active (see ``VirtualTokenHost``).
    public let prefixes = PrefixSet()
    /// Prompt tuning (Lester et al., arXiv 2104.08691), the input-embedding insertion point: `P` learned vectors
    /// `[P, C]` placed before the token embeddings. As PEFT does, they take positions 0..<P and the outputs include
    /// them (`[B, P + T, ...]`).
    public let prompts = PromptSet()

    /// Positions taken by virtual tokens (prefix and prompt) before the real ones.
    var virtualLength: Int { prefixLength + promptLength }

    public init(_ config: GPT2Config, seed: UInt64 = 0) throws {
        try config.validate()
        self.config = config
        tokenEmbedding = try Embedding(count: config.vocabularySize, size: config.hidden, seed: seed)
        positionEmbedding = try Embedding(count: config.positions, size: config.hidden, std: 0.01, seed: seed + 1)
        blocks = try (0..<config.layers).map { try GPT2Block(config, layer: $0, seed: seed + 10 + UInt64($0) * 10) }
        finalNorm = try LayerNorm(config.hidden, eps: config.layerNormEpsilon)
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("wte", tokenEmbedding)
        visit.module("wpe", positionEmbedding)
        visit.modules("h", blocks)
        visit.module("ln_f", finalNorm)
        prefix?.visitParameters(&visit)
        visit.parameter("prompt_tuning_embeddings", prompt)
    }

    /// The prefix length `P` (0 without prefix tuning).
    public var prefixLength: Int { prefix?.length ?? 0 }

    /// The last hidden states `[B, T, C]` for `ids: [B, T]`.
    /// - Parameters:
    ///   - attentionMask: `[B, T]`, 1 for tokens to attend to, 0 for padding (default: all 1).
    ///   - positionIDs: `[B, T]` (default: 0..<T in every row).
    ///   - tokenTypeIDs: `[B, T]`; as in transformers, GPT-2 embeds them with the token embedding and adds them.
    /// - Throws: ``ModelError`` for ids outside the vocabulary, sequences longer than the positions, bad shapes.
    ///   - cache: keys and values of earlier positions; the new ones are appended. The attention mask then covers the
    ///     cached positions and the new ones, `[B, cached + T]`.
    public func hiddenStates(
        _ ids: IntTensor, attentionMask: IntTensor? = nil, positionIDs: IntTensor? = nil,
        tokenTypeIDs: IntTensor? = nil, cache: KVCache? = nil
    ) throws -> Tensor {
        try encode(
            ids, attentionMask: attentionMask, positionIDs: positionIDs, tokenTypeIDs: tokenTypeIDs, cache: cache,
            rows: nil)
    }

    /// The final hidden state at one position per sequence, `[B, 1, C]` (`positions[b]` counts the tokens of row `b`
    /// from 0; with prompt tuning the prompt vectors come first and are not counted). Equal to those rows of
    /// ``hiddenStates(_:attentionMask:positionIDs:tokenTypeIDs:cache:)``, for less work: the last block builds keys
    /// and values for every position but runs its queries, projection and MLP on the chosen rows only.
    public func hiddenStates(
        _ ids: IntTensor, at positions: [Int], attentionMask: IntTensor? = nil, tokenTypeIDs: IntTensor? = nil
    ) throws -> Tensor {
        let (B, T) = (ids.shape.first ?? 0, ids.shape.count == 2 ? ids.shape[1] : 0)
        guard positions.count == B, positions.allSatisfy({ (0..<T).contains($0) }) else {
            throw ModelError.badInput("positions \(positions) for \(B) sequences of \(T) tokens")
        }
        return try encode(
            ids, attentionMask: attentionMask, positionIDs: nil, tokenTypeIDs: tokenTypeIDs, cache: nil,
            rows: positions.map { $0 + leadingPromptRows })
    }

    private func encode(
        _ ids: IntTensor, attentionMask: IntTensor?, positionIDs: IntTensor?, tokenTypeIDs: IntTensor?,
        cache: KVCache?, rows: [Int]?
    ) throws -> Tensor {
        guard ids.shape.count == 2 else {
            throw ModelError.badInput("input ids must be [batch, length], got \(ids.shape)")
        }
        let (B, T) = (ids.shape[0], ids.shape[1])
        if let routed = try routedVirtualTokens(rows: B) {
            return try routedEncode(
                ids, attentionMask: attentionMask, positionIDs: positionIDs, tokenTypeIDs: tokenTypeIDs, cache: cache,
                rows: rows, routed)
        }
        let P = prefixLength
        // Cached token positions (prefix and prompt enter the cache with the first pass).
        let cached = cache?.length ?? 0
        let past = cached > 0 ? cached - P - promptLength : 0
        let firstPass = cached == 0, Q = firstPass ? promptLength : 0  // prompt vectors in this pass
        guard P + promptLength + past + T <= config.positions else {
            throw ModelError.sequenceTooLong(length: P + promptLength + past + T, maximum: config.positions)
        }
        try checkTokens(ids, vocabularySize: config.vocabularySize)
        if let attentionMask, attentionMask.shape != [B, past + T] {
            throw ModelError.badInput(
                "attention mask \(attentionMask.shape) does not match [batch, cached + new] = [\(B), \(past + T)]")
        }
        // Virtual tokens are always attended to: ones for the prompt (this pass or cached) and the prefix.
        var keyMask = attentionMask == nil ? nil : try maskWithPrompt(attentionMask, batch: B, length: past + T)
        keyMask = try prefix.map { try $0.extend(keyMask, batch: B, width: promptLength + past + T) } ?? keyMask
        if let cache, cache.layers.count != blocks.count {
            throw ModelError.badInput("the KV cache has \(cache.layers.count) layers, the model \(blocks.count)")
        }
        var positions = try positionIDs ?? IntTensor(shape: [B, T], values: (0..<(B * T)).map { Int32(past + $0 % T) })
        if positions.shape != ids.shape {
            throw ModelError.badInput("position ids \(positions.shape) do not match input ids \(ids.shape)")
        }
        if P + promptLength > 0 {
            positions = try IntTensor(
                shape: positions.shape, values: positions.values.map { $0 + Int32(P + promptLength) })
        }
        if let bad = positions.values.firstIndex(where: { $0 < 0 || Int($0) >= config.positions }) {
            throw ModelError.sequenceTooLong(length: Int(positions.values[bad]) + 1, maximum: config.positions)
        }
        var x = try tokenEmbedding(ids) + positionEmbedding(positions)
        if Q > 0, let prompt {
            // The prompt vectors at positions P..<P+Q (0..<Q without a prefix), before the tokens.
            let promptPositions = try IntTensor(shape: [Q], values: (0..<Q).map { Int32(P + $0) })
            let one = try (prompt.value + positionEmbedding(promptPositions)).reshaped([1, Q, config.hidden])
            let tiled = try one.repeatedOverBatch(B)
            x = try Tensor.concatenate([tiled, x], axis: 1)
        }
        if let tokenTypeIDs {
            guard tokenTypeIDs.shape == ids.shape else {
                throw ModelError.badInput("token type ids \(tokenTypeIDs.shape) do not match input ids \(ids.shape)")
            }
            guard promptLength == 0 else {
                throw ModelError.badInput("token type ids are not supported together with prompt tuning")
            }
            try checkTokens(tokenTypeIDs, vocabularySize: config.vocabularySize)
            x = try x + tokenEmbedding(tokenTypeIDs)
        }
        x = try x.trainingDropout(config.embeddingDropout)
        // The prefix enters the cache with the first pass; afterwards it is read from there.
        let prefixes = firstPass ? try prefix?.keysValues(batch: B) : nil
        for (i, block) in blocks.enumerated() {
            x = try block(
                x, keyMask: keyMask, cache: cache?.layers[i], prefix: prefixes?[i],
                rows: i == blocks.count - 1 ? rows : nil)
        }
        if let rows, blocks.isEmpty { x = try x.positions(rows) }
        return try finalNorm(x)
    }
}

/// The keys and values of every layer for the positions seen so far, so that generation feeds only new tokens.
public final class KVCache {
    public final class Layer {
        /// `[B, NH, rows, hs]`: the first ``length`` rows of each head are cached keys (values). GPT-2 keeps exactly
        /// `length` rows; the Llama family, decoding without gradients, keeps room to grow and appends in place.
        public internal(set) var keys: Tensor?
        public internal(set) var values: Tensor?
        /// The number of cached positions.
        public internal(set) var length = 0
        /// Rows to reserve when the storage is first made (a hint: generation knows its total length).
        var reserve = 0

        /// Replaces the cache by exactly `keys` and `values` (`[B, NH, T, hs]`).
        func set(_ k: Tensor, _ v: Tensor) {
            (keys, values, length) = (k, v, k.shape[2])
        }

        /// Appends `k` and `v` (`[B, NH, T, hs]`) in place, growing the storage (to the reserve, else by doubling)
        /// when it is full: no copy of the whole cache per token, and no buffer left behind per length.
        /// `count` appends only the first `count` positions of `k` and `v` (at most their `T`).
        func append(_ k: Tensor, _ v: Tensor, count: Int? = nil) throws {
            let (B, NH, T, hs) = (k.shape[0], k.shape[1], k.shape[2], k.shape[3])
            let n = min(count ?? T, T)
            try makeRoom(batch: B, heads: NH, headSize: hs, adding: n)
            let capacity = keys!.shape[2]
            Self.copyRows(from: k, rows: T, into: &keys!, capacity: capacity, count: n, at: length)
            Self.copyRows(from: v, rows: T, into: &values!, capacity: capacity, count: n, at: length)
            length += n
        }

        /// Copies of the cached positions `range` (within ``length``), keys and values `[B, NH, range.count, hs]`.
        func positions(_ range: Range<Int>) throws -> (keys: Tensor, values: Tensor) {
            guard let keys, let values, range.lowerBound >= 0, range.upperBound <= length else {
                throw ModelError.badInput("positions \(range) of a cache of \(length)")
            }
            let (B, NH, rows, hs) = (keys.shape[0], keys.shape[1], keys.shape[2], keys.shape[3])
            // Every element is written below: no zero fill first.
            var k = try Tensor.uninitialized([B, NH, range.count, hs])
            var v = try Tensor.uninitialized([B, NH, range.count, hs])
            Self.copyRows(from: keys, rows: rows, into: &k, capacity: range.count, count: range.count, at: 0,
                          first: range.lowerBound)
            Self.copyRows(from: values, rows: rows, into: &v, capacity: range.count, count: range.count, at: 0,
                          first: range.lowerBound)
            return (k, v)
        }

        /// Makes room for one more position in a cache of one batch row (a continuous batch's row cache) of `heads`
        /// heads of `headSize`, growing the storage as ``append(_:_:)`` does, and returns its index. The caller writes
        /// that position's keys and values (at `index` of each head's rows in ``keys`` and ``values``) before anything
        /// reads them.
        func claimPosition(heads NH: Int, headSize hs: Int) throws -> Int {
            try makeRoom(batch: 1, heads: NH, headSize: hs, adding: 1)
            // The caller writes in place: storage that someone else still holds is copied first, as on any write.
            keys?.withUnsafeMutableBufferPointer { _ in }
            values?.withUnsafeMutableBufferPointer { _ in }
            length += 1
            return length - 1
        }

        /// Storage of `[batch, heads, capacity, headSize]` with room for `adding` more positions: the cached ones
        /// copied into a larger store (the reserve, else twice the rows) when they do not fit, or when the shape
        /// changed.
        private func makeRoom(batch B: Int, heads NH: Int, headSize hs: Int, adding T: Int) throws {
            let rows = keys?.shape[2] ?? 0
            let sameShape = keys.map { $0.shape[0] == B && $0.shape[1] == NH && $0.shape[3] == hs } ?? false
            if let keys, !sameShape, length > 0 {
                throw ModelError.badInput(
                    "a cache of \(length) positions shaped \(keys.shape) cannot take keys of [\(B), \(NH), _, \(hs)]")
            }
            if sameShape, length + T <= rows { return }
            let capacity = max(length + T, reserve, 2 * rows)
            var newKeys = try Tensor.zeros([B, NH, capacity, hs]), newValues = try Tensor.zeros([B, NH, capacity, hs])
            if let keys, let values, length > 0 {
                Self.copyRows(from: keys, rows: rows, into: &newKeys, capacity: capacity, count: length, at: 0)
                Self.copyRows(from: values, rows: rows, into: &newValues, capacity: capacity, count: length, at: 0)
            }
            (keys, values) = (newKeys, newValues)
        }

        /// Copies `count` rows of each head of `source` (`rows` per head), from its row `first`, to rows `at...` of
        /// `target`: each head's rows are contiguous on both sides, so one copy per head.
        private static func copyRows(
            from source: Tensor, rows: Int, into target: inout Tensor, capacity: Int, count: Int, at: Int,
            first: Int = 0
        ) {
            let hs = source.shape[3], heads = source.shape[0] * source.shape[1]
            source.withUnsafeBufferPointer { src in
                target.withUnsafeMutableBufferPointer { dst in
                    for h in 0..<heads {
                        (dst.baseAddress! + (h * capacity + at) * hs).update(
                            from: src.baseAddress! + (h * rows + first) * hs, count: count * hs)
                    }
                }
            }
        }
    }
    public let layers: [Layer]

    /// - Parameter reserve: rows to make room for at once (prompt plus new tokens), so the storage never regrows.
    public init(layers: Int, reserve: Int = 0) {
        self.layers = (0..<layers).map { _ in Layer() }
        for l in self.layers { l.reserve = reserve }
    }

    /// The number of cached positions.
    public var length: Int { layers.first?.length ?? 0 }
}

/// GPT-2 with the language-model head, tied to the token embedding (`lm_head.weight` is `transformer.wte.weight`).
public final class GPT2LMHeadModel: Module {
    public let transformer: GPT2Model
    /// The output layer: the token embedding's table as its weight (and a LoRA insertion point, PEFT's `lm_head`).
    public let lmHead: TiedOutput

    public init(_ config: GPT2Config, seed: UInt64 = 0) throws {
        transformer = try GPT2Model(config, seed: seed)
        lmHead = TiedOutput(table: transformer.tokenEmbedding)
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("transformer", transformer)
        visit.module("lm_head", lmHead)
    }

    /// Next-token logits `[B, T, V]`.
    public func logits(
        _ ids: IntTensor, attentionMask: IntTensor? = nil, positionIDs: IntTensor? = nil,
        tokenTypeIDs: IntTensor? = nil,
        cache: KVCache? = nil
    ) throws -> Tensor {
        let h = try transformer.hiddenStates(
            ids, attentionMask: attentionMask, positionIDs: positionIDs, tokenTypeIDs: tokenTypeIDs, cache: cache)
        return try lmHead(h)
    }
}

/// GPT-2 with a sequence-classification head: the score of the last non-padding token.
public final class GPT2ForSequenceClassification: Module {
    public let transformer: GPT2Model
    /// The score head in use: the model's own, or the active adapter's.
    public var score: Linear { heads.current }
    public let heads: Variants<Linear>

    public init(_ config: GPT2Config, seed: UInt64 = 0) throws {
        transformer = try GPT2Model(config, seed: seed)
        heads = Variants(try Linear(inputs: config.hidden, outputs: config.labelCount, bias: false, seed: seed + 7))
    }

    public func newHead(labels: Int, seed: UInt64) throws -> Linear {
        try Linear(inputs: transformer.config.hidden, outputs: labels, bias: false, seed: seed)
    }

    public func visitParameters(_ visit: inout ParameterVisitor) {
        visit.module("transformer", transformer)
        visit.module("score", score)
    }

    /// Class logits `[B, labels]`, taken at each row's last token that is not `pad_token_id` (with prompt tuning, the
    /// hidden states start with the prompt vectors, so that token sits `promptLength` positions further on).
    public func logits(_ ids: IntTensor, attentionMask: IntTensor? = nil, tokenTypeIDs: IntTensor? = nil) throws
        -> Tensor
    {
        // Only the rows read go through the last block (``GPT2Model/hiddenStates(_:at:attentionMask:tokenTypeIDs:)``).
        let last = try lastRealTokens(ids, padTokenID: transformer.config.padTokenID)
        let h = try transformer.hiddenStates(ids, at: last, attentionMask: attentionMask, tokenTypeIDs: tokenTypeIDs)
        let logits = try heads.apply(h)
        return try logits.reshaped([last.count, logits.shape.last!])
    }
}

/// Where a decoder's sequence classifier reads each row, as transformers does: the last position whose token is not
/// the pad token (0 if every token is padding; the last position when the config has no pad token, which only a
/// batch of one may lack).
/// - Throws: ``ModelError/badInput(_:)`` for ids that are not `[batch, length]`, or a batch of several rows without a
///   pad token.
func lastRealTokens(_ ids: IntTensor, padTokenID pad: Int?) throws -> [Int] {
    guard ids.shape.count == 2 else {
        throw ModelError.badInput("input ids must be [batch, length], got \(ids.shape)")
    }
    let (B, T) = (ids.shape[0], ids.shape[1])
    guard pad != nil || B == 1 else {
        throw ModelError.badInput("batches of more than one sequence need pad_token_id in the config")
    }
    return (0..<B).map { b in
        pad.map { p in ids.values[(b * T)..<((b + 1) * T)].lastIndex { $0 != Int32(p) }.map { $0 - b * T } ?? 0 }
            ?? (T - 1)
    }
}

func checkTokens(_ ids: IntTensor, vocabularySize: Int) throws {
    if let bad = ids.values.firstIndex(where: { $0 < 0 || Int($0) >= vocabularySize }) {
        throw ModelError.tokenOutOfRange(position: bad, id: Int(ids.values[bad]), vocabularySize: vocabularySize)
    }
}

extension Tensor {
    /// `[B, T, C]` to `[B, 1, C]`: row `b`'s position `positions[b]` (differentiable).
    func positions(_ positions: [Int]) throws -> Tensor {
        try Tensor.concatenate(
            positions.enumerated().map { b, t in try slice(axis: 0, b..<(b + 1)).slice(axis: 1, t..<(t + 1)) }, axis: 0)
    }
}

extension GPT2Model {
    /// The encoder for a batch routed to adapters of which some bring a prefix or prompt vectors: each row's own,
    /// left-padded to the longest and masked (as ``LlamaModel``'s routed path).
    fileprivate func routedEncode(
        _ ids: IntTensor, attentionMask: IntTensor?, positionIDs: IntTensor?, tokenTypeIDs: IntTensor?,
        cache: KVCache?, rows: [Int]?, _ virtual: RoutedVirtualTokens
    ) throws -> Tensor {
        guard tokenTypeIDs == nil else {
            throw ModelError.badInput("a batch routed to adapters with virtual tokens takes no token type ids")
        }
        try checkTokens(ids, vocabularySize: config.vocabularySize)
        var (x, positions, keyMask) = try virtual.start(
            ids, attentionMask: attentionMask, positionIDs: positionIDs, cache: cache, width: config.hidden,
            embed: tokenEmbedding.callAsFunction)
        if let bad = positions.values.first(where: { $0 < 0 || Int($0) >= config.positions }) {
            throw ModelError.sequenceTooLong(length: Int(bad) + 1, maximum: config.positions)
        }
        x = try (x + positionEmbedding(positions)).trainingDropout(config.embeddingDropout)
        let prefixes = try virtual.keysValues(layers: blocks.count, heads: config.heads, headSize: config.hidden / config.heads)
        for (i, block) in blocks.enumerated() {
            x = try block(x, keyMask: keyMask, prefix: prefixes?[i], rows: i == blocks.count - 1 ? rows : nil)
        }
        if let rows, blocks.isEmpty { x = try x.positions(rows) }
        return try finalNorm(x)
    }
}
