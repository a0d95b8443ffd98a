import ArgumentParser
import Foundation

@main
struct ReinsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reins",
        abstract:
            "Steer pretrained language models on the CPU: fine-tune them, or train small adapters on one frozen base.",
        subcommands: [
            InfoCommand.self, TokenizeCommand.self, GenerateCommand.self, ChatCommand.self, FillMaskCommand.self,
            EmbedCommand.self,
            LogitsCommand.self, AdaptersCommand.self, ExtractLoRACommand.self, KernelsCommand.self, BenchCommand.self,
            DemoCommand.self, TrainCommand.self, EvalCommand.self, PredictCommand.self, TokenizerCommand.self,
            PretrainCommand.self, PlotCommand.self, QuantizeCommand.self, ServeCommand.self,
        ]
    )

    static func main() {
        shortenOpenBLASSpinning()
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            // One line for a failure, naming the file and the problem (ArgumentParser would add its usage text to
            // argument errors); help and version requests print in full.
            let code = exitCode(for: error)
            guard code != .success else { exit(withError: error) }
            let lines = fullMessage(for: error).split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
                .filter { !$0.isEmpty }
            var message = lines.first ?? "\(error)"
            if !message.hasPrefix("Error:") { message = "Error: " + message }
            FileHandle.standardError.write(Data((message + "\n").utf8))
            Foundation.exit(code.rawValue)
        }
    }

    /// OpenBLAS's idle worker threads spin (sched_yield) for about 2^28 cycles after each GEMM before sleeping; between
    /// GEMMs Reins runs its own kernels on every core, and the spinning threads take about 10% of a training step from
    /// them on 2 cores (perf: __schedule from sched_yield). OpenBLAS reads OPENBLAS_THREAD_TIMEOUT only when the
    /// library loads, before main, so the tool sets it (2^4 cycles) and re-executes itself once. A value already set by
    /// the user is left alone; if re-executing fails, the tool simply runs as it is.
    static func shortenOpenBLASSpinning() {
        #if os(Linux)
            guard getenv("OPENBLAS_THREAD_TIMEOUT") == nil else { return }
            setenv("OPENBLAS_THREAD_TIMEOUT", "4", 1)
            execv("/proc/self/exe", CommandLine.unsafeArgv)
        #endif
    }
}

/// A failure in `body` reported as a problem of the file at `path` (prefixed with it, unless the message names it).
struct FileProblem: Error, CustomStringConvertible {
    let description: String
}

func naming<R>(_ path: String, _ body: () throws -> R) throws -> R {
    do { return try body() } catch {
        let message = "\(error)"
        throw message.contains(path) ? error : FileProblem(description: "\(path): \(message)")
    }
}
