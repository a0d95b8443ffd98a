import Foundation
import ReinsTensor

/// A sentence as words, each with a tag (for token classification such as named entities).
public struct TaggedWords: Sendable, Equatable {
    public var words: [String]
    public var tags: [Int]
    public init(words: [String], tags: [Int]) { (self.words, self.tags) = (words, tags) }
}

/// Token classification on BERT: each word's first word piece carries its tag, the other pieces and the special
/// tokens are ignored (-100), as transformers' token-classification recipe does. Evaluated by word accuracy and
/// macro-F1 over tags, and — when the tag names follow the BIO / IOBES scheme (`B-PER`, `I-PER`, `O`, ...) — by
/// entity-level precision, recall and F1 (seqeval's definitions, ``Metrics/entityScores(predicted:truth:)``), which
/// then decides the best checkpoint.
public final class TokenClassificationTask: ShardedEvaluation {
    public let tagger: BertForTokenClassification
    public var model: any Module { tagger }
    let train: [EncodedTags], evaluation: [EncodedTags]
    let tokenizer: WordPieceTokenizer, maxLength: Int
    let padID: Int32
    /// The tag names when they mark entities (nil otherwise).
    let entityTags: [String]?

    struct EncodedTags { let ids: [Int32]; let labels: [Int32] }

    /// - Throws: ``ModelError/badInput(_:)`` naming the example whose words and tags differ in number or whose tag is
    ///   out of range.
    /// - Parameter tagNames: the names of tags `0..<tags`, if known; BIO / IOBES names add entity-level scores.
    public init(
        model: BertForTokenClassification, tokenizer: WordPieceTokenizer, tags: Int, tagNames: [String]? = nil,
        train: [TaggedWords], evaluation: [TaggedWords], maxLength: Int
    ) throws {
        if let tagNames, tagNames.count != tags {
            throw ModelError.badInput("\(tagNames.count) tag names for \(tags) tags")
        }
        let marksEntities =
            tagNames?.contains { $0.count > 2 && "BIES".contains($0.first!) && $0.dropFirst().first == "-" } ?? false
        entityTags = marksEntities ? tagNames : nil
        tagger = model
        (self.tokenizer, self.maxLength, padID) = (tokenizer, maxLength, tokenizer.padID)
        func encode(_ set: [TaggedWords], _ name: String) throws -> [EncodedTags] {
            try set.enumerated().map { n, s in
                guard s.words.count == s.tags.count else {
                    throw ModelError.badInput(
                        "\(name) example \(n + 1): \(s.words.count) words but \(s.tags.count) tags")
                }
                if let bad = s.tags.first(where: { !(0..<tags).contains($0) }) {
                    throw ModelError.badInput("\(name) example \(n + 1): tag \(bad) outside 0..<\(tags)")
                }
                let (ids, first) = Self.pieces(s.words, tokenizer: tokenizer, maxLength: maxLength)
                var labels = [Int32](repeating: -100, count: ids.count)
                for (position, tag) in zip(first, s.tags) { if let position { labels[position] = Int32(tag) } }
                return EncodedTags(ids: ids, labels: labels)
            }
        }
        self.train = try encode(train, "training")
        self.evaluation = try encode(evaluation, "evaluation")
    }

    /// `[CLS] pieces... [SEP]`, and each word's first piece's position (nil for a word with no pieces, or one that no
    /// longer fits in `maxLength`).
    static func pieces(_ words: [String], tokenizer: WordPieceTokenizer, maxLength: Int) -> (
        ids: [Int32], first: [Int?]
    ) {
        var ids: [Int32] = [tokenizer.cls], first: [Int?] = []
        for word in words {
            let p = tokenizer.pieces(word)
            guard !p.isEmpty, ids.count + p.count < maxLength else { first.append(nil); continue }
            first.append(ids.count)
            ids += p
        }
        return (ids + [tokenizer.sep], first)
    }

