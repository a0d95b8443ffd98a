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

    /// An integer entry, exactly: `2.7`, `true`, `"3"` and integers beyond 64 bits are errors, never truncated.
    func int(_ key: String, default value: Int? = nil) throws -> Int {
        if let n = try optionalInt(key) { return n }
        if let value { return value }
        throw ModelError.badConfig(path: path, detail: "'\(key)' is missing")
    }

    /// An integer entry, or `nil` when it is absent or null.
    func optionalInt(_ key: String) throws -> Int? {
        guard let v = json[key], !(v is NSNull) else { return nil }
        guard let n = JSONNumber.exactInt(v) else {
            let shown = Self.number(v) == nil ? "" : " (\(v))"  // a boolean prints as 1 or 0: say nothing rather than mislead
            throw ModelError.badConfig(path: path, detail: "'\(key)' is not an integer\(shown)")
        }
        return n
    }

    func float(_ key: String, default value: Float) throws -> Float {
        if let n = JSONNumber.double(json[key]) { return Float(n) }
        if json[key] == nil || json[key] is NSNull { return value }
        throw ModelError.badConfig(path: path, detail: "'\(key)' is not a number")
    }

    func string(_ key: String, default value: String) throws -> String {
        if let s = json[key] as? String { return s }
        if json[key] == nil || json[key] is NSNull { return value }
        throw ModelError.badConfig(path: path, detail: "'\(key)' is not a string")
    }

    /// The number of labels: `id2label`'s size, else `num_labels`, else 2 (Hugging Face's default).
    func labelCount() throws -> Int {
        if let m = json["id2label"] as? [String: Any], !m.isEmpty { return m.count }
        return try optionalInt("num_labels") ?? 2
    }

    var architectures: [String] { json["architectures"] as? [String] ?? [] }

    func require(_ condition: Bool, _ detail: @autoclosure () -> String) throws {
        if !condition { throw ModelError.badConfig(path: path, detail: detail()) }
    }
}

/// Checks shared by every model config, whether it was read from a file or set field by field: sizes that are
/// positive, probabilities that are probabilities, and a parameter count that fits in memory, computed in checked
/// arithmetic before anything is allocated.
struct ConfigCheck {
    let path: String

    func require(_ condition: Bool, _ detail: @autoclosure () -> String) throws {
        if !condition { throw ModelError.badConfig(path: path, detail: detail()) }
    }

    func positive(_ fields: KeyValuePairs<String, Int>) throws {
        for (name, value) in fields where value <= 0 {
            throw ModelError.badConfig(path: path, detail: "\(name) is \(value); it must be positive")
        }
    }

    func probabilities(_ fields: KeyValuePairs<String, Float>) throws {
        for (name, p) in fields where !(0..<1).contains(p) {
            throw ModelError.badConfig(path: path, detail: "\(name) is \(p); dropout probabilities must be in [0, 1)")
        }
    }

    /// `Σ Π term` in checked arithmetic; nil when it overflows.
    static func count(_ terms: [[Int]]) -> Int? {
        var total = 0
        for term in terms {
            var product = 1
            for factor in term {
                let (m, o) = product.multipliedReportingOverflow(by: max(factor, 0))
                guard !o else { return nil }
                product = m
            }
            let (s, o) = total.addingReportingOverflow(product)
            guard !o else { return nil }
            total = s
        }
        return total
    }

    /// `Σ Π term` parameters, refused when the product or sum overflows or the float32 weights exceed the memory limit.
    func fitsInMemory(_ terms: [[Int]]) throws {
        let total = ConfigCheck.count(terms) ?? 0
        do {
            guard ConfigCheck.count(terms) != nil else {
                throw TensorError.invalidArgument(operation: "", detail: "more parameters than an Int can count")
            }
            try Tensor.checkMemory(
                elements: total, bytesPerElement: MemoryLayout<Float>.stride, what: "\(total) parameters", operation: ""
            )
        } catch let error as TensorError {
            guard case let .invalidArgument(_, detail) = error else { throw error }
            throw ModelError.badConfig(path: path, detail: "the model's sizes are too large: \(detail)")
        }
    }
}

/// The feed-forward activation named by a Hugging Face `hidden_act` / `activation_function`.
public enum Activation: Sendable, Equatable {
    case gelu(GELUApproximation)
    case relu

    /// The Hugging Face name of this activation (`gelu`, `gelu_new`, `relu`).
    public var name: String {
        switch self {
        case .gelu(.none): return "gelu"
        case .gelu(.tanh): return "gelu_new"
        case .relu: return "relu"
        }
    }

    init(_ name: String, path: String) throws {
        switch name {
        case "gelu": self = .gelu(.none)
        case "gelu_new", "gelu_pytorch_tanh", "gelu_fast": self = .gelu(.tanh)
        case "relu": self = .relu
        default:
            throw ModelError.badConfig(
                path: path, detail: "activation '\(name)' is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)")
        }
    }

    /// `activation(x·Wᵀ + b)` for the first feed-forward layer, with the bias fused into GELU.
    func apply(_ x: Tensor, _ layer: Linear) throws -> Tensor {
        switch self {
        case let .gelu(form):
            if layer.hasLiveAdapter { return try layer(x).gelu(form) }  // the fused path would bypass the adapter
            let pre = try layer.baseProduct(x, bias: nil)
            guard let bias = layer.bias else { return pre.gelu(form) }
            return try Tensor.biasGELU(pre, bias: bias.value, form)
        case .relu:
            return try layer(x).relu()
        }
    }
}
