import CReinsKernels
import Foundation
import ReinsTensor

/// How to pick each next token.
public struct GenerationOptions: Sendable {
    /// The most tokens to add to each prompt.
    public var maxNewTokens: Int
    /// Greedy decoding (the most likely token); when false, sample with the settings below.
    public var greedy: Bool
    /// Logits are divided by this before sampling.
    public var temperature: Float
    /// Sample only among the `topK` most likely tokens.
    public var topK: Int?
    /// Sample only among the smallest set of most likely tokens whose probability reaches `topP` (nucleus sampling).
    public var topP: Float?
    /// Tokens already in the sequence get their logit divided (if positive) or multiplied (if negative) by this.
    public var repetitionPenalty: Float
    /// Seeds the sampler: the same seed gives the same text.
    public var seed: UInt64
    /// A sequence ends after emitting one of these (it is kept); the others go on.
    public var stopTokens: Set<Int32>
    /// The id used for left padding of batched prompts and after a sequence has stopped.
    public var padID: Int32

    public init(
        maxNewTokens: Int = 20, greedy: Bool = true, temperature: Float = 1, topK: Int? = nil, topP: Float? = nil,
        repetitionPenalty: Float = 1, seed: UInt64 = 0, stopTokens: Set<Int32> = [], padID: Int32 = 0
    ) {
        self.maxNewTokens = maxNewTokens
        self.greedy = greedy
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.repetitionPenalty = repetitionPenalty
        self.seed = seed
        self.stopTokens = stopTokens
        self.padID = padID
    }
}

/// A decoder with a language-model head: what generation, the causal-LM loss and causal-LM training need (GPT-2 and
/// the Llama family).
public protocol CausalLanguageModel: Module {
    /// The final hidden states `[B, T, C]` (with prompt tuning, `[B, P + T, C]` on the first pass).
    func decoderStates(_ ids: IntTensor, attentionMask: IntTensor?, positionIDs: IntTensor?, cache: KVCache?) throws
        -> Tensor
    /// Vocabulary logits for hidden states `[..., C]`.
    func outputLogits(_ hidden: Tensor) throws -> Tensor
    var vocabularySize: Int { get }
    var layerCount: Int { get }
    /// The most positions the model embeds (`nil`: no position table, as with rotary embeddings).
    var positionLimit: Int? { get }
    /// Virtual tokens before the real ones: prefix and prompt.
    var virtualTokenCount: Int { get }
    /// Prompt-tuning vectors, which come first in the outputs.
    var promptTokenCount: Int { get }
    /// The config's `pad_token_id`, if any.
    var padTokenID: Int? { get }
    /// The output layer's weight `[V, C]` and bias when it is a plain product (no adapter changes it), so that the loss
    /// can run it fused with the cross-entropy without holding the logits; nil otherwise.
    var plainOutputLayer: (weight: Tensor, bias: Tensor?)? { get }
    /// The output layer's weight when it is a quantized frozen matrix with nothing else to it (no adapter, no bias):
    /// the loss then runs it fused with the cross-entropy, panel by panel.
    var quantizedOutputLayer: QuantizedMatrix? { get }
}

extension Linear {
    /// The weight `[out, in]` and bias when no adapter changes this layer's product.
    var plainProduct: (weight: Tensor, bias: Tensor?)? {
        hasLiveAdapter || weightTransposed || quantizedWeight != nil ? nil : (weight.value, bias?.value)
    }
}

extension TiedOutput {
    var plainProduct: (weight: Tensor, bias: Tensor?)? {
        slots.live == nil && table.quantizedTable == nil && AdapterRouting.current == nil
            ? (table.unadaptedWeight, bias?.value) : nil
    }
}

extension GPT2LMHeadModel: CausalLanguageModel {
    public func decoderStates(_ ids: IntTensor, attentionMask: IntTensor?, positionIDs: IntTensor?, cache: KVCache?)
        throws -> Tensor
    {
        try transformer.hiddenStates(ids, attentionMask: attentionMask, positionIDs: positionIDs, cache: cache)
    }
    public func outputLogits(_ hidden: Tensor) throws -> Tensor { try lmHead(hidden) }
    public var vocabularySize: Int { transformer.config.vocabularySize }
    public var layerCount: Int { transformer.config.layers }
    public var positionLimit: Int? { transformer.config.positions }
    public var virtualTokenCount: Int { transformer.virtualLength }
    public var promptTokenCount: Int { transformer.promptLength }
    public var padTokenID: Int? { transformer.config.padTokenID }
    public var plainOutputLayer: (weight: Tensor, bias: Tensor?)? { lmHead.plainProduct }
    public var quantizedOutputLayer: QuantizedMatrix? { nil }
}

