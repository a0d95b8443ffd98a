import Foundation
import Reins
import ReinsTestSupport
import Testing

struct ConfigTests {
    /// Integers 0 and 1 are numbers, not booleans (on Linux an NSNumber 1 also casts to Bool).
    @Test func smallIntegersAreNotBooleans() throws {
        let json =
            try JSONSerialization.jsonObject(
                with: Data(
                    #"{"vocab_size": 50, "hidden_size": 8, "num_attention_heads": 1, "num_hidden_layers": 1, "intermediate_size": 16, "pad_token_id": 1, "num_labels": 1, "type_vocab_size": 1, "layer_norm_eps": 1}"#
                        .utf8)) as! [String: Any]
        let c = try BertConfig(json: json)
        #expect(
            c.padTokenID == 1 && c.labelCount == 1 && c.typeCount == 1 && c.heads == 1 && c.layers == 1
                && c.layerNormEpsilon == 1)
        let bad = try JSONSerialization.jsonObject(with: Data(#"{"num_hidden_layers": true}"#.utf8)) as! [String: Any]
        #expect { try BertConfig(json: bad, path: "c.json") } throws: {
            "\($0)" == "c.json: 'num_hidden_layers' is not an integer"
        }
    }
}
