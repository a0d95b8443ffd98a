import Foundation
import Reins
import ReinsTensor
import ReinsTestSupport
import Testing

/// The `reins` tool run as a user would run it: a separate process whose exit status, signal, standard error and time
/// are checked. Every malformed file or argument must end with a non-zero exit, no signal, a one-line message naming
/// the problem, and within seconds.
struct CLIMalformedInputTests {
    struct Outcome {
        let status: Int32, signaled: Bool, stdout: String, stderr: String, seconds: Double
    }

    /// The tool beside the test bundle (`swift test` builds it: this target depends on it).
    static var tool: URL {
        get throws {
            let beside = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
                .appendingPathComponent("reins")
            if FileManager.default.isExecutableFile(atPath: beside.path) { return beside }
            let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent()
            let debug = root.appendingPathComponent(".build/debug/reins")
            guard FileManager.default.isExecutableFile(atPath: debug.path) else {
                throw CocoaError(
                    .fileNoSuchFile,
                    userInfo: [NSLocalizedDescriptionKey: "no reins tool beside \(beside.path) or at \(debug.path)"])
            }
            return debug
        }
    }

    func reins(_ arguments: [String], stdin: String = "", timeout: Double = 30) throws -> Outcome {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let (inURL, outURL, errURL) = (
            dir.appendingPathComponent("in"), dir.appendingPathComponent("out"), dir.appendingPathComponent("err")
        )
        try Data(stdin.utf8).write(to: inURL)
        for url in [outURL, errURL] { try Data().write(to: url) }
        let process = Process()
        process.executableURL = try Self.tool
        process.arguments = arguments
        // Files rather than pipes: nothing to drain while it runs, and the output survives a kill.
        process.standardInput = try FileHandle(forReadingFrom: inURL)
        process.standardOutput = try FileHandle(forWritingTo: outURL)
        process.standardError = try FileHandle(forWritingTo: errURL)
        let start = Date()
        try process.run()
        while process.isRunning && Date().timeIntervalSince(start) < timeout { usleep(10_000) }
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        return Outcome(
            status: process.terminationStatus, signaled: process.terminationReason == .uncaughtSignal,
            stdout: String(decoding: try FileBytes.read(outURL.path), as: UTF8.self),
            stderr: String(decoding: try FileBytes.read(errURL.path), as: UTF8.self),
            seconds: Date().timeIntervalSince(start))
    }

    /// Expects a clean refusal: non-zero exit, no signal, within 10 s, and one line on standard error that contains
    /// each of `words`.
    func expectRefusal(
        _ arguments: [String], stdin: String = "", mentioning words: String...,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let o = try reins(arguments, stdin: stdin)
        let what = "reins \(arguments.joined(separator: " "))"
        #expect(!o.signaled, "\(what) died of a signal: \(o.stderr)", sourceLocation: sourceLocation)
        #expect(o.status != 0, "\(what) exited 0", sourceLocation: sourceLocation)
        #expect(o.seconds < 10, "\(what) took \(o.seconds) s", sourceLocation: sourceLocation)
        let lines = o.stderr.split(separator: "\n").filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
        #expect(lines.count == 1, "\(what): expected one line on stderr, got \(lines)", sourceLocation: sourceLocation)
        for w in words {
            #expect(o.stderr.contains(w), "\(what): '\(w)' not in \(o.stderr)", sourceLocation: sourceLocation)
        }
    }

    let fm = FileManager.default

    /// A copy of a fixture model directory whose config.json gets `changes`.
    func model(_ fixture: String, in dir: URL, _ changes: [String: Any] = [:]) throws -> URL {
        let url = dir.appendingPathComponent(fixture + "-\(UUID().uuidString.prefix(6))")
        try fm.copyItem(at: Fixtures.directory.appendingPathComponent("models/\(fixture)"), to: url)
        if !changes.isEmpty {
            var config = try Checkpoint.readJSON(url.appendingPathComponent("config.json"))
            for (k, v) in changes { config[k] = v }
            try JSONSerialization.data(withJSONObject: config).write(to: url.appendingPathComponent("config.json"))
        }
        return url
    }