extension LlamaForCausalLM: CausalLanguageModel {
    public func decoderStates(_ ids: IntTensor, attentionMask: IntTensor?, positionIDs: IntTensor?, cache: KVCache?)
        throws -> Tensor
    {
        try model.hiddenStates(ids, attentionMask: attentionMask, positionIDs: positionIDs, cache: cache)
    }
    public func outputLogits(_ hidden: Tensor) throws -> Tensor { try lmHead(hidden) }
    public var vocabularySize: Int { model.config.vocabularySize }
    public var layerCount: Int { model.config.layers }
    public var positionLimit: Int? { nil }
    public var virtualTokenCount: Int { model.virtualLength }
    public var promptTokenCount: Int { model.promptLength }
    public var padTokenID: Int? { model.config.padTokenID }
    public var plainOutputLayer: (weight: Tensor, bias: Tensor?)? {
        (lmHead as? Linear)?.plainProduct ?? (lmHead as? TiedOutput)?.plainProduct
    }
    public var quantizedOutputLayer: QuantizedMatrix? {
        if let l = lmHead as? Linear, !l.hasLiveAdapter, l.bias == nil { return l.quantizedWeight }
        if let t = lmHead as? TiedOutput, t.slots.live == nil, t.bias == nil, AdapterRouting.current == nil {
            return t.table.quantizedTable
        }
        return nil
    }
}

extension CausalLanguageModel {
    /// The causal-LM loss: mean cross-entropy of the logits at position t against `labels` at t + 1 (labels equal to
    /// -100 are skipped; by default the labels are the input ids).
    public func loss(_ ids: IntTensor, labels: IntTensor? = nil, attentionMask: IntTensor? = nil) throws -> Tensor {
        let labels = labels ?? ids
        guard labels.shape == ids.shape else {
            throw ModelError.badInput("labels \(labels.shape) do not match input ids \(ids.shape)")
        }
        guard ids.shape.count == 2 else {
            throw ModelError.badInput("input ids must be [batch, length], got \(ids.shape)")
        }
        let (B, T) = (ids.shape[0], ids.shape[1])
        // With Q prompt vectors the last of them predicts the first token (as PEFT, whose prompt labels are -100).
        let Q = promptTokenCount
        guard B > 0, T + (Q > 0 ? 1 : 0) >= 2 else {
            throw ModelError.badInput(
                "the causal-LM loss needs a batch of sequences of at least 2 tokens (one to predict from, one to predict), got \(ids.shape)"
            )
        }
        let h = try decoderStates(ids, attentionMask: attentionMask, positionIDs: nil, cache: nil)
        var predicting = try h.slice(axis: 1, (Q > 0 ? Q - 1 : 0)..<(Q + T - 1))
        var targets: [Int32] = []
        for b in 0..<B { targets += labels.values[(b * T + (Q > 0 ? 0 : 1))..<((b + 1) * T)] }
        // Only positions with a label reach the output layer (instruction tuning labels the answers alone): the
        // same mean over the labelled positions, without the vocabulary-wide product of the others.
        let kept = targets.indices.filter { targets[$0] != -100 }
        if !kept.isEmpty && kept.count < targets.count {
            let C = predicting.shape[2]
            predicting = try Tensor.embedding(
                IntTensor(kept.map { Int32($0) }), table: predicting.reshaped([targets.count, C]))
            targets = kept.map { targets[$0] }
        }
        // A plain output layer runs fused with the loss, chunk by chunk: the [B, T, V] logits are never held.
        if let (weight, bias) = plainOutputLayer {
            return try Tensor.linearCrossEntropy(predicting, weight: weight, bias: bias, targets: IntTensor(targets))
        }
        if let weight = quantizedOutputLayer {
            return try Tensor.quantizedLinearCrossEntropy(predicting, weight: weight, targets: IntTensor(targets))
        }
        return try Tensor.crossEntropy(logits: outputLogits(predicting), targets: IntTensor(targets))
    }

