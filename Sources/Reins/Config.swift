import Foundation
import ReinsTensor

/// Typed reads from a `config.json`, with the file path in every error.
struct ConfigReader {
    let json: [String: Any]
    let path: String

    /// A JSON number, but not a JSON boolean. (On Linux `NSNumber(1) is Bool` holds, so `is Bool` cannot tell them
    /// apart; a parsed boolean is a char-typed NSNumber.)
    static func number(_ value: Any?) -> NSNumber? {
        guard let n = value as? NSNumber, String(cString: n.objCType) != "c" else { return nil }
        return n
    }

    func int(_ key: String, default value: Int? = nil) throws -> Int {
        if let n = Self.number(json[key]) { return n.intValue }
        if json[key] == nil || json[key] is NSNull, let value { return value }
        throw ModelError.badConfig(path: path, detail: "'\(key)' is \(json[key] == nil ? "missing" : "not an integer")")
    }

    func optionalInt(_ key: String) -> Int? { Self.number(json[key])?.intValue }

    func float(_ key: String, default value: Float) throws -> Float {
        if let n = Self.number(json[key]) { return n.floatValue }
        if json[key] == nil || json[key] is NSNull { return value }
        throw ModelError.badConfig(path: path, detail: "'\(key)' is not a number")
    }

    func string(_ key: String, default value: String) throws -> String {
        if let s = json[key] as? String { return s }
        if json[key] == nil || json[key] is NSNull { return value }
        throw ModelError.badConfig(path: path, detail: "'\(key)' is not a string")
    }

    /// The number of labels: `id2label`'s size, else `num_labels`, else 2 (Hugging Face's default).
    var labelCount: Int {
        if let m = json["id2label"] as? [String: Any], !m.isEmpty { return m.count }
        return optionalInt("num_labels") ?? 2
    }

    var architectures: [String] { json["architectures"] as? [String] ?? [] }

    func require(_ condition: Bool, _ detail: @autoclosure () -> String) throws {
        if !condition { throw ModelError.badConfig(path: path, detail: detail()) }
    }
}

/// The feed-forward activation named by a Hugging Face `hidden_act` / `activation_function`.
public enum Activation: Sendable, Equatable {
    case gelu(GELUApproximation)
    case relu

    init(_ name: String, path: String) throws {
        switch name {
        case "gelu": self = .gelu(.none)
        case "gelu_new", "gelu_pytorch_tanh", "gelu_fast": self = .gelu(.tanh)
        case "relu": self = .relu
        default: throw ModelError.badConfig(path: path, detail: "activation '\(name)' is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)")
        }
    }

    /// `activation(x·Wᵀ + b)` for the first feed-forward layer, with the bias fused into GELU.
    func apply(_ x: Tensor, _ layer: Linear) throws -> Tensor {
        switch self {
        case let .gelu(form):
            if layer.hasLiveAdapter { return try layer(x).gelu(form) } // the fused path would bypass the adapter
            let pre = try Tensor.linear(x, weight: layer.weight.value, weightTransposed: layer.weightTransposed)
            guard let bias = layer.bias else { return pre.gelu(form) }
            return try Tensor.biasGELU(pre, bias: bias.value, form)
        case .relu:
            return try layer(x).relu()
        }
    }
}
