import Foundation
import Reins
import ReinsTensor
import ReinsTestSupport
import Testing

/// Bottleneck adapters trained with the `adapters` library (AdapterHub) give that library's logits in Reins
/// (Tests/Fixtures/make_adapters_library_fixtures.py): Houlsby (swish, after attention and after the FFN) and Pfeiffer
/// (relu, after the FFN, reading the block's norm of output + residual).
struct AdapterHubParityTests {
    @Test(arguments: ["bert-houlsby-adapterhub", "bert-pfeiffer-adapterhub"])
    func logitsMatchTheAdaptersLibrary(name: String) throws {
        let dir = Fixtures.directory.appendingPathComponent("adapters/\(name)")
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        let model = try BottleneckAdapterTests().bert()
        let ids = try io.intTensor("input_ids"), mask = try io.intTensor("attention_mask"),
            types = try io.intTensor("token_type_ids")
        let base = try model.logits(ids, attentionMask: mask, tokenTypeIDs: types)
        try model.loadAdapter("hub", from: dir)
        let expected = try io.tensor("logits")
        expectClose(
            try model.logits(ids, attentionMask: mask, tokenTypeIDs: types), expected, atol: 1e-4, rtol: 1e-4,
            "\(name) logits")
        #expect(zip(base.scalars, expected.scalars).contains { abs($0 - $1) > 1e-2 }, "the adapter changes the logits")
        // Round trip through Reins's own file keeps the behaviour (non-linearity and what the adapter reads).
        let out = try temporaryDirectory()
        try model.saveAdapter("hub", to: out)
        let again = try BottleneckAdapterTests().bert()
        try again.loadAdapter("hub", from: out)
        expectClose(
            try again.logits(ids, attentionMask: mask, tokenTypeIDs: types), expected, atol: 1e-4, rtol: 1e-4,
            "\(name) after save and load")
    }

    /// `hub` is saved with use_safetensors=True; `hub-pickled` as save_adapter's default writes it (pytorch_adapter.bin,
    /// pytorch_model_head.bin: torch.save files, read without running them).
    @Test(arguments: [
        ("bert-houlsby-adapterhub", "hub"), ("bert-pfeiffer-adapterhub", "hub"),
        ("bert-houlsby-adapterhub", "hub-pickled"),
    ])
    func theLibrarysOwnDirectoryLoads(name: String, saved: String) throws {
        let dir = Fixtures.directory.appendingPathComponent("adapters/\(name)")
        let io = try SafeTensorsFile(path: dir.appendingPathComponent("expected.safetensors").path)
        let model = try BottleneckAdapterTests().bert()
        try model.loadAdapter("hub", from: dir.appendingPathComponent(saved))
        #expect(model.heads.variants["hub"] != nil, "the head from the saved model head")
        let logits = try model.logits(
            try io.intTensor("input_ids"), attentionMask: try io.intTensor("attention_mask"),
            tokenTypeIDs: try io.intTensor("token_type_ids"))
        expectClose(
            logits, try io.tensor("logits"), atol: 1e-4, rtol: 1e-4,
            "\(name) from the adapters library's \(saved) directory")
        // Options Reins does not have are refused by name.
        let bad = try temporaryDirectory()
        var config = try Checkpoint.readJSON(dir.appendingPathComponent("hub/adapter_config.json"))
        var inner = config["config"] as! [String: Any]
        inner["use_gating"] = true
        config["config"] = inner
        try JSONSerialization.data(withJSONObject: config).write(to: bad.appendingPathComponent("adapter_config.json"))
        #expect { try model.loadAdapter("bad", from: bad) } throws: { "\($0)".contains("use_gating=true") }
    }
}
