import Foundation
import Reins
import ReinsTensor

/// Every file reader Reins has, as a fuzz target: bytes in, the reader run on them (and on what it accepts, the reads
/// that follow), every thrown error accepted. A crash, a hang or an unbounded allocation is the only failure.
///
/// Shared by the seeded mutation fuzz test in `swift test` and by the coverage-guided libFuzzer harness
/// (`Tests/Fuzz/run.sh`), so that both exercise exactly the same code.
public enum ReaderFuzzTarget: String, CaseIterable, Sendable {
    case safetensors, torchCheckpoint, modelConfig, checkpointDirectory, tokenizerJSON, vocabularyText, bpeFiles
    case adapterConfig, adapterWeights, dataJSONL, dataCSV, metricsLog, chatTemplate, gguf

    /// Runs the reader on `data`, using `scratch` (an empty directory of the caller's) for files.
    /// - Returns: whether the reader accepted the input.
    @discardableResult
    public func run(_ data: Data, scratch: URL, fixtures: URL) -> Bool {
        do {
            try body(data, scratch, fixtures)
            return true
        } catch {
            return false
        }
    }

    private func write(_ data: Data, _ name: String, in dir: URL) throws -> URL {
        let url = dir.appendingPathComponent(name)
        try data.write(to: url)
        return url
    }

