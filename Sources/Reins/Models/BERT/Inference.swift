import Foundation
import ReinsTensor

extension BertModel {
    /// Sentence embeddings as sentence-transformers computes them for MiniLM-style models: the last hidden states
    /// averaged over real tokens (mask 1), then scaled to unit length.
    /// - Parameters:
    ///   - ids, attentionMask: `[B, T]`.
    /// - Returns: `[B, C]`.
    public func sentenceEmbeddings(_ ids: IntTensor, attentionMask: IntTensor, tokenTypeIDs: IntTensor? = nil) throws
        -> Tensor
    {
        let h = try Autograd.withoutGradients {
            try hiddenStates(ids, attentionMask: attentionMask, tokenTypeIDs: tokenTypeIDs)
        }
        let (B, T, C) = (h.shape[0], h.shape[1], h.shape[2])
        // With prompt tuning the states start with the prompt's rows, which count as real (as PEFT's mask has them).
        let mask = try maskWithPrompt(attentionMask, batch: ids.shape[0], length: ids.shape[1]) ?? attentionMask
        guard mask.shape == [B, T] else {
            throw ModelError.badInput("attention mask \(mask.shape) does not match the hidden states [\(B), \(T)]")
        }
        var out = [Float](repeating: 0, count: B * C)
        h.withUnsafeBufferPointer { x in
            for b in 0..<B {
                var count: Float = 0
                for t in 0..<T where mask.values[b * T + t] != 0 {
                    count += 1
                    for c in 0..<C { out[b * C + c] += x[(b * T + t) * C + c] }
                }
                let n = max(count, 1e-9)
                var norm: Float = 0
                for c in 0..<C { out[b * C + c] /= n; norm += out[b * C + c] * out[b * C + c] }
                let scale = 1 / max(norm.squareRoot(), 1e-12)
                for c in 0..<C { out[b * C + c] *= scale }
            }
        }
        return try Tensor(shape: [B, C], values: out)
    }

    /// Embeds texts with `tokenizer` (truncated to `maxLength` tokens, padded per batch).
    public func embed(_ texts: [String], tokenizer: WordPieceTokenizer, maxLength: Int = 256) throws -> [[Float]] {
        guard !texts.isEmpty else { return [] }
        let batch = try tokenizer.encodeBatch(
            texts, options: EncodingOptions(maxLength: min(maxLength, config.positions)))
        let T = batch[0].ids.count
        let ids = try IntTensor(shape: [texts.count, T], values: batch.flatMap(\.ids))
        let mask = try IntTensor(shape: [texts.count, T], values: batch.flatMap(\.attentionMask))
        let e = try sentenceEmbeddings(ids, attentionMask: mask)
        let C = e.shape[1], all = e.scalars
        return (0..<texts.count).map { Array(all[($0 * C)..<(($0 + 1) * C)]) }
    }
}

/// One candidate for a masked position.
public struct MaskPrediction: Sendable, Equatable {
    public let id: Int32
    public let token: String
    public let probability: Float
}

extension BertForMaskedLM {
    /// The `topK` most likely tokens for each `[MASK]` in `text`, most likely first.
    /// - Throws: ``ModelError/badInput(_:)`` if the text has no `[MASK]`.
    public func fillMask(_ text: String, tokenizer: WordPieceTokenizer, topK: Int = 5) throws -> [[MaskPrediction]] {
        guard topK >= 1 else { throw ModelError.badInput("topK must be at least 1, got \(topK)") }
        guard let mask = tokenizer.maskID else { throw TokenizerError.missingSpecialToken("[MASK]") }
        // Encode around the literal [MASK] markers so that they become the mask id, not word pieces.
        let parts = text.components(separatedBy: "[MASK]")
        guard parts.count > 1 else { throw ModelError.badInput("the text has no [MASK]") }
        var ids: [Int32] = [tokenizer.cls]
        for (i, part) in parts.enumerated() {
            ids += tokenizer.pieces(part)
            if i < parts.count - 1 { ids.append(mask) }
        }
        ids.append(tokenizer.sep)
        let logits = try Autograd.withoutGradients {
            try self.logits(try IntTensor(shape: [1, ids.count], values: ids))
        }
        let V = logits.shape[2], all = logits.scalars
        return ids.indices.filter { ids[$0] == mask }.map { t in
            let row = all[(t * V)..<((t + 1) * V)], top = row.max()!
            let e = row.map { Foundation.exp($0 - top) }, z = e.reduce(0, +)
            return e.indices.sorted { e[$0] > e[$1] }.prefix(topK).map {
                MaskPrediction(id: Int32($0), token: tokenizer.tokens[$0], probability: e[$0] / z)
            }
        }
    }
}

/// Finds the tokenizer files in a model directory: `tokenizer.json`, else `vocab.txt`, else `vocab.json`.
public func tokenizerFile(in directory: URL) -> String? {
    if GGUFModel.isGGUF(directory.path) { return directory.path }  // a GGUF model carries its tokenizer
    for name in ["tokenizer.json", "vocab.txt", "vocab.json"] {
        let path = directory.appendingPathComponent(name).path
        if FileManager.default.fileExists(atPath: path) { return path }
    }
    return nil
}
