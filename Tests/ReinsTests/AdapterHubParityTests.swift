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
        let ids = try io.intTensor("input_ids"), mask = try io.intTensor("attention_mask"), types = try io.intTensor("token_type_ids")
        let base = try model.logits(ids, attentionMask: mask, tokenTypeIDs: types)
        try model.loadAdapter("hub", from: dir)
        let expected = try io.tensor("logits")
        expectClose(try model.logits(ids, attentionMask: mask, tokenTypeIDs: types), expected, atol: 1e-4, rtol: 1e-4, "\(name) logits")
        #expect(zip(base.scalars, expected.scalars).contains { abs($0 - $1) > 1e-2 }, "the adapter changes the logits")
        // Round trip through Reins's own file keeps the behaviour (non-linearity and what the adapter reads).
        let out = try temporaryDirectory()
        try model.saveAdapter("hub", to: out)
        let again = try BottleneckAdapterTests().bert()
        try again.loadAdapter("hub", from: out)
        expectClose(try again.logits(ids, attentionMask: mask, tokenTypeIDs: types), expected, atol: 1e-4, rtol: 1e-4, "\(name) after save and load")
    }
}
