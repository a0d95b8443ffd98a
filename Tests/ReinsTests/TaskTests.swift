import Foundation
@testable import Reins
import ReinsTensor
import ReinsTestSupport
import Testing

/// The other trainers (masked LM, token classification, question answering) and BPE learning: data preparation
/// exactly as their recipes define it, training that lowers the loss, named errors.
struct TaskTests {
    /// A tiny WordPiece vocabulary that fits the 101-token fixture models.
    func tokenizer() throws -> WordPieceTokenizer {
        let words = [
            "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "in", "park", "paris", "is", "capital", "of", "france",
            "where", "did", "john", "live", "lives", "who", "big", "red", "##s", "##ing", "play", ".",
        ]
        let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
        let url = try temporaryDirectory().appendingPathComponent("vocab.txt")
        try Data((vocab.joined(separator: "\n") + "\n").utf8).write(to: url)
        return try WordPieceTokenizer(vocabularyFile: url.path)
    }

    func load<T>(_ name: String, _ pick: (PretrainedModel) -> T?) throws -> T {
        guard let m = pick(try PretrainedModel.load(directory: Fixtures.model(name))) else {
            throw ModelError.badInput("fixture \(name)")
        }
        return m
    }

    func train(_ task: any TrainingTask, steps: Int = 15, lr: Float = 5e-3) throws -> Trainer {
        var options = TrainingOptions(steps: steps, batchSize: 4, learningRate: lr)
        options.clipNorm = nil
        let trainer = try Trainer(task: task, options: options)
        try trainer.run()
        return trainer
    }

    @Test func maskedLMCorruptsAsBERTAndTrains() throws {
        let model = try load("bert-mlm") { if case let .bertMaskedLM(m) = $0 { return m } else { return nil } }
        let texts = (0..<12).map { i in
            ["the cat sat on the mat", "a dog ran in the park", "paris is the capital of france"][i % 3]
        }
        let task = try MaskedLMTask(
            model: model, tokenizer: tokenizer(), train: texts, evaluation: texts, maxLength: 16)
        let before = try task.evaluate()["loss"]!
        let trainer = try train(task, steps: 30, lr: 1e-2)
        #expect(try task.evaluate()["loss"]! < before, "masked-LM loss did not fall")
        #expect(trainer.history.allSatisfy { $0.loss.isFinite })
    }

