import Foundation
import Reins
import ReinsTensor
import ReinsTestSupport
import Testing

/// The CLI contract on Llama-family checkpoints, run as a user runs the tool: `reins logits` (left-padded batch, with
/// and without a PEFT adapter) gives transformers' / PEFT's logits, `reins generate --prompt-ids --greedy
/// --print-ids` transformers' greedy ids, `reins info` describes the model.
struct CLILlamaTests {
    let cli = CLIMalformedInputTests()

    @Test(arguments: [
        ("llama-tiny", nil), ("qwen2-tiny", nil), ("mistral-tiny", nil), ("llama-cls", nil),
        ("llama-tiny", "llama-lora"), ("llama-tiny", "llama-prefix"),
    ] as [(String, String?)])
    func logitsThroughTheTool(model: String, adapter: String?) throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let expectedFile =
            adapter.map { Fixtures.directory.appendingPathComponent("adapters/\($0)/io.safetensors") }
            ?? Fixtures.model(model).appendingPathComponent("io.safetensors")
        let out = dir.appendingPathComponent("out.safetensors")
        var arguments = [
            "logits", "--model", Fixtures.model(model).path, "--inputs", expectedFile.path, "--output", out.path,
        ]
        if let adapter { arguments += ["--adapter", Fixtures.directory.appendingPathComponent("adapters/\(adapter)").path] }
        let o = try cli.reins(arguments)
        #expect(o.status == 0, "\(o.stderr)")
        let expected = try SafeTensorsFile(path: expectedFile.path).tensor("logits")
        expectClose(try SafeTensorsFile(path: out.path).tensor("logits"), expected, atol: 2e-4, rtol: 1e-4, "\(model)")
    }

    @Test(arguments: ["llama-tiny", "qwen2-tiny", "mistral-tiny"])
    func greedyIdsThroughTheTool(model: String) throws {
        let io = try SafeTensorsFile(path: Fixtures.model(model).appendingPathComponent("io.safetensors").path)
        let generated = try io.intTensor("generated"), prompts = try io.intTensor("prompts")
        let (L, total) = (prompts.shape[1], generated.shape[1])
        // Row 0 is unpadded: its prompt and transformers' continuation.
        let prompt = prompts.values[0..<L].filter { $0 >= 0 }
        let o = try cli.reins([
            "generate", "--model", Fixtures.model(model).path, "--prompt-ids",
            prompt.map(String.init).joined(separator: ","), "--max-new-tokens", String(total - L), "--greedy",
            "--print-ids", "--stop-id=-1",  // no stop token: the fixture generated without one
        ])
        #expect(o.status == 0, "\(o.stderr)")
        let last = o.stdout.split(separator: "\n").last.map(String.init) ?? ""
        #expect(last == "[" + generated.values[0..<total].map(String.init).joined(separator: ", ") + "]", "\(model)")
    }

    @Test func infoDescribesGroupedQueryAttention() throws {
        let o = try cli.reins(["info", "--model", Fixtures.model("llama-tiny").path])
        #expect(o.status == 0, "\(o.stderr)")
        #expect(o.stdout.contains("6 query heads, 2 key/value heads"), "\(o.stdout)")
        #expect(o.stdout.contains("llama3 scaling"), "\(o.stdout)")
    }
}
