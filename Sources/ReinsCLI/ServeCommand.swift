import ArgumentParser
import Dispatch
import Foundation
import Logging
import Reins
import ReinsServer

/// `reins serve`: one base model and a folder of adapters behind OpenAI-compatible HTTP endpoints.
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve one base model and its adapters over HTTP with OpenAI-compatible endpoints.",
        discussion: """
            Endpoints: GET /v1/models (the base and every adapter), POST /v1/completions and /v1/chat/completions (the
            request's "model" names an adapter or the base; "stream": true for server-sent events), POST /v1/embeddings
            (mean of the final hidden states), POST /v1/classify (sequence- and token-classification and question-answering
            adapters: PEFT's SEQ_CLS, TOKEN_CLS and QUESTION_ANS), POST /v1/adapters {"name", "path"} and DELETE /v1/adapters/NAME to load
            and unload adapters at run time, GET /metrics (Prometheus), GET /health. Requests for different adapters are
            decoded together in one continuous batch on the one base.
            """
    )

    @Option(help: "A Llama-family or GPT-2 model directory (with tokenizer.json and a chat template) or a .gguf file.")
    var model: String
    @Option(help: "A folder whose subfolders are adapters (PEFT's or Reins's layout), each served under its folder's name.")
    var adapters: String?
    @Option(help: "The name the base answers to in the API's model field (default: the model's file or folder name).")
    var name: String?
    @Option(help: "The address to listen on.") var host = "127.0.0.1"
    @Option(help: "The port (0: any free one).") var port = 8080
    @Option(help: "Requests decoded together.") var maxBatch = 16
    @Option(help: "Requests waiting for a place in the batch; more get 503.") var maxQueue = 64
    @Option(help: "The most new tokens a request may ask for.") var maxTokens = 1024
    @Option(help: "The most prompt tokens a request may bring.") var maxPromptTokens = 4096
    @Option(help: "The most padded tokens (inputs × the longest) an embeddings or classify request may bring.")
    var maxBatchTokens = 16384
    @Option(help: "The largest request body, in bytes.") var maxBody = 1 << 20
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.") var logLevel = "info"
    @Flag(help: "For a GGUF model: compute with the dequantized weights in float32.") var exact = false
    @Option(help: "LoRA weights while decoding: int4 (4-bit copies with a scale per group of 32: a sixth of the adapter bytes a step reads), int8 (8-bit copies with a scale per row: a quarter), half (copies in IEEE half precision: half the bytes), float (float32: each request's tokens those it gets alone), or auto: int8 over a GGUF file's quantized weights (whose own rounding moves the logits ~85x more), half otherwise.")
    var loraPrecision = "auto"
    @Option(help: "Megabytes of prompts' keys and values kept (all adapters together), so that a request whose prompt starts as an earlier one's (a shared system prompt, chat template or few-shot examples) does not compute that start again; 0 keeps none.")
    var promptCacheMb = 256
    @Option(help: ArgumentHelp(
        "Rows per thread from which a decoding step runs as one lane per thread, each a whole pass over the base for"
            + " its own rows on its own core (rather than every product shared out over the cores); 0: never."))
    var laneRows = ContinuousBatch.defaultLaneRows

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be within 0...65535, got \(port)") }
        for (flag, v) in [("--max-batch", maxBatch), ("--max-queue", maxQueue), ("--max-tokens", maxTokens),
                          ("--max-prompt-tokens", maxPromptTokens), ("--max-body", maxBody),
                          ("--max-batch-tokens", maxBatchTokens)] where v <= 0 {
            throw ValidationError("\(flag) must be positive, got \(v)")
        }
        guard laneRows >= 0 else { throw ValidationError("--lane-rows must not be negative, got \(laneRows)") }
        guard (0...(1 << 20)).contains(promptCacheMb) else {
            throw ValidationError("--prompt-cache-mb must be within 0...\(1 << 20), got \(promptCacheMb)")
        }
        guard ["auto", "float"].contains(loraPrecision) || LoRACopies.Precision(rawValue: loraPrecision) != nil else {
            throw ValidationError("--lora-precision \(loraPrecision): auto, int4, int8, half or float")
        }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level \(logLevel): trace, debug, info, notice, warning, error or critical") }
    }

    func run() throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let dir = URL(fileURLWithPath: model)
        let lm = try loadCausalLanguageModel(dir, exact: exact)
        let format = try naming(dir.path) { try ChatFormat(directory: dir) }
        let baseName = name ?? dir.deletingPathExtension().lastPathComponent
        let served = ServedModel(model: lm, format: format, baseName: baseName)
        lm.freeze()
        let loaded = try adapters.map { try served.loadAdapters(from: URL(fileURLWithPath: $0)) } ?? []
        var options = ServerOptions()
        (options.host, options.port, options.batchCapacity, options.queueLimit) = (host, port, maxBatch, maxQueue)
        (options.maxTokens, options.maxPromptTokens, options.maxBodyBytes) = (maxTokens, maxPromptTokens, maxBody)
        options.maxBatchTokens = maxBatchTokens
        options.promptCacheBytes = promptCacheMb << 20
        options.laneRows = laneRows
        if loraPrecision == "auto" {
            // The integer route (quantized weights, activations rounded to 8 bits) is what `--exact` turns off.
            let integer = !exact && lm.namedModules().contains { ($0.module as? Linear)?.quantizedWeight != nil }
            options.loraPrecision = integer ? .int8 : .half
        } else {
            options.loraPrecision = LoRACopies.Precision(rawValue: loraPrecision)
        }
        let server = try ReinsServer(served: served, options: options)
        let host = self.host
        let app = server.application { port in
            let line = "Serving \(baseName) with \(loaded.count) adapters (\(loaded.joined(separator: ", "))) on http://\(host):\(port)/v1\n"
            FileHandle.standardOutput.write(Data(line.utf8))
        }
        let done = DispatchSemaphore(value: 0)
        let failure = Failure()
        Task {
            do { try await app.runService() } catch { failure.error = error }
            done.signal()
        }
        done.wait()
        server.engine.stop()
        if let error = failure.error { throw error }
    }

    final class Failure: @unchecked Sendable { var error: (any Error)? }
}