    @Test func tokenClassificationLabelsFirstPiecesOnly() throws {
        let model = try load("bert-tok") {
            if case let .bertTokenClassification(m) = $0 { return m } else { return nil }
        }
        let tags = model.classifier.outputs
        let data = (0..<8).map { i in
            TaggedWords(words: ["john", "lives", "in", "paris"], tags: [1 % tags, 0, 0, 2 % tags])
        }
        let task = try TokenClassificationTask(
            model: model, tokenizer: tokenizer(), tags: tags, train: data, evaluation: data, maxLength: 16)
        let before = try task.evaluate()["accuracy"]!
        let trainer = try train(task, steps: 30, lr: 2e-2)
        #expect(trainer.history.last!.loss < trainer.history.first!.loss)
        #expect(try task.evaluate()["accuracy"]! >= before)
        #expect(throws: ModelError.badInput("training example 1: 2 words but 1 tags")) {
            try TokenClassificationTask(
                model: model, tokenizer: tokenizer(), tags: tags, train: [TaggedWords(words: ["a", "b"], tags: [0])],
                evaluation: [], maxLength: 8)
        }
    }

    @Test func entityTagsAreScoredAsEntities() throws {
        let model = try load("bert-tok") {
            if case let .bertTokenClassification(m) = $0 { return m } else { return nil }
        }
        let tags = model.classifier.outputs
        #expect(tags >= 3)
        let names = Array(["O", "B-PER", "B-LOC", "I-PER", "I-LOC", "B-ORG", "I-ORG"].prefix(tags))
        // Every word here is one word piece, so word i sits at position i + 1 after [CLS].
        let sentences = [
            ["john", "lives", "in", "paris"], ["the", "big", "red", "dog", "ran"],
            ["paris", "is", "the", "capital", "of", "france"],
        ]
        let tok = try tokenizer()
        let predicted = try sentences.map { words in
            let ids = try tok.encode(words.joined(separator: " ")).ids
            let logits = try Autograd.withoutGradients {
                try model.logits(IntTensor(shape: [1, ids.count], values: ids))
            }
            return words.indices.map { logits.argmax()[$0 + 1] }
        }
        // Gold tags: the model's own for the first and last sentence, a lone B-PER for the middle one.
        let gold = [predicted[0], [1] + [Int](repeating: 0, count: 4), predicted[2]]
        let data = zip(sentences, gold).map { TaggedWords(words: $0, tags: $1) }
        let task = try TokenClassificationTask(
            model: model, tokenizer: tok, tags: tags, tagNames: names, train: data, evaluation: data, maxLength: 16)
        #expect(task.primaryMetric.name == "entity_f1")
        #expect(
            try sentences.map { try task.tag($0) } == predicted.map { $0.map(Optional.some) },
            "tag(_:) gives the same argmax tags")
        let expected = Metrics.entityScores(
            predicted: predicted.map { $0.map { names[$0] } }, truth: gold.map { $0.map { names[$0] } })
        #expect(expected.f1 > 0 && expected.f1 < 1, "the check needs both right and wrong entities: \(expected)")
        let m = try task.evaluate()
        #expect(
            m["entity_precision"] == expected.precision && m["entity_recall"] == expected.recall
                && m["entity_f1"] == expected.f1, "\(m)")
        // Names that do not mark entities keep macro-F1 as the deciding metric; a wrong number of names is refused.
        let plain = try TokenClassificationTask(
            model: model, tokenizer: tok, tags: tags, tagNames: (0..<tags).map { "tag\($0)" }, train: data,
            evaluation: data, maxLength: 16)
        let plainMetrics = try plain.evaluate()
        #expect(
            plain.primaryMetric.name == "macro_f1" && plainMetrics["entity_f1"] == nil
                && plainMetrics["accuracy"] == m["accuracy"])
        #expect(throws: ModelError.badInput("2 tag names for \(tags) tags")) {
            try TokenClassificationTask(
                model: model, tokenizer: tok, tags: tags, tagNames: ["O", "B-X"], train: data, evaluation: data,
                maxLength: 16)
        }
    }

    @Test func questionAnsweringFindsTheSpanAndTrains() throws {
        let model = try load("bert-qa") { if case let .bertQuestionAnswering(m) = $0 { return m } else { return nil } }
        // answer_start counts code points (as Python and SQuAD do): "e\u{301}" and "\r\n" are one Swift Character each
        // but two code points, so counting Characters would misplace both answers by two.
        let context = "cafe\u{301}\r\njohn lives in paris . the cat sat on the mat"
        let examples = (0..<8).map { i in
            i % 2 == 0
                ? QuestionAnswer(question: "where did john live", context: context, answer: "paris", answerStart: 21)
                : QuestionAnswer(question: "where sat the cat", context: context, answer: "the mat", answerStart: 44)
        }
        let task = try QuestionAnsweringTask(
            model: model, tokenizer: tokenizer(), train: examples, evaluation: Array(examples.prefix(2)), maxLength: 32)
        let trainer = try train(task, steps: 40, lr: 2e-2)
        #expect(trainer.history.last!.loss < trainer.history.first!.loss)
        // The answer tokens are where answer_start says, and map back to the answer's own text.
        for (e, encoded) in zip(examples, task.train) {
            let found = try tokenizer().decode(Array(encoded.pair.ids[encoded.start...encoded.end]))
            #expect(found == e.answer && encoded.pair.text(encoded.start, encoded.end) == e.answer, "decoded \(found)")
        }
        // An answer inside a word takes the pieces it overlaps ("play" of "plays"); an unknown word has one piece and
        // is taken whole.
        let inside = try QuestionAnsweringTask(
            model: model, tokenizer: tokenizer(),
            train: [
                QuestionAnswer(question: "who", context: "the dog Plays in the park", answer: "Play", answerStart: 8),
                QuestionAnswer(question: "who", context: "he met johnparis today", answer: "paris", answerStart: 11),
            ], evaluation: [], maxLength: 32)
        #expect(inside.train.map { $0.pair.text($0.start, $0.end) } == ["Play", "johnparis"])
        let metrics = try task.evaluate()
        #expect(metrics["exact_match"] != nil && metrics["f1"]! >= metrics["exact_match"]!)
        // answer(question:context:) is the span evaluate() scores.
        let answers = try examples.prefix(2).map {
            try #require(try task.answer(question: $0.question, context: $0.context))
        }
        let em =
            zip(answers, examples).map { Metrics.exactMatch(prediction: $0.text, answers: [$1.answer]) }.reduce(0, +)
            / 2
        #expect(em == metrics["exact_match"] && answers.allSatisfy { $0.score.isFinite })
        #expect(throws: ModelError.self) {
            try QuestionAnsweringTask(
                model: model, tokenizer: tokenizer(),
                train: [QuestionAnswer(question: "q", context: "short", answer: "x", answerStart: 99)],
                evaluation: [], maxLength: 8)
        }
    }

    @Test func contextPiecesMapBackToTheContextText() throws {
        let tok = try tokenizer()
        let context =
            "Where?  The CATs sat,on the mat.\r\nJohn's dog (a big red one) ran in Paris \u{4E2D}\u{6587} caf\u{E9}. Pla\u{301}ying (\u{301}dog"
        let p = try QuestionAnsweringTask.pieces(question: "who", context: context, tokenizer: tok, maxLength: 64)
        // The same pieces as tokenizing the whole context at once.
        #expect(Array(p.ids[p.contextStart..<(p.ids.count - 1)]) == tok.pieces(context))
        // Each piece's origin is the part of the text it was cut from: normalized, it is the piece's own string
        // ("CAT" for cat, "s" for ##s, "Pla\u{301}y" for play). [UNK] stands for a whole word. Together the origins
        // cover every non-space character in order (normalization may also drop one at a piece edge, as Hugging Face
        // does: contextPieceOffsetsMatchTokenizers).
        var segments: [(range: Range<Int>, text: String)] = []
        for (i, r) in p.offsets.enumerated() {
            let id = p.ids[p.contextStart + i], token = tok.tokens[Int(id)],
                origin = p.text(p.contextStart + i, p.contextStart + i)
            if id == tok.unknown {
                #expect(tok.pieces(origin) == [tok.unknown])
            } else {
                #expect(tok.normalize(origin) == (token.hasPrefix("##") ? String(token.dropFirst(2)) : token))
            }
            if segments.last?.range != r { segments.append((r, origin)) }
        }
        // (The accent after the last "(" opens a word of its own, dropped before that word's only piece.)
        let covered = String(context.unicodeScalars.filter { !$0.properties.isWhitespace }).replacingOccurrences(
            of: "(\u{301}", with: "(")
        #expect(segments.map(\.text).joined() == covered)
        let playID = try #require(tok.vocabulary["play"]), play = try #require(p.ids.firstIndex(of: playID))
        #expect(
            p.text(play, play) == "Pla\u{301}y" && p.text(play + 1, play + 1) == "ing"
                && p.text(play, play + 1) == "Pla\u{301}ying")
        // A span's text is the context's own (case, accents and all).
        let catID = try #require(tok.vocabulary["cat"]), parisID = try #require(tok.vocabulary["paris"])
        let cat = try #require(p.ids.firstIndex(of: catID)), paris = try #require(p.ids.firstIndex(of: parisID))
        #expect(
            p.text(cat, cat) == "CAT" && p.text(cat, paris).hasPrefix("CATs sat,on")
                && p.text(cat, paris).hasSuffix("ran in Paris"))
    }

    @Test func bpeLearnsAVocabularyThatRoundTrips() throws {
        let text = String(
            repeating: "the cat sat on the mat. The cats sat! Der Käse, 3.14 — ünïcödé 🐈‍⬛ text\n", count: 40)
        let learned = try BPETokenizer.learn(from: text, vocabularySize: 300)
        #expect(learned.tokens.count == 300 && learned.tokens.last == "<|endoftext|>")
        #expect(learned.merges.count == 300 - 257)
        let dir = try temporaryDirectory()
        try BPETokenizer.save(learned, to: dir)
        let bpe = try BPETokenizer(
            vocabularyFile: dir.appendingPathComponent("vocab.json").path,
            mergesFile: dir.appendingPathComponent("merges.txt").path)
        let sample = "the cat sat on the mat, ünïcödé 🐈‍⬛ and unseen words like zebra<|endoftext|>"
        #expect(bpe.decode(bpe.encode(sample)) == sample)
        #expect(bpe.encode(" cat").count == 1, "a frequent word is one token")
        #expect(bpe.encode("<|endoftext|>") == [Int32(299)])
        #expect(throws: TokenizerError.self) { try BPETokenizer.learn(from: text, vocabularySize: 100) }
    }

    /// The characters each context piece is cut from are Hugging Face's offsets (make_tokenizer_fixtures.py): texts
    /// with CJK, emoji, accents precomposed and decomposed, control characters normalization drops, unknown words.
    @Test func contextPieceOffsetsMatchTokenizers() throws {
        let folder = Fixtures.directory.appendingPathComponent("tokenizers")
        let tok = try WordPieceTokenizer(vocabularyFile: folder.appendingPathComponent("wordpiece/vocab.txt").path)
        let json =
            try JSONSerialization.jsonObject(with: Data(contentsOf: folder.appendingPathComponent("expected.json")))
            as! [String: Any]
        let cases = (json["wordpiece"] as! [String: Any])["offsets"] as! [[String: Any]]
        #expect(cases.count > 10)
        var multiPieceWords = 0
        for c in cases {
            let text = c["text"] as! String, ids = (c["ids"] as! [Int]).map(Int32.init)
            let expected = (c["offsets"] as! [[Int]]).map { $0[0]..<$0[1] }
            let p = try QuestionAnsweringTask.pieces(question: "q", context: text, tokenizer: tok, maxLength: 512)
            #expect(Array(p.ids[p.contextStart..<(p.ids.count - 1)]) == ids, "\(text.debugDescription)")
            #expect(p.offsets == expected, "\(text.debugDescription)")
            multiPieceWords += zip(expected, expected.dropFirst()).filter { $0.upperBound == $1.lowerBound }.count
        }
        #expect(multiPieceWords > 20, "the texts split words into several pieces")
    }

    /// The learner keeps pair counts incrementally; this recounts every pair before every merge, the plain way, with
    /// the same order (count, then merged token, then pair of ids).
    static func naiveMerges(_ text: String, vocabularySize: Int, minimumFrequency: Int) -> [String] {
        var tokens = BPETokenizer.byteToCharacter.map { String($0) }
        var words: [[Int]] = []
        for piece in BPETokenizer.specialsFree(text, specials: ["<|endoftext|>"]) {
            for word in BPETokenizer.preTokenize(piece) { words.append(word.utf8.map { Int($0) }) }
        }
        var merged: [String] = []
        while tokens.count + 1 < vocabularySize {
            var pairs: [[Int]: Int] = [:]
            for w in words where w.count > 1 {
                for i in 0..<(w.count - 1) { pairs[[w[i], w[i + 1]], default: 0] += 1 }
            }
            let best = pairs.filter { $0.value >= minimumFrequency }.min { x, y in
                let (mx, my) = (tokens[x.key[0]] + tokens[x.key[1]], tokens[y.key[0]] + tokens[y.key[1]])
                return x.value != y.value
                    ? x.value > y.value : mx != my ? mx < my : x.key.lexicographicallyPrecedes(y.key)
            }
            guard let (pair, _) = best else { break }
            let id = tokens.count
            tokens.append(tokens[pair[0]] + tokens[pair[1]])
            merged.append(tokens[pair[0]] + " " + tokens[pair[1]])
            words = words.map { w in
                var out: [Int] = [], j = 0
                while j < w.count {
                    if j + 1 < w.count && w[j] == pair[0] && w[j + 1] == pair[1] {
                        out.append(id); j += 2
                    } else {
                        out.append(w[j]); j += 1
                    }
                }
                return out
            }
        }
        return merged
    }

    @Test(arguments: [(600, 2), (420, 1), (700, 5)])
    func bpeLearningMatchesRecountingEveryPair(vocabularySize: Int, minimumFrequency: Int) throws {
        // Words repeat with different counts, share pieces ("aaaa" overlaps itself), and produce equal merged tokens
        // from different pairs ("ab"+"c" and "a"+"bc"), so ties and stale counts are exercised.
        var generator = SeededGenerator(seed: 11)
        let vocabulary = [
            "aaaa", "abc", "bcab", "abcabc", "the", "then", "there", "other", "ünï", "cödé", "🐈‍⬛", "3.14",
            "Käse", "sat", "mat", "cats", "x", "aab", "bca",
        ]
        var words: [String] = []
        for _ in 0..<900 { words.append(vocabulary[Int(generator.next() % UInt64(vocabulary.count))]) }
        let text = words.joined(separator: " ") + "<|endoftext|> abc abc"
        let learned = try BPETokenizer.learn(
            from: text, vocabularySize: vocabularySize, minimumFrequency: minimumFrequency)
        let expected = Self.naiveMerges(text, vocabularySize: vocabularySize, minimumFrequency: minimumFrequency)
        #expect(learned.merges.map { $0.0 + " " + $0.1 } == expected)
        #expect(!expected.isEmpty)
        #expect(learned.tokens.count == 257 + expected.count)
    }

    @Test func causalLMLearnsOnlyTheCompletionAndScoresBLEU() throws {
        let model = try BottleneckAdapterTests().gpt2()
        let seq = TokenSequence(ids: [5, 17, 42, 95, 3, 8, 60], promptLength: 3)
        let task = try CausalLMTask(model: model, train: [seq], evaluation: [seq], padID: 0)
        // The loss is the mean cross-entropy of the completion tokens 95, 3, 8, 60 given everything before them.
        let logits = try model.logits(try IntTensor(shape: [1, 7], values: seq.ids)).scalars
        let V = logits.count / 7
        var expected = 0.0
        for t in 2..<6 {
            let row = logits[(t * V)..<((t + 1) * V)].map(Double.init)
            let m = row.max()!, lse = m + Foundation.log(row.reduce(0) { $0 + Foundation.exp($1 - m) })
            expected += lse - row[Int(seq.ids[t + 1])]
        }
        #expect(abs(Double(try task.loss([0]).loss.item) - expected / 4) < 1e-4)
        task.decode = { $0.map { "w\($0)" }.joined(separator: " ") }
        let metrics = try task.evaluate()
        #expect(metrics["bleu"].map { (0...100).contains($0) } == true)
        #expect(abs(metrics["perplexity"]! - Foundation.exp(metrics["loss"]!)) < 1e-9)
        #expect(throws: ModelError.self) {
            try CausalLMTask(
                model: model, train: [TokenSequence(ids: [1, 2], promptLength: 2)], evaluation: [], padID: 0)
        }
    }

    @Test func gpt2ClassifierReadsTheLastRealTokenAfterAPrompt() throws {
        let model = try load("gpt2-cls") {
            if case let .gpt2SequenceClassification(m) = $0 { return m } else { return nil }
        }
        try model.transformer.attachPrompt(
            Parameter("prompt_embeddings", try Tensor.normal([3, model.transformer.config.hidden], std: 0.5, seed: 9)))
        // Padded batch (pad 96): the score at each row's last real token, found after the 3 prompt vectors.
        let ids = try IntTensor(shape: [2, 4], values: [5, 6, 7, 96, 50, 51, 52, 53]),
            mask = try IntTensor(shape: [2, 4], values: [1, 1, 1, 0, 1, 1, 1, 1])
        let all = try model.score(model.transformer.hiddenStates(ids, attentionMask: mask)).scalars
        let L = model.score.outputs, W = 3 + 4
        let expected =
            Array(all[((0 * W + 3 + 2) * L)..<((0 * W + 3 + 2) * L + L)])
            + Array(all[((1 * W + 3 + 3) * L)..<((1 * W + 3 + 3) * L + L)])
        expectClose(
            try model.logits(ids, attentionMask: mask).scalars, expected, atol: 1e-6, rtol: 1e-5,
            "scores at the last real tokens")
    }

    @Test func gpt2LastRowsEqualTheFullLastBlock() throws {
        let model = try load("gpt2-cls") {
            if case let .gpt2SequenceClassification(m) = $0 { return m } else { return nil }
        }
        let gpt = model.transformer, C = gpt.config.hidden
        let ids = try IntTensor(shape: [3, 5], values: [5, 6, 7, 96, 96, 50, 51, 52, 53, 54, 8, 96, 96, 96, 96])
        let mask = try IntTensor(shape: [3, 5], values: [1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
        let rows = [2, 4, 0]
        model.freeze()
        try model.addAdapter(
            "a", .lora(LoRAConfig(rank: 2, alpha: 4, targets: ["c_attn", "mlp.c_fc"])), labels: 2, seed: 1)
        try gpt.attachPrefix(
            Parameter(
                "prompt_embeddings",
                try Tensor.normal([2, gpt.config.layers * 2 * C], std: 0.5, seed: 2).requiringGradient()))
        for (key, p) in model.namedParameters() where key.contains("lora_B") {
            p.value = try Tensor.normal(p.value.shape, std: 0.3, seed: 3).requiringGradient()
        }
        for withPrompt in [false, true] {
            if withPrompt {
                try gpt.attachPrompt(
                    Parameter(
                        "prompt_tuning_embeddings", try Tensor.normal([3, C], std: 0.5, seed: 4).requiringGradient()))
            }
            let trainable = gpt.namedParameters().map(\.parameter).filter { $0.value.requiresGradient }  // the head is not in play
            let weights = try Tensor.normal([3, 1, C], seed: 5)
            func run(_ picked: Bool) throws -> ([Float], [[Float]]) {
                for p in trainable { p.zeroGradient() }
                let Q = gpt.promptLength
                let out =
                    try picked
                    ? gpt.hiddenStates(ids, at: rows, attentionMask: mask)
                    : Tensor.concatenate(
                        rows.enumerated().map { b, r in
                            try gpt.hiddenStates(ids, attentionMask: mask).slice(axis: 0, b..<(b + 1)).slice(
                                axis: 1, (Q + r)..<(Q + r + 1))
                        }, axis: 0)
                try (out * weights).sum().backward()
                return (out.scalars, try trainable.map { try #require($0.gradient).scalars })
            }
            let (full, fullGrads) = try run(false), (picked, pickedGrads) = try run(true)
            #expect(trainable.count >= 3)
            expectClose(picked, full, atol: 1e-5, rtol: 1e-5, "rows \(rows), prompt \(withPrompt)")
            for (i, (a, b)) in zip(pickedGrads, fullGrads).enumerated() {
                expectClose(a, b, atol: 1e-5, rtol: 1e-4, "gradient \(i), prompt \(withPrompt)")
            }
        }
        #expect(throws: ModelError.self) { try gpt.hiddenStates(ids, at: [0, 5, 0], attentionMask: mask) }
    }

    @Test func bertTokenHeadsSkipThePromptPositions() throws {
        let tagger = try load("bert-tok") {
            if case let .bertTokenClassification(m) = $0 { return m } else { return nil }
        }
        let reader = try load("bert-qa") { if case let .bertQuestionAnswering(m) = $0 { return m } else { return nil } }
        let ids = try IntTensor(shape: [2, 5], values: [2, 14, 15, 16, 3, 2, 20, 21, 3, 0]),
            mask = try IntTensor(shape: [2, 5], values: [1, 1, 1, 1, 1, 1, 1, 1, 1, 0])
        for bert in [tagger.bert, reader.bert] {
            try bert.attachPrompt(
                Parameter("prompt_embeddings", try Tensor.normal([3, bert.config.hidden], std: 0.5, seed: 2)))
        }
        // One row per token, equal to the head on the hidden states after the 3 prompt positions.
        let tags = try tagger.logits(ids, attentionMask: mask)
        #expect(tags.shape == [2, 5, tagger.classifier.outputs])
        #expect(
            tags.scalars
                == (try tagger.classifier(tagger.bert.hiddenStates(ids, attentionMask: mask).slice(axis: 1, 3..<8)))
                .scalars)
        let (start, end) = try reader.logits(ids, attentionMask: mask)
        #expect(start.shape == [2, 5] && end.shape == [2, 5])
        let both = try reader.outputs(reader.bert.hiddenStates(ids, attentionMask: mask).slice(axis: 1, 3..<8))
        let (s0, e0) = (try both.slice(axis: 2, 0..<1).scalars, try both.slice(axis: 2, 1..<2).scalars)
        #expect(start.scalars == s0 && end.scalars == e0)
    }

    @Test func gpt2SequenceClassificationTrainsAnAdapterWithItsOwnScoreHead() throws {
        let model = try load("gpt2-cls") {
            if case let .gpt2SequenceClassification(m) = $0 { return m } else { return nil }
        }
        try model.addAdapter("sentiment", .lora(LoRAConfig(rank: 2, alpha: 4, targets: ["c_attn"])), labels: 2, seed: 4)
        let examples = (0..<8).map { i in LabeledText(text: String(i), label: i % 2) }
        // No token types, as GPT-2 is run in transformers (given, they would add their embeddings).
        let task = try SequenceClassificationTask(
            model: model, labels: 2, train: examples, evaluation: examples, padID: 96
        ) { t, _ in
            let i = Int(t)!
            return ((0..<(3 + i % 3)).map { Int32((i % 2 == 0 ? 5 : 50) + $0) }, [])
        }
        // The task's loss is the cross-entropy of the model's own logits without token types.
        let ids0 = try IntTensor(shape: [2, 4], values: [5, 6, 7, 96, 50, 51, 52, 53]),
            mask0 = try IntTensor(shape: [2, 4], values: [1, 1, 1, 0, 1, 1, 1, 1])
        #expect(
            try task.loss([0, 1]).loss.scalars
                == (try Tensor.crossEntropy(
                    logits: model.logits(ids0, attentionMask: mask0), targets: IntTensor([0, 1]))).scalars)
        #expect(throws: ModelError.badInput("training example 1: 1 token types for 2 ids")) {
            try SequenceClassificationTask(model: model, labels: 2, train: examples, evaluation: [], padID: 96) {
                _, _ in ([5, 6], [0])
            }
        }
        let trainer = try train(task, steps: 30, lr: 3e-2)
        #expect(trainer.history.last!.loss < trainer.history.first!.loss)
        #expect(try task.evaluate()["accuracy"]! == 1, "two separable classes")
        // Saved with its score head (PEFT's modules_to_save) and loaded onto a fresh base: the same logits.
        let dir = try temporaryDirectory()
        try model.saveAdapter("sentiment", to: dir)
        let fresh = try load("gpt2-cls") {
            if case let .gpt2SequenceClassification(m) = $0 { return m } else { return nil }
        }
        try fresh.loadAdapter("sentiment", from: dir)
        let ids = try IntTensor(shape: [2, 4], values: [5, 6, 7, 96, 50, 51, 52, 53])
        let mask = try IntTensor(shape: [2, 4], values: [1, 1, 1, 0, 1, 1, 1, 1])
        expectClose(
            try fresh.logits(ids, attentionMask: mask), try model.logits(ids, attentionMask: mask), atol: 1e-6,
            rtol: 1e-6, "GPT-2 classifier after save and load")
        #expect(fresh.score.outputs == 2)
    }
}
