import Foundation

/// Typed reads from a `config.json`, with the file path in every error.
struct ConfigReader {
    let json: [String: Any]
    let path: String

    func int(_ key: String, default value: Int? = nil) throws -> Int {
        if let n = json[key] as? NSNumber, !(json[key] is Bool) { return n.intValue }
        if json[key] == nil || json[key] is NSNull, let value { return value }
        throw ModelError.badConfig(path: path, detail: "'\(key)' is \(json[key] == nil ? "missing" : "not an integer")")
    }

    func optionalInt(_ key: String) -> Int? {
        guard let n = json[key] as? NSNumber, !(json[key] is Bool) else { return nil }
        return n.intValue
    }

    func float(_ key: String, default value: Float) throws -> Float {
        if let n = json[key] as? NSNumber { return n.floatValue }
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

/// Maps a Hugging Face `hidden_act` / `activation_function` name to a GELU form.
func geluForm(_ name: String, path: String) throws -> GELUApproximation {
    switch name {
    case "gelu": return .none
    case "gelu_new", "gelu_pytorch_tanh", "gelu_fast": return .tanh
    default: throw ModelError.badConfig(path: path, detail: "activation '\(name)' is not supported (gelu, gelu_new, gelu_pytorch_tanh)")
    }
}