    /// Continues each prompt, feeding only new tokens through the model (a KV cache keeps earlier keys and values).
    ///
    /// Prompts of different lengths are left-padded and masked; positions count real tokens only, so a padded prompt
    /// continues exactly as it would alone. Processing order as in transformers: repetition penalty, temperature,
    /// top-k, top-p, then argmax or a seeded draw.
    /// - Returns: each prompt followed by its new tokens (without padding; a stop token, if emitted, is the last).
    /// - Throws: ``ModelError`` if a prompt is empty, an id is out of range, or prompt + new tokens exceed the positions.
    /// - Parameter onToken: called with (sequence, token) as each new token is chosen, for streaming.
    public func generate(
        prompts: [[Int32]], options: GenerationOptions = GenerationOptions(), onToken: ((Int, Int32) -> Void)? = nil
    ) throws -> [[Int32]] {
        guard !prompts.isEmpty, prompts.allSatisfy({ !$0.isEmpty }) else {
            throw ModelError.badInput("every prompt needs at least one token")
        }
        try options.validate()
        let B = prompts.count, L = prompts.map(\.count).max()!
        let P = virtualTokenCount
        // Compared by subtraction: maxNewTokens is the caller's and may be as large as Int.max. Without a position
        // table the bound is what 32-bit positions can count.
        let limit = positionLimit ?? Int(Int32.max)
        guard options.maxNewTokens <= limit - P - L else {
            let (total, overflow) = (P + L).addingReportingOverflow(options.maxNewTokens)
            throw ModelError.sequenceTooLong(length: overflow ? Int.max : total, maximum: limit)
        }
        var ids: [Int32] = [], mask: [Int32] = [], positions: [Int32] = []
        for p in prompts {
            let pad = L - p.count
            ids += [Int32](repeating: options.padID, count: pad) + p
            mask += [Int32](repeating: 0, count: pad) + [Int32](repeating: 1, count: p.count)
            positions += [Int32](repeating: 1, count: pad) + (0..<p.count).map(Int32.init)
        }
        var sequences = prompts, finished = [Bool](repeating: false, count: B)
        var nextPosition = prompts.map { Int32($0.count) }
        var rng = SeededGenerator(seed: options.seed)
        let cache = KVCache(layers: layerCount, reserve: min(virtualTokenCount + L + options.maxNewTokens, 4096))
        try Autograd.withoutGradients {
            // The prompt in one pass; only its last position needs vocabulary logits.
            let h = try decoderStates(
                try IntTensor(shape: [B, L], values: ids), attentionMask: try IntTensor(shape: [B, L], values: mask),
                positionIDs: try IntTensor(shape: [B, L], values: positions), cache: cache)
            let last = h.shape[1] - 1  // prompt vectors, if any, come first
            var logits = try outputLogits(try h.slice(axis: 1, last..<(last + 1)))
            var rows = Array(0..<B)
            for _ in 0..<options.maxNewTokens {
                let V = vocabularySize
                var next = [Int32](repeating: options.padID, count: B)
                logits.withUnsafeBufferPointer { all in
                    for b in 0..<B where !finished[b] {
                        var row = Array(all[(rows[b] * V)..<((rows[b] + 1) * V)])
                        next[b] = pickToken(&row, history: sequences[b], options: options, rng: &rng)
                    }
                }
                for b in 0..<B where !finished[b] {
                    sequences[b].append(next[b])
                    onToken?(b, next[b])
                    if options.stopTokens.contains(next[b]) { finished[b] = true }
                }
                if finished.allSatisfy({ $0 }) { break }
                var fullMask: [Int32] = []
                let past = cache.length - P  // the mask covers tokens, not the prefix or prompt
                for b in 0..<B { fullMask += mask[(b * past)..<((b + 1) * past)] + [1] }
                mask = fullMask
                logits = try outputLogits(
                    decoderStates(
                        try IntTensor(shape: [B, 1], values: next),
                        attentionMask: try IntTensor(shape: [B, past + 1], values: mask),
                        positionIDs: try IntTensor(shape: [B, 1], values: nextPosition), cache: cache))
                nextPosition = nextPosition.map { $0 + 1 }
                rows = Array(0..<B)
            }
        }
        return sequences
    }
}