    /// A copy of a fixture model whose config.json is `text`, verbatim (for numbers JSONSerialization cannot write).
    func model(_ fixture: String, in dir: URL, replacing old: String, with new: String) throws -> URL {
        let url = try model(fixture, in: dir)
        let config = url.appendingPathComponent("config.json")
        let text = try String(contentsOf: config, encoding: .utf8)
        #expect(text.contains(old), "fixture config has \(old)")
        try text.replacingOccurrences(of: old, with: new).write(to: config, atomically: true, encoding: .utf8)
        return url
    }

    /// The BERT classifier fixture with a WordPiece vocabulary of its size (the fixture vocabulary's first 101 tokens).
    func bertWithTokenizer(in dir: URL) throws -> URL {
        let bert = try model("bert-cls", in: dir)
        let vocabulary = try String(
            contentsOf: Fixtures.directory.appendingPathComponent("tokenizers/wordpiece/vocab.txt"), encoding: .utf8)
        let size = try #require(
            try Checkpoint.readJSON(bert.appendingPathComponent("config.json"))["vocab_size"] as? Int)
        try (vocabulary.split(separator: "\n").prefix(size).joined(separator: "\n") + "\n")
            .write(to: bert.appendingPathComponent("vocab.txt"), atomically: true, encoding: .utf8)
        return bert
    }

    @Test func malformedConfigsAndCheckpointsAreRefusedByName() throws {
        let dir = try temporaryDirectory()
        defer { try? fm.removeItem(at: dir) }
        try expectRefusal(
            ["info", "--model", try model("gpt2-lm", in: dir, ["pad_token_id": 10_000_000_000]).path],
            mentioning: "config.json", "pad_token_id")
        try expectRefusal(
            [
                "info", "--model",
                try model("gpt2-lm", in: dir, replacing: "\"n_layer\": 2", with: "\"n_layer\": 2.7").path,
            ], mentioning: "'n_layer' is not an integer")
        try expectRefusal(
            [
                "info", "--model",
                try model("gpt2-lm", in: dir, replacing: "\"n_embd\": 30", with: "\"n_embd\": 4000000000000000000")
                    .path,
            ], mentioning: "n_embd 4000000000000000000")
        try expectRefusal(
            ["info", "--model", try model("gpt2-lm", in: dir, ["n_layer": 1_000_000_000]).path], mentioning: "too large"
        )
        try expectRefusal(
            ["info", "--model", try model("bert-cls", in: dir, ["vocab_size": 1_000_000_000_000]).path],
            mentioning: "vocab_size")
        try expectRefusal(
            ["info", "--model", try model("gpt2-lm", in: dir, ["n_head": 0]).path], mentioning: "n_head is 0")
        // Sizes that fit in memory but not the checkpoint beside them: refused before gigabytes are allocated for them.
        try expectRefusal(
            ["info", "--model", try model("gpt2-lm", in: dir, ["n_layer": 100_000]).path], mentioning: "implies",
            "the checkpoint holds")
        let data = dir.appendingPathComponent("train.jsonl")
        try #"{"text": "a b", "label": 1}"#.write(to: data, atomically: true, encoding: .utf8)
        let big = try model("bert-cls", in: dir, ["num_hidden_layers": 100_000])
        try fm.copyItem(
            at: Fixtures.directory.appendingPathComponent("tokenizers/wordpiece/vocab.txt"),
            to: big.appendingPathComponent("vocab.txt"))
        try expectRefusal(
            ["train", "--model", big.path, "--train", data.path, "--output", dir.appendingPathComponent("run").path],
            mentioning: "implies")

        // A safetensors entry whose byte count wraps to the 4 bytes present (once a write past a 4-byte buffer).
        let wrapped = try model("gpt2-lm", in: dir)
        try rawSafeTensors(
            header: #"{"a":{"dtype":"F32","shape":[4611686018427387905],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]
        )
        .write(to: wrapped.appendingPathComponent("model.safetensors"))
        try expectRefusal(["info", "--model", wrapped.path], mentioning: "model.safetensors", "bytes for shape")

        // A shard index pointing outside the model directory (once followed to /etc/passwd).
        let sharded = try model("gpt2-lm", in: dir)
        try fm.removeItem(at: sharded.appendingPathComponent("model.safetensors"))
        try JSONSerialization.data(withJSONObject: ["weight_map": ["wte.weight": "../../../../etc/passwd"]])
            .write(to: sharded.appendingPathComponent("model.safetensors.index.json"))
        try expectRefusal(
            ["info", "--model", sharded.path], mentioning: "index.json", "not a file name in the model directory")

        // PyTorch files: a pre-1.6 pickle, and a zip whose pickle nests a million tuples deep.
        let legacy = try model("bert-cls", in: dir)
        try fm.removeItem(at: legacy.appendingPathComponent("model.safetensors"))
        try Data([0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19, 0x2E])
            .write(to: legacy.appendingPathComponent("pytorch_model.bin"))
        try expectRefusal(["info", "--model", legacy.path], mentioning: "pytorch_model.bin", "before PyTorch 1.6")
        try storedZip([
            ("archive/data.pkl", Data([0x80, 0x02, 0x4E] + [UInt8](repeating: 0x85, count: 1_000_000) + [0x2E]))
        ])
        .write(to: legacy.appendingPathComponent("pytorch_model.bin"))
        try expectRefusal(["info", "--model", legacy.path], mentioning: "pytorch_model.bin", "nest more than")
    }

    @Test func inputBatchesTheModelCannotTakeNameTheirFile() throws {
        let dir = try temporaryDirectory()
        defer { try? fm.removeItem(at: dir) }
        let lm = try model("gpt2-lm", in: dir)
        let cases: [(String, [String: IntTensor], String)] = [
            (
                "out-of-range", ["input_ids": try IntTensor(shape: [1, 3], values: [1, 2, 500])],
                "outside the vocabulary"
            ),
            ("rank-3", ["input_ids": try IntTensor(shape: [1, 2, 2], values: [1, 2, 3, 4])], "[batch, length]"),
            (
                "mask",
                [
                    "input_ids": try IntTensor(shape: [1, 3], values: [1, 2, 3]),
                    "attention_mask": try IntTensor(shape: [2, 3], values: [1, 1, 1, 1, 1, 1]),
                ], "attention mask"
            ),
            (
                "too-long", ["input_ids": try IntTensor(shape: [1, 30], values: [Int32](repeating: 1, count: 30))],
                "positions"
            ),
        ]
        for (name, tensors, problem) in cases {
            let inputs = dir.appendingPathComponent("\(name).safetensors")
            try SafeTensorsFile.write([:], integers: tensors, to: inputs.path)
            try expectRefusal(
                [
                    "logits", "--model", lm.path, "--inputs", inputs.path, "--output",
                    dir.appendingPathComponent("o.safetensors").path,
                ],
                mentioning: "\(name).safetensors", problem)
        }
    }

    @Test func malformedTokenizersAreRefusedByName() throws {
        let dir = try temporaryDirectory()
        defer { try? fm.removeItem(at: dir) }
        let bpe = Fixtures.directory.appendingPathComponent("tokenizers/bpe")
        var json = try Checkpoint.readJSON(bpe.appendingPathComponent("tokenizer.json"))
        var model = try #require(json["model"] as? [String: Any])
        var vocab = try #require(model["vocab"] as? [String: Any])
        // An id of 3e9 (once a trap converting to Int32; 2^31 - 1 once cost 34 GB).
        vocab["zz"] = 3_000_000_000
        model["vocab"] = vocab
        json["model"] = model
        try fm.createDirectory(at: dir.appendingPathComponent("big"), withIntermediateDirectories: true)
        let big = dir.appendingPathComponent("big/tokenizer.json")
        try JSONSerialization.data(withJSONObject: json).write(to: big)
        try expectRefusal(
            ["tokenize", "--tokenizer", big.path], stdin: "hello\n", mentioning: "big/tokenizer.json",
            "token 'zz' has id 3000000000")
        // A merge whose result is not in the vocabulary (once encoded silently as id 0).
        vocab["zz"] = nil
        model["vocab"] = vocab
        var merges = try #require(model["merges"] as? [Any])
        merges.append("q z")
        model["merges"] = merges
        json["model"] = model
        try fm.createDirectory(at: dir.appendingPathComponent("missing"), withIntermediateDirectories: true)
        let missing = dir.appendingPathComponent("missing/tokenizer.json")
        try JSONSerialization.data(withJSONObject: json).write(to: missing)
        try expectRefusal(
            ["tokenize", "--tokenizer", missing.path], stdin: "hello\n", mentioning: "missing/tokenizer.json",
            "which is not in the vocabulary")
    }

    @Test func argumentsThatCannotWorkAreRefusedBeforeAnyWork() throws {
        let dir = try temporaryDirectory()
        defer { try? fm.removeItem(at: dir) }
        let lm = try model("gpt2-lm", in: dir), data = dir.appendingPathComponent("train.jsonl")
        try #"{"text": "a b", "label": 1}"#.write(to: data, atomically: true, encoding: .utf8)
        let train = [
            "train", "--model", lm.path, "--train", data.path, "--output", dir.appendingPathComponent("run").path,
        ]
        try expectRefusal(
            ["generate", "--model", lm.path, "--prompt-ids", "1,2", "--max-new-tokens", "9223372036854775807"],
            mentioning: "positions")
        try expectRefusal(train + ["--batch-size", "0"], mentioning: "--batch-size must be positive")
        try expectRefusal(train + ["--accumulation", "0"], mentioning: "--accumulation must be positive")
        try expectRefusal(
            train + ["--batch-size", "4611686018427387904", "--accumulation", "4"], mentioning: "too large to count")
        try expectRefusal(train + ["--eval-every", "0"], mentioning: "--eval-every must be positive")
        try expectRefusal(train + ["--optimizer", "adagrad"], mentioning: "--optimizer must be adamw or sgd")
        try expectRefusal(train + ["--lr", "nan"], mentioning: "--lr must be a finite")
        try expectRefusal(train + ["--max-length=-1"], mentioning: "--max-length must be positive")
        try expectRefusal(train + ["--rank", "0"], mentioning: "--rank must be positive")
        try expectRefusal(
            ["pretrain", data.path, "--context", "0", "--output", dir.appendingPathComponent("pre").path],
            mentioning: "--context must be at least 2")
        try expectRefusal(
            ["fill-mask", "--model", lm.path, "--top-k=-1", "a [MASK]"], mentioning: "--top-k must be at least 1")
        // An integer class label of 2^63 - 1 (once a trap; 10^12 once built 10^12 label names).
        try #"{"text": "a b", "label": 9223372036854775807}"#.write(to: data, atomically: true, encoding: .utf8)
        try expectRefusal(train, mentioning: "train.jsonl", "class index 9223372036854775807")
        try #"{"text": "a b", "label": 1000000000000}"#.write(to: data, atomically: true, encoding: .utf8)
        try expectRefusal(train, mentioning: "train.jsonl", "class index 1000000000000")
    }

    @Test func sizesThatCannotFitAreRefusedWithTheSizeNamed() throws {
        let dir = try temporaryDirectory()
        defer { try? fm.removeItem(at: dir) }
        let bert = try bertWithTokenizer(in: dir)
        let data = dir.appendingPathComponent("train.jsonl")
        try (0..<4).map { #"{"text": "hello world \#($0)", "label": \#($0 % 2)}"# }.joined(separator: "\n").write(
            to: data, atomically: true, encoding: .utf8)
        let train = [
            "train", "--model", bert.path, "--train", data.path, "--output", dir.appendingPathComponent("run").path,
            "--steps", "1",
        ]
        // LoRA A of [10^9, 30] floats, 10^12 virtual tokens: once allocated until the allocator gave up.
        try expectRefusal(train + ["--method", "lora", "--rank", "1000000000"], mentioning: "more than this machine's")
        try expectRefusal(
            train + ["--method", "prefix", "--prefix-length", "1000000000000"], mentioning: "more than this machine's")
        // An output below a regular file cannot be created: a named error, nothing else written.
        let file = dir.appendingPathComponent("plain-file")
        try Data("x".utf8).write(to: file)
        try expectRefusal(
            ["train", "--model", bert.path, "--train", data.path, "--output", file.appendingPathComponent("run").path],
            mentioning: "plain-file")
    }

    @Test func smallButValidRequestsWork() throws {
        let dir = try temporaryDirectory()
        defer { try? fm.removeItem(at: dir) }
        // A context below 48 tokens once trained and saved, then failed at its sample (8 prompt + 40 new tokens).
        let corpus = dir.appendingPathComponent("corpus.txt")
        try String(repeating: "the cat sat on the mat and the dog ran to the cat. ", count: 40).write(
            to: corpus, atomically: true, encoding: .utf8)
        let pre = try reins([
            "pretrain", corpus.path, "--context", "10", "--steps", "2", "--layers", "1", "--hidden", "8", "--heads",
            "2",
            "--batch-size", "2", "--vocabulary-size", "300", "--output", dir.appendingPathComponent("gpt").path,
        ])
        #expect(pre.status == 0 && !pre.signaled, "\(pre.stderr)")
        #expect(pre.stdout.contains("sample:"), "\(pre.stdout)")
        // A blank line in predict's input is skipped, not fatal.
        let bert = try bertWithTokenizer(in: dir)
        let input = dir.appendingPathComponent("in.jsonl")
        try "{\"text\": \"hello\"}\n\n   \n{\"text\": \"world\"}\n".write(to: input, atomically: true, encoding: .utf8)
        let predicted = try reins(["predict", "--model", bert.path, "--input", input.path, "--labels", "a,b,c"])
        #expect(predicted.status == 0, "\(predicted.stderr)")
        #expect(predicted.stdout.split(separator: "\n").count == 2, "\(predicted.stdout)")
    }

    @Test func adapterConfigsThatPEFTRefusesAreRefused() throws {
        let dir = try temporaryDirectory()
        defer { try? fm.removeItem(at: dir) }
        let lm = try model("gpt2-lm", in: dir)
        let inputs = dir.appendingPathComponent("in.safetensors")
        try SafeTensorsFile.write(
            [:], integers: ["input_ids": try IntTensor(shape: [1, 3], values: [1, 2, 3])], to: inputs.path)
        for (change, words) in [
            (["r": 0] as [String: Any], "r is 0"), (["r": -2], "r is -2"),
            (["r": 1_000_000_000_000], "rank 3 in the tensors"),
            (["target_modules": ["nothing_here"]], "match no layer"),
            (["layers_to_transform": [7]], "names layer 7; the model has 2 layers"),
        ] {
            let adapter = dir.appendingPathComponent("adapter-\(UUID().uuidString.prefix(6))")
            try fm.copyItem(at: Fixtures.directory.appendingPathComponent("adapters/gpt2-lora"), to: adapter)
            var config = try Checkpoint.readJSON(adapter.appendingPathComponent("adapter_config.json"))
            for (k, v) in change { config[k] = v }
            try JSONSerialization.data(withJSONObject: config).write(
                to: adapter.appendingPathComponent("adapter_config.json"))
            try expectRefusal(
                [
                    "logits", "--model", lm.path, "--adapter", adapter.path, "--inputs", inputs.path, "--output",
                    dir.appendingPathComponent("o.safetensors").path,
                ],
                mentioning: words)
        }
        try expectRefusal(
            [
                "extract-lora", "--base", lm.path, "--finetuned", lm.path, "--output",
                dir.appendingPathComponent("x").path,
            ], mentioning: "nothing to extract")
    }

    @Test func aGPT2ClassifierTrainsLoRAOnGPT2Targets() throws {
        // `reins train --method lora` on a GPT-2 classifier once picked BERT's query/value targets and failed.
        let dir = try temporaryDirectory()
        defer { try? fm.removeItem(at: dir) }
        let modelDir = dir.appendingPathComponent("gpt2-cls")
        let json: [String: Any] = [
            "model_type": "gpt2", "architectures": ["GPT2ForSequenceClassification"], "vocab_size": 600,
            "n_positions": 32,
            "n_embd": 12, "n_layer": 1, "n_head": 3, "num_labels": 2, "pad_token_id": 0,
        ]
        try GPT2ForSequenceClassification(try GPT2Config(json: json)).save(to: modelDir, config: json)
        for name in ["vocab.json", "merges.txt"] {
            try fm.copyItem(
                at: Fixtures.directory.appendingPathComponent("tokenizers/bpe/\(name)"),
                to: modelDir.appendingPathComponent(name))
        }
        let data = dir.appendingPathComponent("train.jsonl")
        try (0..<6).map { #"{"text": "the \#($0) th", "label": \#($0 % 2)}"# }.joined(separator: "\n").write(
            to: data, atomically: true, encoding: .utf8)
        let o = try reins([
            "train", "--model", modelDir.path, "--train", data.path, "--method", "lora", "--steps", "2", "--batch-size",
            "2",
            "--output", dir.appendingPathComponent("run").path,
        ])
        #expect(o.status == 0 && !o.signaled, "\(o.stderr)")
        #expect(o.stdout.contains("2 updates"), "\(o.stdout)")
        #expect(fm.fileExists(atPath: dir.appendingPathComponent("run/checkpoint/trainer_state.json").path))
    }
}
