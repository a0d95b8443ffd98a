import Foundation
import ReinsTensor

/// How rotary frequencies are stretched for contexts longer than pretraining (`rope_scaling` in `config.json`).
public enum RopeScaling: Sendable, Equatable {
    /// Every inverse frequency divided by `factor` (position interpolation).
    case linear(factor: Float)
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, the band between interpolated smoothly.
    case llama3(factor: Float, lowFrequencyFactor: Float, highFrequencyFactor: Float, originalPositions: Int)
}

/// The sizes of a Llama-family decoder (Llama, Qwen2, Mistral, SmolLM2), read from its `config.json`.
public struct LlamaConfig: Sendable {
    /// Hugging Face's `model_type`: `llama`, `qwen2` or `mistral` (the PEFT default targets and the saved config).
    public var modelType: String
    public var vocabularySize: Int
    public var hidden: Int
    /// The feed-forward width (`intermediate_size`).
    public var intermediate: Int
    public var layers: Int
    public var heads: Int
    /// Key/value heads (`num_key_value_heads`): fewer than `heads` is grouped-query attention.
    public var keyValueHeads: Int
    /// The head size (`head_dim`, default `hidden / heads`).
    public var headSize: Int
    /// `max_position_embeddings`: informative (rotary embeddings have no table), reported by `reins info`.
    public var positions: Int
    public var rmsNormEpsilon: Float
    public var ropeTheta: Float
    public var ropeScaling: RopeScaling?
    /// The output layer reads the token embedding table (`tie_word_embeddings`).
    public var tieWordEmbeddings: Bool
    /// Biases on the query, key and value projections (Qwen2; Llama's `attention_bias`).
    public var qkvBias: Bool
    /// A bias on the attention output projection (Llama's `attention_bias`; not Qwen2).
    public var outputBias: Bool
    /// Biases on the feed-forward projections (`mlp_bias`).
    public var mlpBias: Bool
    /// Mistral's sliding window: query i sees keys j with i - window < j <= i (`nil`: full causal attention).
    public var slidingWindow: Int?
    public var attentionDropout: Float
    public var labelCount: Int
    public var padTokenID: Int?
    public var bosTokenID: Int?
    public var eosTokenIDs: [Int]

    /// A config from its fields (defaults: SmolLM2-135M's sizes).
    /// - Throws: ``ModelError/badConfig(path:detail:)`` for sizes that do not make a model (see ``validate(path:)``).
    public init(
        modelType: String = "llama", vocabularySize: Int = 49152, hidden: Int = 576, intermediate: Int = 1536,
        layers: Int = 30, heads: Int = 9, keyValueHeads: Int? = nil, headSize: Int? = nil, positions: Int = 8192,
        rmsNormEpsilon: Float = 1e-5, ropeTheta: Float = 100000, ropeScaling: RopeScaling? = nil,
        tieWordEmbeddings: Bool = true, qkvBias: Bool = false, outputBias: Bool = false, mlpBias: Bool = false,
        slidingWindow: Int? = nil, attentionDropout: Float = 0, labelCount: Int = 2, padTokenID: Int? = nil,
        bosTokenID: Int? = nil, eosTokenIDs: [Int] = []
    ) throws {
        (self.modelType, self.vocabularySize, self.hidden, self.intermediate) = (
            modelType, vocabularySize, hidden, intermediate
        )
        (self.layers, self.heads, self.keyValueHeads) = (layers, heads, keyValueHeads ?? heads)
        self.headSize = headSize ?? (heads > 0 ? hidden / heads : 0)
        (self.positions, self.rmsNormEpsilon, self.ropeTheta, self.ropeScaling) = (
            positions, rmsNormEpsilon, ropeTheta, ropeScaling
        )
        (self.tieWordEmbeddings, self.qkvBias, self.outputBias, self.mlpBias) = (
            tieWordEmbeddings, qkvBias, outputBias, mlpBias
        )
        (self.slidingWindow, self.attentionDropout, self.labelCount) = (slidingWindow, attentionDropout, labelCount)
        (self.padTokenID, self.bosTokenID, self.eosTokenIDs) = (padTokenID, bosTokenID, eosTokenIDs)
        try validate()
    }

