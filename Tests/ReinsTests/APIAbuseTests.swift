import Foundation
import Reins
import ReinsTensor
import ReinsTestSupport
import Testing

/// The public model API called with every kind of bad argument a caller can pass — empty, wrong rank, ids out of
/// range, masks and token types of the wrong shape or values, positions outside the sequence — on both model
/// families. Each call must return or throw; a trap would end the test run.
struct APIAbuseTests {
    static let idShapes: [[Int]] = [[0, 0], [0, 3], [2, 0], [1], [1, 2, 3], [2, 3], [1, 30]]
    static let badValues: [Int32] = [-1, 97, 98, 30_000, .max, .min]

    func ids(_ shape: [Int], value: Int32 = 5) -> IntTensor? {
        try? IntTensor(shape: shape, values: [Int32](repeating: value, count: shape.reduce(1, *)))
    }

    /// Every combination of an id tensor with an optional mask / token types of assorted shapes and values.
    func inputs() -> [(ids: IntTensor, mask: IntTensor?, types: IntTensor?)] {
        var out: [(IntTensor, IntTensor?, IntTensor?)] = []
        for shape in Self.idShapes {
            guard let good = ids(shape) else { continue }
            out.append((good, nil, nil))
            for v in Self.badValues { if let bad = ids(shape, value: v) { out.append((bad, nil, nil)) } }
            for maskShape in [shape, [1, 1], [2, 5], [0]] {
                for m in [Int32(0), 1, 2, -1] {
                    if let mask = ids(maskShape, value: m) { out.append((good, mask, nil)) }
                }
            }
            for t in [Int32(0), 1, 2, -1, .max] {
                if let types = ids(shape, value: t) { out.append((good, nil, types)) }
            }
            if let types = ids([3, 1]) { out.append((good, nil, types)) }
        }
        return out
    }

    @Test func gpt2CallsWithBadArgumentsThrowOrReturn() throws {
        let lm = try BottleneckAdapterTests().gpt2()
        var thrown = 0
        for (x, mask, types) in inputs() {
            do { _ = try lm.logits(x, attentionMask: mask, tokenTypeIDs: types) } catch { thrown += 1 }
            do { _ = try lm.loss(x, attentionMask: mask) } catch { thrown += 1 }
            do { _ = try lm.loss(x, labels: types) } catch { thrown += 1 }
            do { _ = try lm.logits(x, positionIDs: types) } catch { thrown += 1 }
            for positions in [[], [0], [-1], [Int.max], [0, 0]] {
                do { _ = try lm.transformer.hiddenStates(x, at: positions, attentionMask: mask) } catch { thrown += 1 }
            }
        }
        for prompts in [[], [[]], [[1], []], [[-1]], [[97]], [[Int32.max]], [[1, 2], [3]]] as [[[Int32]]] {
            for options in [
                GenerationOptions(maxNewTokens: 3), GenerationOptions(maxNewTokens: -1),
                GenerationOptions(maxNewTokens: 3, padID: -7),
                GenerationOptions(maxNewTokens: 3, greedy: false, temperature: 0),
                GenerationOptions(maxNewTokens: 3, greedy: false, topK: 0),
                GenerationOptions(maxNewTokens: 3, greedy: false, topP: 0),
                GenerationOptions(maxNewTokens: 3, greedy: false, topP: .nan),
                GenerationOptions(maxNewTokens: 3, repetitionPenalty: 0),
                GenerationOptions(maxNewTokens: 3, stopTokens: [-1, 500]),
            ] {
                do { _ = try lm.generate(prompts: prompts, options: options) } catch { thrown += 1 }
            }
        }
        #expect(thrown > 0)
    }

    @Test func bertCallsWithBadArgumentsThrowOrReturn() throws {
        let classifier = try BottleneckAdapterTests().bert()
        var thrown = 0
        for (x, mask, types) in inputs() {
            do { _ = try classifier.logits(x, attentionMask: mask, tokenTypeIDs: types) } catch { thrown += 1 }
            do { _ = try classifier.bert.hiddenStates(x, attentionMask: mask, tokenTypeIDs: types) } catch {
                thrown += 1
            }
            do { _ = try classifier.bert.firstHiddenState(x, attentionMask: mask, tokenTypeIDs: types) } catch {
                thrown += 1
            }
            if let mask {
                do { _ = try classifier.bert.sentenceEmbeddings(x, attentionMask: mask, tokenTypeIDs: types) } catch {
                    thrown += 1
                }
            }
        }
        for shape in [[0], [2, 0, 30], [1, 1, 5], [2, 3, 30], [0, 0, 0]] {
            do { _ = try classifier.bert.pooled(try Tensor.zeros(shape)) } catch { thrown += 1 }
        }
        #expect(thrown > 0)
    }

    @Test func tokenizersWithBadOptionsThrowOrReturn() throws {
        let wordpiece = try WordPieceTokenizer(
            vocabularyFile: Fixtures.directory.appendingPathComponent("tokenizers/wordpiece/vocab.txt").path)
        for maxLength in [nil, 0, 1, 2, 3, -1, .max] as [Int?] {
            for padding in [EncodingOptions.Padding.none, .longest, .maxLength] {
                let options = EncodingOptions(maxLength: maxLength, padding: padding)
                _ = try? wordpiece.encode("hello world", pair: "and more", options: options)
                _ = try? wordpiece.encodeBatch(["a", "hello world again", ""], pairs: ["x"], options: options)
                _ = try? wordpiece.encodeBatch([], options: options)
            }
        }
        _ = wordpiece.decode([-1, 0, 5, .max, .min])
        let bpe = Fixtures.directory.appendingPathComponent("tokenizers/bpe")
        let gpt = try BPETokenizer(
            vocabularyFile: bpe.appendingPathComponent("vocab.json").path,
            mergesFile: bpe.appendingPathComponent("merges.txt").path)
        _ = gpt.decode([-1, 0, .max, .min])
        _ = gpt.encodeBatch([], padID: -1)
        _ = gpt.encodeBatch(["", "a"], padID: .max, leftPadding: false)
    }
}