    /// The predicted tag of each word (nil for a word with no word pieces or beyond `maxLength`).
    public func tag(_ words: [String]) throws -> [Int?] {
        let (ids, first) = Self.pieces(words, tokenizer: tokenizer, maxLength: maxLength)
        let best = try Autograd.withoutGradients { try tagger.logits(IntTensor(shape: [1, ids.count], values: ids)) }
            .argmax()
        return first.map { $0.map { best[$0] } }
    }

    public var trainingCount: Int { train.count }

    /// Ids and mask `[B, T]`, and the labels flattened `[B·T]` (-100 on padding).
    func batch(_ rows: [EncodedTags]) throws -> (ids: IntTensor, mask: IntTensor, labels: IntTensor) {
        let ids = rows.map(\.ids)
        return (
            try rightPadded(ids, with: padID), try paddingMask(ids),
            IntTensor(try rightPadded(rows.map(\.labels), with: -100).values)
        )
    }

    public func loss(_ indices: [Int]) throws -> (loss: Tensor, tokens: Int) {
        let rows = indices.map { train[$0] }
        let b = try batch(rows)
        let logits = try tagger.logits(b.ids, attentionMask: b.mask)
        let L = logits.shape[2]
        return (
            try Tensor.crossEntropy(logits: logits.reshaped([-1, L]), targets: b.labels),
            rows.reduce(0) { $0 + $1.ids.count }
        )
    }

    public func evaluate() throws -> [String: Double] { try evaluateAsOneShard() }

    /// Per sentence of the slice: its word count, the predicted tags, the true tags.
    public func evaluationPart(shard: Int, of shards: Int) throws -> [Double] {
        let range = shardRange(count: evaluation.count, batch: 32, shard: shard, of: shards)
        var part: [Double] = []
        for (_, rows) in Array(evaluation[range]).batches(of: 32) {
            let b = try batch(rows)
            let logits = try tagger.logits(b.ids, attentionMask: b.mask)
            let best = logits.argmax(), T = b.ids.shape[1]
            for r in rows.indices {
                let words = (r * T..<(r + 1) * T).filter { b.labels.values[$0] != -100 }
                part.append(Double(words.count))
                part += words.map { Double(best[$0]) }
                part += words.map { Double(b.labels.values[$0]) }
            }
        }
        return part
    }

    public func metrics(fromParts parts: [[Double]]) throws -> [String: Double] {
        var predicted: [Int] = [], truth: [Int] = []
        var predictedTags: [[String]] = [], trueTags: [[String]] = []  // per sentence, for entity scores
        for part in parts {
            var k = 0
            while k < part.count {
                let n = Int(part[k])
                guard n >= 0, k + 1 + 2 * n <= part.count else {
                    throw ModelError.badInput("a token-classification evaluation part is cut short")
                }
                let p = part[(k + 1)..<(k + 1 + n)].map { Int($0) }, t = part[(k + 1 + n)..<(k + 1 + 2 * n)].map { Int($0) }
                predicted += p
                truth += t
                if let names = entityTags {
                    guard (p + t).allSatisfy({ names.indices.contains($0) }) else {
                        throw ModelError.badInput("a token-classification evaluation part names a tag out of range")
                    }
                    predictedTags.append(p.map { names[$0] })
                    trueTags.append(t.map { names[$0] })
                }
                k += 1 + 2 * n
            }
        }
        var metrics = [
            "accuracy": Metrics.accuracy(predicted: predicted, truth: truth),
            "macro_f1": Metrics.macroF1(predicted: predicted, truth: truth),
        ]
        if entityTags != nil {
            let e = Metrics.entityScores(predicted: predictedTags, truth: trueTags)
            (metrics["entity_precision"], metrics["entity_recall"], metrics["entity_f1"]) = (
                e.precision, e.recall, e.f1
            )
        }
        return metrics
    }

    public var primaryMetric: (name: String, higherIsBetter: Bool) {
        (entityTags == nil ? "macro_f1" : "entity_f1", true)
    }
}