    public init(json: [String: Any], path: String = "config.json") throws {
        let c = ConfigReader(json: json, path: path)
        modelType = try c.string("model_type", default: "llama")
        guard ["llama", "qwen2", "mistral"].contains(modelType) else {
            throw ModelError.badConfig(
                path: path, detail: "model_type '\(modelType)' is not a Llama-family decoder (llama, qwen2, mistral)")
        }
        vocabularySize = try c.int("vocab_size", default: 32000)
        hidden = try c.int("hidden_size", default: 4096)
        intermediate = try c.int("intermediate_size", default: 11008)
        layers = try c.int("num_hidden_layers", default: 32)
        heads = try c.int("num_attention_heads", default: 32)
        keyValueHeads = try c.optionalInt("num_key_value_heads") ?? heads
        headSize = try c.optionalInt("head_dim") ?? (heads > 0 ? hidden / heads : 0)
        positions = try c.int("max_position_embeddings", default: 2048)
        rmsNormEpsilon = try c.float("rms_norm_eps", default: 1e-6)
        ropeTheta = try c.float("rope_theta", default: 10000)
        let activation = try c.string("hidden_act", default: "silu")
        try c.require(activation == "silu", "hidden_act '\(activation)' is not supported (Llama-family models use silu)")
        if let partial = JSONNumber.double(json["partial_rotary_factor"]) {
            try c.require(partial == 1, "partial_rotary_factor \(partial) is not supported (rotary over whole heads only)")
        }
        ropeScaling = try Self.ropeScaling(json["rope_scaling"], reader: c)
        tieWordEmbeddings = json["tie_word_embeddings"] as? Bool ?? false  // LlamaConfig, Qwen2Config and MistralConfig default to untied
        let attentionBias = json["attention_bias"] as? Bool ?? false
        qkvBias = modelType == "qwen2" ? true : attentionBias
        outputBias = modelType == "qwen2" ? false : attentionBias
        mlpBias = json["mlp_bias"] as? Bool ?? false
        if modelType == "qwen2", json["use_sliding_window"] as? Bool == true {
            throw ModelError.badConfig(
                path: path,
                detail:
                    "Qwen2's use_sliding_window (a window on some layers only) is not supported; the released Qwen2 models leave it off"
            )
        }
        slidingWindow = modelType == "mistral" ? try c.optionalInt("sliding_window") : nil
        attentionDropout = try c.float("attention_dropout", default: 0)
        labelCount = try c.labelCount()
        padTokenID = try c.optionalInt("pad_token_id")
        bosTokenID = try c.optionalInt("bos_token_id")
        if let list = json["eos_token_id"] as? [Any] {
            eosTokenIDs = try list.map {
                guard let n = JSONNumber.exactInt($0) else {
                    throw ModelError.badConfig(path: path, detail: "'eos_token_id' holds a non-integer")
                }
                return n
            }
        } else {
            eosTokenIDs = try c.optionalInt("eos_token_id").map { [$0] } ?? []
        }
        try validate(path: path)
    }

    static func ropeScaling(_ value: Any?, reader c: ConfigReader) throws -> RopeScaling? {
        guard let value, !(value is NSNull) else { return nil }
        guard let d = value as? [String: Any] else {
            throw ModelError.badConfig(path: c.path, detail: "'rope_scaling' is not an object")
        }
        let r = ConfigReader(json: d, path: c.path)
        let type = try r.string("rope_type", default: try r.string("type", default: "default"))
        switch type {
        case "default": return nil
        case "linear": return .linear(factor: try r.float("factor", default: .nan))
        case "llama3":
            return .llama3(
                factor: try r.float("factor", default: .nan),
                lowFrequencyFactor: try r.float("low_freq_factor", default: .nan),
                highFrequencyFactor: try r.float("high_freq_factor", default: .nan),
                originalPositions: try r.int("original_max_position_embeddings"))
        default:
            throw ModelError.badConfig(
                path: c.path, detail: "rope_scaling type '\(type)' is not supported (linear, llama3)")
        }
    }

    /// The config as Hugging Face's `config.json` holds it, for ``Module/save(to:config:)``.
    public var json: [String: Any] {
        var j: [String: Any] = [
            "model_type": modelType, "vocab_size": vocabularySize, "hidden_size": hidden,
            "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": keyValueHeads, "head_dim": headSize, "max_position_embeddings": positions,
            "rms_norm_eps": rmsNormEpsilon, "rope_theta": ropeTheta, "hidden_act": "silu",
            "tie_word_embeddings": tieWordEmbeddings, "mlp_bias": mlpBias, "attention_dropout": attentionDropout,
            "num_labels": labelCount,
        ]
        if modelType != "qwen2" { j["attention_bias"] = qkvBias }
        if let slidingWindow { j["sliding_window"] = slidingWindow }
        if let padTokenID { j["pad_token_id"] = padTokenID }
        if let bosTokenID { j["bos_token_id"] = bosTokenID }
        if !eosTokenIDs.isEmpty { j["eos_token_id"] = eosTokenIDs.count == 1 ? eosTokenIDs[0] : eosTokenIDs }
        switch ropeScaling {
        case let .linear(f)?: j["rope_scaling"] = ["rope_type": "linear", "factor": f]
        case let .llama3(f, lo, hi, original)?:
            j["rope_scaling"] = [
                "rope_type": "llama3", "factor": f, "low_freq_factor": lo, "high_freq_factor": hi,
                "original_max_position_embeddings": original,
            ]
        case nil: break
        }
        return j
    }

