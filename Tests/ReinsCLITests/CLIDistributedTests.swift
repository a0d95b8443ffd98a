import Foundation
import Reins
import ReinsTensor
import ReinsTestSupport
import Testing

/// `mpirun -np 2 reins train ... --distributed` on loopback, as a user runs it: two processes against one process with
/// gradient accumulation 2 over the same global batches, and a rank killed mid-run. Needs Open MPI's `mpirun`
/// (Debian openmpi-bin, which .ci/install-deps installs); as root it needs `--allow-run-as-root`, and on a 2-core
/// machine `--oversubscribe`.
@Suite(.serialized) struct CLIDistributedTests {
    static var mpirun: URL {
        get throws {
            for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":") {
                let url = URL(fileURLWithPath: String(dir)).appendingPathComponent("mpirun")
                if FileManager.default.isExecutableFile(atPath: url.path) { return url }
            }
            throw CocoaError(
                .fileNoSuchFile,
                userInfo: [NSLocalizedDescriptionKey: "no mpirun on PATH: install openmpi-bin (bash .ci/install-deps)"])
        }
    }

    /// A started command whose output goes to files.
    struct Running {
        let process: Process
        let stdout: URL, stderr: URL
        var output: String {
            (try? String(contentsOf: stdout, encoding: .utf8)) ?? ""
        }
        var errors: String { (try? String(contentsOf: stderr, encoding: .utf8)) ?? "" }
    }

    /// Starts `reins arguments`, under `mpirun -np processes` when `processes` is given.
    func start(_ arguments: [String], processes: Int?, in dir: URL, tag: String) throws -> Running {
        let process = Process()
        if let processes {
            process.executableURL = try Self.mpirun
            process.arguments =
                ["--allow-run-as-root", "--oversubscribe", "-np", String(processes), try CLIMalformedInputTests.tool.path]
                + arguments
        } else {
            process.executableURL = try CLIMalformedInputTests.tool
            process.arguments = arguments
        }
        var environment = ProcessInfo.processInfo.environment
        // Under the sanitizer runs of the suite the tool is instrumented too; Open MPI's own start-up allocations are
        // not ours to report as leaks.
        environment["ASAN_OPTIONS"] = "detect_leaks=0"
        environment["REINS_THREADS"] = "1"
        environment["OPENBLAS_NUM_THREADS"] = "1"
        process.environment = environment
        let (out, err) = (dir.appendingPathComponent("\(tag).out"), dir.appendingPathComponent("\(tag).err"))
        for url in [out, err] { try Data().write(to: url) }
        process.standardOutput = try FileHandle(forWritingTo: out)
        process.standardError = try FileHandle(forWritingTo: err)
        try process.run()
        return Running(process: process, stdout: out, stderr: err)
    }

    /// Runs to the end (at most `timeout` seconds) and expects exit status 0.
    @discardableResult
    func run(_ arguments: [String], processes: Int?, in dir: URL, tag: String, timeout: Double = 300) throws -> Running {
        let r = try start(arguments, processes: processes, in: dir, tag: tag)
        let begun = Date()
        while r.process.isRunning && Date().timeIntervalSince(begun) < timeout { usleep(20_000) }
        if r.process.isRunning { r.process.terminate() }
        r.process.waitUntilExit()
        #expect(r.process.terminationStatus == 0, "\(tag) exited \(r.process.terminationStatus): \(r.errors)")
        return r
    }

    /// The fixture BERT with a word-piece vocabulary, and 24 training and 7 evaluation sentences of its words.
    func bertTask(in dir: URL) throws -> (model: URL, train: URL, eval: URL) {
        let model = try CLIMalformedInputTests().bertWithTokenizer(in: dir)
        let words = try String(contentsOf: model.appendingPathComponent("vocab.txt"), encoding: .utf8)
            .split(separator: "\n").filter { $0.allSatisfy(\.isLetter) }.prefix(40).map(String.init)
        func lines(_ count: Int, offset: Int) -> String {
            (0..<count).map { i in
                let text = (0..<(3 + i % 5)).map { words[(i * 7 + $0 * 3 + offset) % words.count] }.joined(separator: " ")
                return #"{"text": "\#(text)", "label": \#(i % 3)}"#
            }.joined(separator: "\n")
        }
        let (train, eval) = (dir.appendingPathComponent("train.jsonl"), dir.appendingPathComponent("eval.jsonl"))
        try lines(24, offset: 0).write(to: train, atomically: true, encoding: .utf8)
        try lines(7, offset: 5).write(to: eval, atomically: true, encoding: .utf8)
        return (model, train, eval)
    }

    /// The fixture GPT-2 (97 tokens) with a byte-level vocabulary of its 97 first symbols (no merges), and letter
    /// strings to model.
    func gpt2Task(in dir: URL) throws -> (model: URL, data: URL) {
        let model = dir.appendingPathComponent("gpt2")
        try FileManager.default.copyItem(at: Fixtures.model("gpt2-lm"), to: model)
        let vocabulary = try JSONSerialization.jsonObject(
            with: Data(contentsOf: Fixtures.directory.appendingPathComponent("tokenizers/bpe/vocab.json")))
        let kept = (vocabulary as? [String: Int] ?? [:]).filter { $0.value < 97 }
        try JSONSerialization.data(withJSONObject: kept).write(to: model.appendingPathComponent("vocab.json"))
        try Data("#version: 0.2\n".utf8).write(to: model.appendingPathComponent("merges.txt"))
        let letters = Array("abcdefghij")
        let data = dir.appendingPathComponent("lm.jsonl")
        try (0..<20).map { i in
            #"{"text": "\#(String((0..<(4 + i % 5)).map { letters[(i * 3 + $0 * 7) % letters.count] }))"}"#
        }.joined(separator: "\n").write(to: data, atomically: true, encoding: .utf8)
        return (model, data)
    }

    /// The trained tensors of a checkpoint's state file at `step`.
    func state(_ output: URL, step: Int) throws -> [String: [Float]] {
        let file = try SafeTensorsFile(
            path: output.appendingPathComponent("checkpoint/training_state-\(step).safetensors").path)
        var tensors: [String: [Float]] = [:]
        for name in file.entries.keys where name.hasPrefix("param.") { tensors[name] = try file.tensor(name).scalars }
        return tensors
    }

    @Test func twoProcessesEndWhereOneWithAccumulationTwoEnds() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        // LoRA on BERT, AdamW: the two runs' checkpoints are the same bytes.
        let bert = try bertTask(in: dir)
        let common = [
            "train", "--model", bert.model.path, "--train", bert.train.path, "--eval", bert.eval.path, "--method", "lora",
            "--steps", "4", "--batch-size", "3", "--eval-every", "2",
        ]
        let (two, one) = (dir.appendingPathComponent("lora-2"), dir.appendingPathComponent("lora-1"))
        let distributed = try run(common + ["--output", two.path, "--distributed"], processes: 2, in: dir, tag: "lora2")
        try run(common + ["--output", one.path, "--accumulation", "2"], processes: nil, in: dir, tag: "lora1")
        #expect(distributed.output.contains("4 updates of 6 (2 processes × 1 micro-batches × 3 examples)"))
        let (a, b) = (
            try Data(contentsOf: two.appendingPathComponent("checkpoint/training_state-4.safetensors")),
            try Data(contentsOf: one.appendingPathComponent("checkpoint/training_state-4.safetensors"))
        )
        #expect(a == b, "two processes and one with accumulation 2 ended with different LoRA weights")
        // Only process 0 logged: one line per update.
        let log = try String(contentsOf: two.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        #expect(log.split(separator: "\n").count == 4)

        // Full fine-tuning of GPT-2, SGD: within 1e-5 relative (its tied embedding's two gradient additions per pass
        // are added in another order across processes than across micro-batches).
        let gpt2 = try gpt2Task(in: dir)
        let lm = [
            "train", "--model", gpt2.model.path, "--task", "causal-lm", "--train", gpt2.data.path, "--method", "full",
            "--optimizer", "sgd", "--lr", "0.05", "--steps", "3", "--batch-size", "2",
        ]
        let (full2, full1) = (dir.appendingPathComponent("full-2"), dir.appendingPathComponent("full-1"))
        try run(lm + ["--output", full2.path, "--distributed"], processes: 2, in: dir, tag: "full2")
        try run(lm + ["--output", full1.path, "--accumulation", "2"], processes: nil, in: dir, tag: "full1")
        let (x, y) = (try state(full2, step: 3), try state(full1, step: 3))
        #expect(x.keys.sorted() == y.keys.sorted() && !x.isEmpty)
        var difference = 0.0, norm = 0.0
        for (name, values) in y {
            for (p, q) in zip(values, x[name] ?? []) {
                difference += Double(p - q) * Double(p - q)
                norm += Double(p) * Double(p)
            }
        }
        let relative = (difference / max(norm, 1e-30)).squareRoot()
        #expect(relative <= 1e-5, "full fine-tuning: relative difference \(relative)")
    }

    @Test func aKilledRankEndsTheJobAndResumeContinuesFromTheCheckpoint() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let bert = try bertTask(in: dir)
        let output = dir.appendingPathComponent("run")
        let arguments = [
            "train", "--model", bert.model.path, "--train", bert.train.path, "--method", "lora", "--steps", "200",
            "--batch-size", "3", "--checkpoint-every", "5", "--output", output.path, "--distributed",
        ]
        let job = try start(arguments, processes: 2, in: dir, tag: "killed")
        // Wait for a checkpoint past update 10, then kill rank 1 (found by the rank Open MPI gives it).
        let manifest = output.appendingPathComponent("checkpoint/trainer_state.json")
        let begun = Date()
        func checkpointStep() -> Int {
            guard let data = try? Data(contentsOf: manifest),
                let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
            else { return 0 }
            return json["step"] as? Int ?? 0
        }
        while checkpointStep() < 10 && job.process.isRunning && Date().timeIntervalSince(begun) < 120 { usleep(10_000) }
        #expect(job.process.isRunning, "the run ended before it could be killed: \(job.errors)")
        var killed: Int32? = nil
        for pid in childProcesses(of: job.process.processIdentifier) where rank(of: pid) == 1 {
            kill(pid, SIGKILL)
            killed = pid
        }
        #expect(killed != nil, "no process of rank 1 under mpirun")
        let killedAt = Date()
        while job.process.isRunning && Date().timeIntervalSince(killedAt) < 30 { usleep(20_000) }
        let seconds = Date().timeIntervalSince(killedAt)
        let stillRunning = job.process.isRunning
        if stillRunning { job.process.terminate() }
        job.process.waitUntilExit()
        #expect(!stillRunning && seconds < 30, "the job went on \(seconds) s after rank 1 was killed")
        #expect(job.process.terminationStatus != 0)
        let said = job.output + job.errors
        #expect(said.contains("rank 1"), "no message naming rank 1: \(said)")

        // --resume continues from the last checkpoint and ends where an uninterrupted run ends.
        let stoppedAt = checkpointStep()
        #expect(stoppedAt >= 10 && stoppedAt < 200)
        let resumed = try run(arguments + ["--resume"], processes: 2, in: dir, tag: "resumed")
        #expect(resumed.output.contains("Resumed at update \(stoppedAt) of 200"), "\(resumed.output)")
        let whole = dir.appendingPathComponent("whole")
        var uninterrupted = arguments
        uninterrupted[uninterrupted.firstIndex(of: output.path)!] = whole.path
        try run(uninterrupted, processes: 2, in: dir, tag: "whole")
        let (a, b) = (
            try Data(contentsOf: output.appendingPathComponent("checkpoint/training_state-200.safetensors")),
            try Data(contentsOf: whole.appendingPathComponent("checkpoint/training_state-200.safetensors"))
        )
        #expect(a == b, "the killed and resumed run ended elsewhere than an uninterrupted one")
    }

    /// The processes whose parent is `pid` (from /proc).
    func childProcesses(of pid: Int32) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { child in
            guard let stat = try? String(contentsOfFile: "/proc/\(child)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return false }
            // After "pid (name)": state, then the parent's pid.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 1 && Int32(fields[1]) == pid
        }
    }

    /// The MPI rank Open MPI gave process `pid` (its OMPI_COMM_WORLD_RANK), if any.
    func rank(of pid: Int32) -> Int? {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return nil }
        for entry in data.split(separator: 0) {
            let text = String(decoding: entry, as: UTF8.self)
            if text.hasPrefix("OMPI_COMM_WORLD_RANK=") { return Int(text.dropFirst("OMPI_COMM_WORLD_RANK=".count)) }
        }
        return nil
    }
}