/// A question over a context with its answer (`answerStart`: where the answer starts in the context, in Unicode code
/// points, as Python's string indices and SQuAD's `answer_start` count — not Swift `Character`s).
public struct QuestionAnswer: Sendable, Equatable {
    public var question: String, context: String, answer: String, answerStart: Int
    public init(question: String, context: String, answer: String, answerStart: Int) {
        (self.question, self.context, self.answer, self.answerStart) = (question, context, answer, answerStart)
    }
}

/// Extractive question answering on BERT: cross-entropy on the answer's first and last token (the mean of the two, as
/// transformers); evaluated by exact match and token F1 of the best span (SQuAD definitions), whose text is cut from
/// the context itself (original case and accents), piece by piece as transformers' offsets give it.
///
/// The answer's tokens are the context pieces whose characters overlap the answer's, so an answer that starts or ends
/// inside a piece takes the whole piece (and inside an unknown word, the whole word); an answer cut off by
/// `maxLength` is an error naming the example.
public final class QuestionAnsweringTask: ShardedEvaluation {
    public let reader: BertForQuestionAnswering
    public var model: any Module { reader }
    let tokenizer: WordPieceTokenizer, maxLength: Int
    let train: [EncodedQA], evaluation: [EncodedQA]

    struct EncodedQA { let pair: EncodedPair; let start: Int; let end: Int; let answer: String }

    /// A question and context as the model reads them, and where each context piece came from in the context text.
    struct EncodedPair {
        let ids: [Int32], types: [Int32], contextStart: Int
        let context: String
        /// For the context's `i`-th piece: the code points of the context it was cut from. A word's pieces each get
        /// their own characters (`un`, `##aff`, `##able` from "Unaffable"), as Hugging Face's offsets; where that cannot
        /// be told (a character that normalizes into two pieces) they share the word's range.
        let offsets: [Range<Int>]
        /// The context text the pieces `first...last` (positions in `ids`) were cut from.
        func text(_ first: Int, _ last: Int) -> String {
            // Scalar-wise: a piece may end inside a character (a letter and its combining marks are one character).
            let scalars = context.unicodeScalars,
                span = offsets[first - contextStart].lowerBound..<offsets[last - contextStart].upperBound
            let start = scalars.index(scalars.startIndex, offsetBy: span.lowerBound)
            return String(scalars[start..<scalars.index(start, offsetBy: span.count)])
        }
    }

    public init(
        model: BertForQuestionAnswering, tokenizer: WordPieceTokenizer, train: [QuestionAnswer],
        evaluation: [QuestionAnswer], maxLength: Int
    ) throws {
        reader = model
        (self.tokenizer, self.maxLength) = (tokenizer, maxLength)
        func encode(_ set: [QuestionAnswer], _ name: String) throws -> [EncodedQA] {
            try set.enumerated().map { n, e in
                guard e.answerStart >= 0, e.answerStart <= e.context.unicodeScalars.count else {
                    throw ModelError.badInput(
                        "\(name) example \(n + 1): answer_start \(e.answerStart) is outside the context")
                }
                let pair = try Self.pieces(
                    question: e.question, context: e.context, tokenizer: tokenizer, maxLength: maxLength)
                // The answer's pieces: those whose units overlap its code points [answerStart, answerStart + length).
                let answer = e.answerStart..<(e.answerStart + e.answer.unicodeScalars.count)
                let overlapping = pair.offsets.indices.filter { pair.offsets[$0].overlaps(answer) }
                guard let start = overlapping.first, let end = overlapping.last else {
                    throw ModelError.badInput(
                        "\(name) example \(n + 1): the answer does not fit in \(maxLength) tokens or is empty")
                }
                return EncodedQA(
                    pair: pair, start: pair.contextStart + start, end: pair.contextStart + end, answer: e.answer)
            }
        }
        self.train = try encode(train, "training")
        self.evaluation = try encode(evaluation, "evaluation")
    }