    /// Checks a config whether read from a file or set by hand; every model built from one calls it first.
    /// - Throws: ``ModelError/badConfig(path:detail:)`` naming the field.
    public func validate(path: String = "LlamaConfig") throws {
        let check = ConfigCheck(path: path)
        try check.positive([
            "vocab_size": vocabularySize, "hidden_size": hidden, "intermediate_size": intermediate,
            "num_attention_heads": heads, "num_key_value_heads": keyValueHeads, "head_dim": headSize,
            "max_position_embeddings": positions, "num_labels": labelCount,
        ])
        try check.require(layers >= 0, "num_hidden_layers is \(layers); it must not be negative")
        try check.require(
            heads % keyValueHeads == 0,
            "num_attention_heads \(heads) is not a multiple of num_key_value_heads \(keyValueHeads)")
        try check.require(headSize % 2 == 0, "head_dim \(headSize) is odd; rotary embeddings rotate pairs")
        try check.require(
            vocabularySize <= Int(Int32.max), "vocab_size \(vocabularySize) does not fit 32-bit token ids")
        try check.require(rmsNormEpsilon.isFinite && rmsNormEpsilon >= 0, "rms_norm_eps is \(rmsNormEpsilon)")
        try check.require(ropeTheta.isFinite && ropeTheta > 1, "rope_theta is \(ropeTheta); it must exceed 1")
        try check.probabilities(["attention_dropout": attentionDropout])
        if let slidingWindow { try check.require(slidingWindow > 0, "sliding_window is \(slidingWindow)") }
        switch ropeScaling {
        case let .linear(f)?: try check.require(f.isFinite && f > 0, "rope_scaling factor is \(f)")
        case let .llama3(f, lo, hi, original)?:
            try check.require(f.isFinite && f > 0, "rope_scaling factor is \(f)")
            try check.require(
                lo.isFinite && hi.isFinite && lo > 0 && hi > lo,
                "rope_scaling low_freq_factor \(lo) and high_freq_factor \(hi): need 0 < low < high")
            try check.require(original > 0, "rope_scaling original_max_position_embeddings is \(original)")
        case nil: break
        }
        for (name, id) in [("pad_token_id", padTokenID), ("bos_token_id", bosTokenID)] {
            if let id {
                try check.require(
                    (0..<vocabularySize).contains(id), "\(name) \(id) is outside the vocabulary of \(vocabularySize)")
            }
        }
        try check.fitsInMemory(parameterTerms)
    }

    /// The parameters as products of sizes: embeddings, per layer (norms, q/k/v/o, gate/up/down), the output layer.
    var parameterTerms: [[Int]] {
        let (C, I, L, q, kv) = (hidden, intermediate, max(layers, 0), heads * headSize, keyValueHeads * headSize)
        return [
            [vocabularySize, C], [L, 2, C], [L, C, q], [L, 2, C, kv], [L, q, C], [L, 3, C, I], [L, q + 2 * kv + C],
            [C], tieWordEmbeddings ? [labelCount, C] : [vocabularySize, C],
        ]
    }

    /// About how many parameters the model has, counted without building it; `Int.max` when the sizes overflow.
    public var parameterCount: Int { ConfigCheck.count(parameterTerms) ?? .max }
}

/// Rotary position embeddings' angles (arXiv 2104.09864): inverse frequencies `θ^(-2d/hs)` (scaled per
/// ``RopeScaling``), computed in float32 as transformers does so that angles agree to the last bit where it matters.
public struct RotaryEmbedding: Sendable {
    public let inverseFrequencies: [Float]

    public init(headSize: Int, theta: Float, scaling: RopeScaling?) {
        var f = (0..<(headSize / 2)).map { d in 1 / Float.pow(theta, Float(2 * d) / Float(headSize)) }
        switch scaling {
        case let .linear(factor)?: f = f.map { $0 / factor }
        case let .llama3(factor, low, high, original)?:
            let lowWavelength = Float(original) / low, highWavelength = Float(original) / high
            f = f.map { inv in
                let wavelength = 2 * Float.pi / inv
                if wavelength < highWavelength { return inv }
                if wavelength > lowWavelength { return inv / factor }
                let smooth = (Float(original) / wavelength - low) / (high - low)
                return (1 - smooth) * inv / factor + smooth * inv
            }
        case nil: break
        }
        inverseFrequencies = f
    }

    /// cos and sin of every angle, `[B, T, hs/2]` each, for `positions: [B, T]`.
    public func angles(_ positions: IntTensor) throws -> (cos: Tensor, sin: Tensor) {
        let h = inverseFrequencies.count
        var c = [Float](repeating: 0, count: positions.count * h), s = c
        for (i, p) in positions.values.enumerated() {
            for d in 0..<h {
                let angle = Float(p) * inverseFrequencies[d]  // float32 product, as torch's matmul of float32 tensors
                c[i * h + d] = Float(Foundation.cos(Double(angle)))
                s[i * h + d] = Float(Foundation.sin(Double(angle)))
            }
        }
        let shape = positions.shape + [h]
        return (try Tensor(shape: shape, values: c), try Tensor(shape: shape, values: s))
    }
}

extension Float {
    static func pow(_ x: Float, _ y: Float) -> Float { Foundation.pow(x, y) }
}
