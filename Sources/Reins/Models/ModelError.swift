/// Why a model, checkpoint or input was refused. Every case names the file, tensor or value at fault.
public enum ModelError: Error, Equatable, CustomStringConvertible {
    case missingFile(path: String)
    case badConfig(path: String, detail: String)
    case unknownArchitecture(String, known: [String])
    /// Strict loading found tensors the model needs but the checkpoint lacks, tensors the checkpoint has but the
    /// model does not know, or tensors of the wrong shape. Each list is complete.
    case checkpointMismatch(missing: [String], unexpected: [String], misshaped: [String])
    case sequenceTooLong(length: Int, maximum: Int)
    case tokenOutOfRange(position: Int, id: Int, vocabularySize: Int)
    case tokenTypeOutOfRange(position: Int, type: Int, typeCount: Int)
    case badInput(String)

    public var description: String {
        switch self {
        case let .missingFile(path): return "\(path): no such file"
        case let .badConfig(path, detail): return "\(path): \(detail)"
        case let .unknownArchitecture(name, known):
            return "unknown architecture '\(name)'; known: \(known.joined(separator: ", "))"
        case let .checkpointMismatch(missing, unexpected, misshaped):
            var parts: [String] = []
            if !missing.isEmpty { parts.append("missing tensors: \(missing.joined(separator: ", "))") }
            if !unexpected.isEmpty { parts.append("unexpected tensors: \(unexpected.joined(separator: ", "))") }
            if !misshaped.isEmpty { parts.append("mis-shaped tensors: \(misshaped.joined(separator: ", "))") }
            return "checkpoint does not fit the model: " + parts.joined(separator: "; ")
        case let .sequenceTooLong(length, maximum):
            return "sequence of \(length) tokens is longer than the model's \(maximum) positions"
        case let .tokenOutOfRange(position, id, size):
            return "token id \(id) at position \(position) is outside the vocabulary of \(size)"
        case let .tokenTypeOutOfRange(position, type, count):
            return "token type \(type) at position \(position) is outside 0..<\(count)"
        case let .badInput(detail): return detail
        }
    }
}