    /// `[CLS] question [SEP] context [SEP]` cut to `maxLength`, its token types, where the context starts, and where
    /// each context piece came from. The context is cut into the tokenizer's own units first (whitespace-separated
    /// words, punctuation marks and CJK characters on their own), so its pieces are exactly those of the whole text.
    static func pieces(question: String, context: String, tokenizer: WordPieceTokenizer, maxLength: Int) throws
        -> EncodedPair
    {
        let q = tokenizer.pieces(question)
        let contextStart = q.count + 2
        guard contextStart < maxLength - 1 else {
            throw ModelError.badInput("the question alone fills \(maxLength) tokens")
        }
        // The units as code-point ranges, in one pass over the scalars (a unit may end inside a Swift Character: a
        // punctuation mark followed by a combining accent).
        let scalars = Array(context.unicodeScalars)
        var units: [Range<Int>] = [], open: Int?
        for (i, s) in scalars.enumerated() {
            let alone = WordPieceTokenizer.isPunctuation(s) || WordPieceTokenizer.isCJK(s.value)
            if WordPieceTokenizer.isWhitespace(s) || alone, let o = open { units.append(o..<i); open = nil }
            if alone { units.append(i..<(i + 1)) } else if !WordPieceTokenizer.isWhitespace(s), open == nil { open = i }
        }
        if let o = open { units.append(o..<scalars.count) }
        var contextIDs: [Int32] = [], offsets: [Range<Int>] = []
        for unit in units {
            let unitScalars = Array(scalars[unit])
            let p = tokenizer.pieces(String(String.UnicodeScalarView(unitScalars)))
            contextIDs += p
            // Each piece's own characters when they can be told (see `pieceSpans`), else the whole unit's.
            offsets +=
                tokenizer.pieceSpans(unitScalars, pieces: p)?.map {
                    (unit.lowerBound + $0.lowerBound)..<(unit.lowerBound + $0.upperBound)
                }
                ?? Array(repeating: unit, count: p.count)
        }
        let kept = min(maxLength - 1 - contextStart, contextIDs.count)
        let ids = [tokenizer.cls] + q + [tokenizer.sep] + contextIDs.prefix(kept) + [tokenizer.sep]
        return EncodedPair(
            ids: ids,
            types: [Int32](repeating: 0, count: contextStart) + [Int32](repeating: 1, count: ids.count - contextStart),
            contextStart: contextStart, context: context, offsets: Array(offsets.prefix(kept)))
    }

    /// The best answer span in the context, as the context's own text (from its first piece's first character to its
    /// last piece's last), with its score (start logit + end logit); nil if the context is empty.
    public func answer(question: String, context: String) throws -> (text: String, score: Float)? {
        let p = try Self.pieces(question: question, context: context, tokenizer: tokenizer, maxLength: maxLength)
        let shape = [1, p.ids.count]
        let (s, e) = try Autograd.withoutGradients {
            try reader.logits(
                IntTensor(shape: shape, values: p.ids), tokenTypeIDs: IntTensor(shape: shape, values: p.types))
        }
        return try bestAnswer(p, start: s.scalars, end: e.scalars)
    }

    /// The best span of a sequence's context (from `contextStart` to before the final [SEP]) under its start and end
    /// logits (which may run past the ids into padding), as context text, with its score.
    func bestAnswer(_ p: EncodedPair, start: [Float], end: [Float]) throws -> (text: String, score: Float)? {
        let allowed = start.indices.map { $0 >= p.contextStart && $0 < p.ids.count - 1 }
        return try BertForQuestionAnswering.bestSpan(start: start, end: end, allowed: allowed).map {
            (p.text($0.start, $0.end), $0.score)
        }
    }

    public var trainingCount: Int { train.count }