/// ``pickToken(_:history:options:rng:)`` reading `logits` where they lie: greedy and plain sampling without a
/// repetition penalty (what servers mostly ask for) copy nothing and take the history only when it is needed; the
/// draw uses `scratch` (at least the row's length) for the probabilities. The same token as the copying version.
func pickToken(
    _ logits: UnsafeBufferPointer<Float>, scratch: UnsafeMutableBufferPointer<Float>, history: () -> [Int32],
    options: GenerationOptions, rng: inout SeededGenerator
) -> Int32 {
    let V = logits.count
    guard options.repetitionPenalty == 1, V > 0, scratch.count >= V, options.drawsFromWhole(vocabulary: V) else {
        var row = Array(logits)
        return pickToken(&row, history: history(), options: options, rng: &rng)
    }
    return drawWhole(logits, scratch: scratch, options: options, rng: &rng)
}

/// Greedy, or a draw from the whole distribution at `options.temperature` (no top-k, top-p or penalty left to apply):
/// no order is needed, so nothing is sorted (a vocabulary of 50k tokens sorted per token per request would cost more
/// than the decoding step it follows). The probabilities come from the softmax kernel (vectorized exponentials) into
/// `scratch` (at least the row's length); the draw walks them in Double.
private func drawWhole(
    _ logits: UnsafeBufferPointer<Float>, scratch: UnsafeMutableBufferPointer<Float>, options: GenerationOptions,
    rng: inout SeededGenerator
) -> Int32 {
    let V = logits.count
    guard V > 0 else { return 0 }
    if options.greedy {
        var best = 0
        for i in 1..<V where logits[i] > logits[best] { best = i }
        return Int32(best)
    }
    guard let p = scratch.baseAddress, scratch.count >= V else { return 0 }
    for i in 0..<V { p[i] = logits[i] / options.temperature }
    rk_softmax_forward(p, p, 1, Int32(V))
    var u = Double(rng.nextUniform())
    for i in 0..<V {
        u -= Double(p[i])
        if u < 0 { return Int32(i) }
    }
    return Int32((0..<V).last { p[$0] > 0 } ?? 0)
}

extension GenerationOptions {
    /// Greedy, or a draw over the whole vocabulary of `V` tokens: no top-k short of it, no nucleus.
    func drawsFromWhole(vocabulary V: Int) -> Bool {
        greedy || ((topK.map { $0 >= V } ?? true) && !(topP.map { $0 < 1 } ?? false))
    }
}

/// One next token from one row of logits.
func pickToken(_ logits: inout [Float], history: [Int32], options: GenerationOptions, rng: inout SeededGenerator)
    -> Int32
{
    if options.repetitionPenalty != 1 {
        for id in Set(history) where Int(id) < logits.count && id >= 0 {
            let l = logits[Int(id)]
            logits[Int(id)] = l < 0 ? l * options.repetitionPenalty : l / options.repetitionPenalty
        }
    }
    if options.drawsFromWhole(vocabulary: logits.count) {
        var scratch = [Float](repeating: 0, count: options.greedy ? 0 : logits.count)
        return logits.withUnsafeBufferPointer { l in
            scratch.withUnsafeMutableBufferPointer { drawWhole(l, scratch: $0, options: options, rng: &rng) }
        }
    }
    for i in logits.indices { logits[i] /= options.temperature }
    let top = logits.max() ?? 0
    var order: [Int]
    if let k = options.topK, k < 64 {
        // The k most likely in order, by insertion into a short sorted list (ties: the lower id first).
        order = []
        order.reserveCapacity(k + 1)
        for i in logits.indices where order.count < k || logits[i] > logits[order[order.count - 1]] {
            var at = order.count
            while at > 0 && logits[order[at - 1]] < logits[i] { at -= 1 }
            order.insert(i, at: at)
            if order.count > k { order.removeLast() }
        }
    } else {
        order = Array(logits.indices).sorted { logits[$0] > logits[$1] }
        if let k = options.topK, k > 0, k < order.count { order = Array(order.prefix(k)) }
    }
    var probabilities = order.map { Foundation.exp(Double(logits[$0] - top)) }
    let total = probabilities.reduce(0, +)
    probabilities = probabilities.map { $0 / total }
    if let p = options.topP, p < 1 {
        // Keep the most likely tokens until their mass reaches p (always at least one).
        var mass = 0.0, keep = 0
        while keep < probabilities.count && (keep == 0 || mass < Double(p)) {
            mass += probabilities[keep]; keep += 1
        }
        order = Array(order.prefix(keep))
        probabilities = Array(probabilities.prefix(keep)).map { $0 / mass }
    }
    var u = Double(rng.nextUniform()), chosen = order.last ?? 0
    for (id, q) in zip(order, probabilities) {
        u -= q
        if u < 0 { chosen = id; break }
    }
    return Int32(chosen)
}
