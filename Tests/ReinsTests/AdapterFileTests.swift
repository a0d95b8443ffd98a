import Foundation
import Reins
import ReinsTestSupport
import Testing

struct AdapterFileTests {
    /// Loads a PEFT fixture, saves it with Reins, loads that into a fresh base: same logits, PEFT's key names, and a
    /// file of about 4 bytes per adapter parameter.
    @Test(arguments: [
        ("gpt2-lora", "gpt2-lm", "CAUSAL_LM", [String]()), ("bert-lora", "bert-cls", "SEQ_CLS", ["classifier"]),
        ("gpt2-dora", "gpt2-lm", "CAUSAL_LM", [String]()), ("bert-dora", "bert-cls", "SEQ_CLS", ["classifier"]),
        ("gpt2-prefix", "gpt2-lm", "CAUSAL_LM", [String]()), ("bert-prefix", "bert-cls", "SEQ_CLS", ["classifier"]),
        ("gpt2-ia3", "gpt2-lm", "CAUSAL_LM", [String]()), ("gpt2-prompt", "gpt2-lm", "CAUSAL_LM", [String]()),
        ("bert-prompt", "bert-cls", "SEQ_CLS", ["classifier"]), ("gpt2-ptuning", "gpt2-lm", "CAUSAL_LM", [String]()),
        ("bert-ptuning", "bert-cls", "SEQ_CLS", ["classifier"]),
        ("gpt2-lora-embedding", "gpt2-lm", "CAUSAL_LM", [String]()),
        ("bert-lora-embedding", "bert-cls", "SEQ_CLS", ["classifier"]),
        ("bert-ia3", "bert-cls", "SEQ_CLS", ["classifier"]),
        ("gpt2-prefix-projection", "gpt2-lm", "CAUSAL_LM", [String]()),
        ("bert-prefix-projection", "bert-cls", "SEQ_CLS", ["classifier"]),
        ("gpt2-lora-lm-head", "gpt2-lm", "CAUSAL_LM", [String]()),
        ("bert-loha", "bert-cls", "SEQ_CLS", ["classifier"]),
    ])
    func savedAdaptersRoundTripInPEFTLayout(adapter: String, base: String, task: String, heads: [String]) throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let first = try PretrainedModel.load(directory: Fixtures.model(base)).module
        try PEFTAdapter.load(directory: LoRATests.adapter(adapter), into: first)
        try PEFTAdapter.save(first, to: dir, taskType: task, modulesToSave: heads)
        if let keep = ProcessInfo.processInfo.environment["REINS_SAVE_ADAPTERS"] {  // for check_reins_adapters_in_peft.py
            try PEFTAdapter.save(
                first, to: URL(fileURLWithPath: keep).appendingPathComponent(adapter), taskType: task,
                modulesToSave: heads)
        }
        let second = try PretrainedModel.load(directory: Fixtures.model(base))
        try PEFTAdapter.load(directory: dir, into: second.module)
        let io = try SafeTensorsFile(
            path: LoRATests.adapter(adapter).appendingPathComponent("expected.safetensors").path)
        let logits = try LoRATests.fixtureLogits(second, io)
        expectClose(logits, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4, "\(adapter) after save and load")
        let ours = try SafeTensorsFile(path: dir.appendingPathComponent("adapter_model.safetensors").path)
        let peft = try SafeTensorsFile(
            path: LoRATests.adapter(adapter).appendingPathComponent("adapter_model.safetensors").path)
        // PEFT also saves a targeted output layer's (unchanged) base weight, `lm_head.base_layer.weight`; Reins does not.
        #expect(
            Set(ours.names) == Set(peft.names.filter { !$0.hasSuffix("lm_head.base_layer.weight") }), "PEFT's key names"
        )
        let parameters = ours.entries.values.map { $0.shape.reduce(1, *) }.reduce(0, +)
        let bytes =
            try FileManager.default.attributesOfItem(
                atPath: dir.appendingPathComponent("adapter_model.safetensors").path)[.size] as! Int
        #expect(bytes < 4 * parameters + 4096, "\(bytes) bytes for \(parameters) parameters")
    }
}