    func batch(_ rows: [EncodedQA]) throws -> (ids: IntTensor, mask: IntTensor, types: IntTensor) {
        let ids = rows.map(\.pair.ids)
        return (
            try rightPadded(ids, with: tokenizer.padID), try paddingMask(ids),
            try rightPadded(rows.map(\.pair.types), with: 0)
        )
    }

    public func loss(_ indices: [Int]) throws -> (loss: Tensor, tokens: Int) {
        let rows = indices.map { train[$0] }
        let b = try batch(rows)
        let (start, end) = try reader.logits(b.ids, attentionMask: b.mask, tokenTypeIDs: b.types)
        let s = try Tensor.crossEntropy(logits: start, targets: IntTensor(rows.map { Int32($0.start) }))
        let e = try Tensor.crossEntropy(logits: end, targets: IntTensor(rows.map { Int32($0.end) }))
        return (try (s + e).scaled(by: 0.5), rows.reduce(0) { $0 + $1.pair.ids.count })
    }

    public func evaluate() throws -> [String: Double] { try evaluateAsOneShard() }

    /// The slice's summed exact match and F1.
    public func evaluationPart(shard: Int, of shards: Int) throws -> [Double] {
        var em = 0.0, f1 = 0.0
        let range = shardRange(count: evaluation.count, batch: 16, shard: shard, of: shards)
        for (_, rows) in Array(evaluation[range]).batches(of: 16) {
            let b = try batch(rows)
            let (s, e) = try reader.logits(b.ids, attentionMask: b.mask, tokenTypeIDs: b.types)
            let T = s.shape[1], sv = s.scalars, ev = e.scalars
            for (i, r) in rows.enumerated() {
                let text =
                    try bestAnswer(
                        r.pair, start: Array(sv[(i * T)..<((i + 1) * T)]), end: Array(ev[(i * T)..<((i + 1) * T)]))?
                    .text ?? ""
                em += Metrics.exactMatch(prediction: text, answers: [r.answer])
                f1 += Metrics.tokenF1(prediction: text, answers: [r.answer])
            }
        }
        return [em, f1]
    }

    public func metrics(fromParts parts: [[Double]]) throws -> [String: Double] {
        guard parts.allSatisfy({ $0.count == 2 }) else {
            throw ModelError.badInput("question-answering evaluation parts must hold 2 numbers each")
        }
        let n = Double(max(evaluation.count, 1))
        return ["exact_match": parts.reduce(0) { $0 + $1[0] } / n, "f1": parts.reduce(0) { $0 + $1[1] } / n]
    }

    public var primaryMetric: (name: String, higherIsBetter: Bool) { ("f1", true) }
}

/// Masked language modelling on BERT (Devlin et al., arXiv 1810.04805): 15% of the non-special tokens are chosen;
/// of those 80% become [MASK], 10% a random token, 10% stay; the loss is on the chosen tokens. The choice for a
/// training step is seeded by the step's training-mode seed, so a resumed run masks exactly as an uninterrupted one;
/// evaluation masks with a fixed seed. Evaluated by the loss, its perplexity and the accuracy on the chosen tokens.
public final class MaskedLMTask: ShardedEvaluation {
    public let masked: BertForMaskedLM
    public var model: any Module { masked }
    let train: [[Int32]], evaluation: [[Int32]]
    let maskID: Int32, padID: Int32, special: Set<Int32>, vocabulary: Int
    /// The fraction of tokens chosen (0.15).
    public var probability = 0.15

    public init(
        model: BertForMaskedLM, tokenizer: WordPieceTokenizer, train: [String], evaluation: [String], maxLength: Int
    ) throws {
        guard let mask = tokenizer.maskID else { throw ModelError.badInput("the tokenizer has no [MASK] token") }
        let options = EncodingOptions(maxLength: maxLength, padding: .none)
        masked = model
        self.train = try train.map { try tokenizer.encode($0, options: options).ids }
        self.evaluation = try evaluation.map { try tokenizer.encode($0, options: options).ids }
        maskID = mask
        padID = tokenizer.padID
        special = Set(["[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"].compactMap { tokenizer.vocabulary[$0] })
        vocabulary = model.bert.config.vocabularySize
    }

