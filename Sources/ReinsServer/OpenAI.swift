import Foundation

/// The OpenAI API's request and response bodies that `reins serve` speaks (the fields it reads; others are ignored).
enum OpenAI {
    /// A string or a list of strings (`prompt`, `stop`, `input`).
    enum Strings: Decodable {
        case one(String)
        case many([String])

        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let s = try? c.decode(String.self) { self = .one(s); return }
            self = .many(try c.decode([String].self))
        }

        var list: [String] {
            switch self {
            case let .one(s): return [s]
            case let .many(l): return l
            }
        }
    }

    /// Message content: a string, or a list of parts of which the text ones are read.
    struct Content: Decodable {
        let text: String
        struct Part: Decodable {
            let type: String
            let text: String?
        }

        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let s = try? c.decode(String.self) { text = s; return }
            if c.decodeNil() { text = ""; return }
            let parts = try c.decode([Part].self)
            guard parts.allSatisfy({ $0.type == "text" }) else {
                throw DecodingError.dataCorruptedError(
                    in: c, debugDescription: "only text content parts are supported")
            }
            text = parts.compactMap(\.text).joined()
        }
    }

    struct Message: Decodable {
        let role: String
        let content: Content?
    }

    /// What completions and chat completions share.
    struct Sampling: Decodable {
        let model: String
        let max_tokens: Int?
        let max_completion_tokens: Int?
        let temperature: Double?
        let top_p: Double?
        let seed: Int64?
        let stop: Strings?
        let stream: Bool?
        let n: Int?
        let frequency_penalty: Double?
        let presence_penalty: Double?
        /// vLLM's and llama.cpp's extension for load tests: generate `max_tokens` whatever the model's stop tokens.
        let ignore_eos: Bool?
    }

    struct CompletionRequest: Decodable {
        let prompt: Strings
    }

    struct ChatRequest: Decodable {
        let messages: [Message]
    }

    struct EmbeddingRequest: Decodable {
        let model: String
        let input: Strings
        let encoding_format: String?
    }

    struct AdapterRequest: Decodable {
        let name: String
        let path: String
    }
}

extension JSONSerialization {
    /// `object` as compact JSON bytes (keys sorted: stable output).
    static func bytes(_ object: Any) -> Data {
        (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    }
}