    /// A copy of the tiny GPT-2 fixture model in `dir`.
    private func gpt2Model(in dir: URL, fixtures: URL) throws -> URL {
        let model = dir.appendingPathComponent("model")
        try? FileManager.default.removeItem(at: model)
        try FileManager.default.createDirectory(at: model, withIntermediateDirectories: true)
        for name in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(
                at: fixtures.appendingPathComponent("models/gpt2-lm/\(name)"), to: model.appendingPathComponent(name))
        }
        return model
    }

    private func body(_ data: Data, _ dir: URL, _ fixtures: URL) throws {
        switch self {
        case .safetensors:
            let file = try SafeTensorsFile(path: try write(data, "x.safetensors", in: dir).path)
            for (name, entry) in file.entries {
                if entry.dtype == .int32 || entry.dtype == .int64 {
                    _ = try file.intTensor(name)
                } else {
                    _ = try file.tensor(name)
                }
            }
        case .torchCheckpoint:
            let file = try TorchCheckpoint(path: try write(data, "x.bin", in: dir).path)
            for name in file.tensorNames { _ = try? file.tensor(name) }
        case .modelConfig:
            let json = try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
            // Accepted when any family reads it (each reader runs on every input).
            let gpt2 = try? GPT2Config(json: json), llama = try? LlamaConfig(json: json)
            if gpt2 == nil && llama == nil { _ = try BertConfig(json: json) } else { _ = try? BertConfig(json: json) }
        case .checkpointDirectory:
            // A config.json beside the fixture's weights: the whole load, model building included.
            let model = try gpt2Model(in: dir, fixtures: fixtures)
            try data.write(to: model.appendingPathComponent("config.json"))
            _ = try PretrainedModel.load(directory: model)
        case .tokenizerJSON:
            let url = try write(data, "tokenizer.json", in: dir)
            let tokenizer = try AnyTokenizer(file: url.path)
            for text in Self.texts { _ = try tokenizer.encode(text) }
        case .vocabularyText:
            let tokenizer = try AnyTokenizer(file: try write(data, "vocab.txt", in: dir).path)
            for text in Self.texts { _ = try tokenizer.encode(text) }
        case .bpeFiles:
            // vocab.json, a NUL byte, then merges.txt.
            let cut = data.firstIndex(of: 0) ?? data.endIndex
            let vocab = try write(Data(data[data.startIndex..<cut]), "vocab.json", in: dir)
            let merges = try write(cut < data.endIndex ? Data(data[(cut + 1)...]) : Data(), "merges.txt", in: dir)
            let tokenizer = try BPETokenizer(vocabularyFile: vocab.path, mergesFile: merges.path)
            for text in Self.texts { _ = tokenizer.decode(tokenizer.encode(text)) }
        case .adapterConfig, .adapterWeights:
            let adapter = dir.appendingPathComponent("adapter")
            try? FileManager.default.removeItem(at: adapter)
            try FileManager.default.createDirectory(at: adapter, withIntermediateDirectories: true)
            let source = fixtures.appendingPathComponent("adapters/gpt2-lora")
            for name in ["adapter_config.json", "adapter_model.safetensors"] {
                try FileManager.default.copyItem(
                    at: source.appendingPathComponent(name), to: adapter.appendingPathComponent(name))
            }
            try data.write(
                to: adapter.appendingPathComponent(
                    self == .adapterConfig ? "adapter_config.json" : "adapter_model.safetensors"))
            let model = try PretrainedModel.load(
                directory: try gpt2Model(in: dir, fixtures: fixtures), forAdapter: adapter)
            try AdapterFiles.load(directory: adapter, into: model.module)
        case .dataJSONL, .dataCSV:
            let url = try write(data, self == .dataCSV ? "data.csv" : "data.jsonl", in: dir)
            _ = try? DataFiles.classification(url, labels: [])
            _ = try? DataFiles.classification(url, labels: ["a", "b"], pairField: "pair")
            _ = try? DataFiles.taggedWords(url, tags: ["O", "B-X", "I-X"])
            _ = try? DataFiles.questionAnswers(url)
            _ = try? DataFiles.languageModeling(url)
            _ = try? DataFiles.conversations(url)
            _ = try DataFiles.records(url)
        case .metricsLog:
            _ = try StepRecord.log(try write(data, "metrics.jsonl", in: dir))
        case .gguf:
            // The reader, every tensor dequantized, then whatever the metadata describes: config, tokenizer, chat
            // format, and the model itself with its quantized weights kept in blocks.
            let url = try write(data, "x.gguf", in: dir)
            let file = try GGUFFile(path: url.path)
            for name in file.tensorNames { _ = try file.tensor(name) }
            if let tokenizer = try? BPETokenizer(gguf: file) {
                for text in Self.texts { _ = tokenizer.decode(tokenizer.encode(text)) }
            }
            _ = try? ChatFormat(gguf: file)
            if (try? GGUFModel.config(of: file)) != nil {
                if case let .llamaCausalLM(m)? = try? PretrainedModel.load(directory: url, quantized: true) {
                    _ = try? Autograd.withoutGradients { try m.logits(IntTensor(shape: [1, 3], values: [1, 2, 3])) }
                }
            }
        case .chatTemplate:
            let template = try ChatTemplate(String(decoding: data, as: UTF8.self))
            let messages: [ChatTemplate.Message] = [
                .init(role: "system", content: "Be brief."), .init(role: "user", content: "Hi 🙂"),
                .init(role: "assistant", content: "Hello"), .init(role: "user", content: "Bye"),
            ]
            let tools = try ChatValue(jsonText: #"[{"type": "function", "function": {"name": "f", "parameters": {}}}]"#)
            _ = try? template.render(messages, addGenerationPrompt: true, variables: ["tools": tools])
            _ = try template.render(Array(messages.prefix(2)), variables: ["bos_token": .string("<s>")])
        }
    }

    /// Texts every accepted tokenizer encodes: digits, accents, CJK, emoji, whitespace runs, special-token look-alikes.
    static let texts = [
        "Hello, world! It's 2026.", "naïve café ÅÄÖ", "東京は日本の首都", "🙂👍🏽 x", "  \t\n  spaced   out ",
        "[CLS] <|endoftext|> [MASK]", String(repeating: "ab", count: 300),
    ]

    /// Valid files to start mutating from, from the committed fixtures.
    public func seeds(fixtures: URL) throws -> [Data] {
        func file(_ path: String) throws -> Data { try Data(contentsOf: fixtures.appendingPathComponent(path)) }
        switch self {
        case .safetensors:
            return [
                try file("models/gpt2-lm/generate.safetensors"), try file("pickle/tensors_expected.safetensors"),
                try file("adapters/gpt2-lora/adapter_model.safetensors"),
            ]
        case .torchCheckpoint:
            return [try file("pickle/tensors.bin"), try file("pickle/oversized.bin"), try file("pickle/refused.bin")]
        case .modelConfig:
            return try ["gpt2-lm", "bert-cls", "llama-tiny", "qwen2-tiny", "mistral-tiny"].map {
                try file("models/\($0)/config.json")
            }
        case .checkpointDirectory: return [try file("models/gpt2-lm/config.json")]
        case .tokenizerJSON:
            return try ["bpe", "wordpiece", "llama3", "qwen2", "smollm"].map { try file("tokenizers/\($0)/tokenizer.json") }
        case .chatTemplate:
            let chat = try JSONSerialization.jsonObject(with: try file("tokenizers/chat.json")) as? [String: Any] ?? [:]
            return (chat["templates"] as? [String: Any] ?? [:]).keys.sorted().compactMap {
                (((chat["templates"] as? [String: Any])?[$0] as? [String: Any])?["template"] as? String).map { Data($0.utf8) }
            }
        case .gguf: return [try file("gguf/blocks.gguf"), try file("gguf/qwen2-tiny.gguf")]
        case .vocabularyText: return [try file("tokenizers/wordpiece/vocab.txt")]
        case .bpeFiles:
            return [try file("tokenizers/bpe/vocab.json") + Data([0]) + (try file("tokenizers/bpe/merges.txt"))]
        case .adapterConfig: return [try file("adapters/gpt2-lora/adapter_config.json")]
        case .adapterWeights: return [try file("adapters/gpt2-lora/adapter_model.safetensors")]
        case .dataJSONL:
            return [
                Data(
                    #"""
                    {"text": "a good day", "pair": "yes", "label": "a", "tokens": "New York", "tags": "B-X I-X", "question": "who?", "context": "me", "answer": "me", "answer_start": 0, "prompt": "Q", "completion": "A"}
                    {"text": "bad", "label": 1}
                    """#.utf8)
            ]
        case .dataCSV: return [Data("text,label,tokens,tags\n\"a, quoted\"\"x\"\"\",1,a b,O O\nplain,0,c,B-X\n".utf8)]
        case .metricsLog:
            return [
                Data(
                    #"{"elapsed_seconds":0.5,"gradient_norm":1.25,"learning_rate":0.001,"loss":2.5,"step":1,"tokens_per_second":100}"#
                        .utf8 + Array("\n".utf8))
            ]
        }
    }
}

/// Seeded mutations of a valid file: byte flips, truncations, deleted and duplicated runs, interesting bytes and
/// numbers spliced in, length fields rewritten, and, for JSON, keys removed or duplicated and values replaced.
public struct Mutator {
    var rng: SeededGenerator

    public init(seed: UInt64) { rng = SeededGenerator(seed: seed) }

    mutating func below(_ n: Int) -> Int { n <= 0 ? 0 : Int(rng.next() % UInt64(n)) }

    static let numbers = [
        "-1", "0", "1", "2147483647", "4294967296", "9223372036854775807", "18446744073709551616", "1e400",
        "2.5", "-0", "1e-400", "999999999999", "4611686018427387905", "null", "true", "\"7\"", "[]", "{}",
    ]
    static let bytes: [UInt8] = [0, 0xFF, 0x7F, 0x80, 0x0A, 0x22, 0x5C, 0x7B, 0x5B, 0x2C, 0x3A, 0x30, 0x39, 0x2D]

    /// One to four mutations of `data`.
    public mutating func mutate(_ data: Data) -> Data {
        var d = [UInt8](data)
        for _ in 0..<(1 + below(4)) { mutateOnce(&d) }
        return Data(d)
    }

    mutating func mutateOnce(_ d: inout [UInt8]) {
        if d.isEmpty { d = [UInt8](Mutator.numbers[below(Mutator.numbers.count)].utf8); return }
        switch below(9) {
        case 0: d[below(d.count)] ^= UInt8(1 << below(8))
        case 1: d[below(d.count)] = Mutator.bytes[below(Mutator.bytes.count)]
        case 2: d.removeLast(below(d.count) + 1)
        case 3:
            let at = below(d.count), n = min(d.count - at, 1 + below(32))
            d.removeSubrange(at..<(at + n))
        case 4:
            let at = below(d.count), n = min(d.count - at, 1 + below(64))
            d.insert(contentsOf: d[at..<(at + n)], at: below(d.count + 1))
        case 5:
            // Replace a run of digits (a size, an offset, an id) with an interesting number.
            let digits = d.indices.filter { (0x30...0x39).contains(d[$0]) }
            guard let start = digits.isEmpty ? nil : digits[below(digits.count)] else { return }
            var end = start
            while end < d.count && (0x30...0x39).contains(d[end]) || (end < d.count && d[end] == 0x2E) { end += 1 }
            d.replaceSubrange(start..<end, with: Array(Mutator.numbers[below(Mutator.numbers.count)].utf8))
        case 6:
            // A little-endian length field at the front (safetensors' header length), or a 32-bit one anywhere (zip).
            let values: [UInt64] = [0, 1, 7, UInt64(d.count), UInt64(d.count) + 1, 1 << 31, 1 << 40, .max, .max - 7]
            let v = values[below(values.count)], width = below(2) == 0 ? 8 : 4, at = width == 8 ? 0 : below(d.count)
            for k in 0..<width where at + k < d.count { d[at + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
        case 7:
            // Duplicate a JSON member: copy `"key": value,` found after a '{' to just after the first '{'.
            guard let open = d.firstIndex(of: 0x7B), let comma = d[(open + 1)...].firstIndex(of: 0x2C) else { return }
            d.insert(contentsOf: Array(d[(open + 1)...comma]), at: open + 1)
        default:
            // Drop a JSON member: from a quote after a '{' or ',' to the next ','.
            let starts = d.indices.filter { $0 + 1 < d.count && (d[$0] == 0x7B || d[$0] == 0x2C) && d[$0 + 1] == 0x22 }
            guard let s = starts.isEmpty ? nil : starts[below(starts.count)], let e = d[(s + 1)...].firstIndex(of: 0x2C)
            else { return }
            d.removeSubrange((s + 1)...e)
        }
    }
}