    public var trainingCount: Int { train.count }

    /// Inputs with the 80/10/10 corruption, mask and labels (-100 where no loss), `[B, T]`.
    func corrupt(_ rows: [[Int32]], seed: UInt64) throws -> (
        ids: IntTensor, mask: IntTensor, labels: IntTensor, chosen: Int
    ) {
        var g = SeededGenerator(seed: seed)
        var inputs: [[Int32]] = [], labels: [[Int32]] = [], chosen = 0
        for r in rows {
            var row = r, lab = [Int32](repeating: -100, count: r.count)
            let candidates = r.indices.filter { !special.contains(r[$0]) }
            // At least one chosen token per sequence that has any, so every row contributes.
            var picks = candidates.filter { _ in Double(g.next() >> 11) / Double(1 << 53) < probability }
            if picks.isEmpty, let only = candidates.randomElement(using: &g) { picks = [only] }
            for i in picks {
                lab[i] = r[i]
                let u = Double(g.next() >> 11) / Double(1 << 53)
                if u < 0.8 { row[i] = maskID } else if u < 0.9 { row[i] = Int32(g.next() % UInt64(vocabulary)) }
            }
            chosen += picks.count
            inputs.append(row)
            labels.append(lab)
        }
        return (
            try rightPadded(inputs, with: padID), try paddingMask(rows),
            IntTensor(try rightPadded(labels, with: -100).values), chosen
        )
    }

    public func loss(_ indices: [Int]) throws -> (loss: Tensor, tokens: Int) {
        let rows = indices.map { train[$0] }
        let seed = (TrainingMode.current?.seed ?? 0) &+ 0x5EED
        let b = try corrupt(rows, seed: seed)
        let logits = try masked.logits(b.ids, attentionMask: b.mask)
        return (
            try Tensor.crossEntropy(logits: logits.reshaped([-1, vocabulary]), targets: b.labels),
            rows.reduce(0) { $0 + $1.count }
        )
    }

    public func evaluate() throws -> [String: Double] { try evaluateAsOneShard() }

    /// The slice's summed loss, chosen-token count and correct predictions; each batch masked with the seed of its
    /// position in the whole evaluation data.
    public func evaluationPart(shard: Int, of shards: Int) throws -> [Double] {
        var total = 0.0, count = 0, correct = 0
        let range = shardRange(count: evaluation.count, batch: 16, shard: shard, of: shards)
        for (start, rows) in Array(evaluation[range]).batches(of: 16) {
            let b = try corrupt(rows, seed: 1234 &+ UInt64(range.lowerBound + start))
            let logits = try masked.logits(b.ids, attentionMask: b.mask).reshaped([-1, vocabulary])
            total += Double(try Tensor.crossEntropy(logits: logits, targets: b.labels).item) * Double(b.chosen)
            count += b.chosen
            for (best, label) in zip(logits.argmax(), b.labels.values) where label != -100 && best == Int(label) {
                correct += 1
            }
        }
        return [total, Double(count), Double(correct)]
    }

    public func metrics(fromParts parts: [[Double]]) throws -> [String: Double] {
        guard parts.allSatisfy({ $0.count == 3 }) else {
            throw ModelError.badInput("masked-LM evaluation parts must hold 3 numbers each")
        }
        let (total, count, correct) = (
            parts.reduce(0) { $0 + $1[0] }, parts.reduce(0) { $0 + $1[1] }, parts.reduce(0) { $0 + $1[2] }
        )
        let nll = total / max(count, 1)
        return [
            "loss": nll, "perplexity": Metrics.perplexity(meanNegativeLogLikelihood: nll),
            "accuracy": correct / max(count, 1),
        ]
    }

    public var primaryMetric: (name: String, higherIsBetter: Bool) { ("loss", false) }
}
