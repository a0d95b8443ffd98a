import Foundation
import Reins
import ReinsTensor
import ReinsTestSupport
import Testing

/// Inputs to the public model API that once trapped, tried to allocate terabytes or were read silently wrong: each
/// now throws an error that names the problem.
struct MalformedInputTests {
    func contains(_ text: String) -> (any Error) -> Bool { { "\($0)".contains(text) } }
    func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }
    var gpt2Config: GPT2Config {
        get throws {
            try GPT2Config(
                json: json(
                    #"{"vocab_size": 97, "n_positions": 24, "n_embd": 30, "n_head": 3, "n_inner": 37, "n_layer": 2}"#))
        }
    }
    var bertConfig: BertConfig {
        get throws {
            try BertConfig(
                json: json(
                    #"{"vocab_size": 99, "hidden_size": 30, "num_attention_heads": 3, "intermediate_size": 37, "num_hidden_layers": 2, "max_position_embeddings": 40}"#
                ))
        }
    }

    @Test func configsSetByHandAreValidatedBeforeAnythingIsBuilt() throws {
        var c = try gpt2Config
        c.heads = 0  // once a division by zero
        #expect(performing: { try GPT2LMHeadModel(c) }, throws: contains("n_head is 0; it must be positive"))
        c = try gpt2Config
        c.heads = 7
        #expect(performing: { try GPT2Model(c) }, throws: contains("n_embd 30 is not divisible by n_head 7"))
        c = try gpt2Config
        c.vocabularySize = 1 << 62  // once an overflow or an attempt to allocate exabytes
        #expect(performing: { try GPT2LMHeadModel(c) }, throws: contains("does not fit 32-bit token ids"))
        c.vocabularySize = 2_000_000_000
        c.hidden = 300
        #expect(performing: { try GPT2LMHeadModel(c) }, throws: contains("too large"))
        c = try gpt2Config
        c.labelCount = 1_000_000_000_000
        #expect(performing: { try GPT2ForSequenceClassification(c) }, throws: contains("more than this machine's"))
        c = try gpt2Config
        c.hidden = 4_000_000_000_000_000_000
        c.heads = 1
        #expect(performing: { try GPT2Model(c) }, throws: contains("too large"))
        c = try gpt2Config
        c.padTokenID = 10_000_000_000
        #expect(
            performing: { try GPT2Model(c) },
            throws: contains("pad_token_id 10000000000 is outside the vocabulary of 97"))
        c = try gpt2Config
        c.residualDropout = 1.5
        #expect(performing: { try GPT2Model(c) }, throws: contains("resid_pdrop is 1.5"))

        var b = try bertConfig
        b.layers = 1_000_000_000  // once a SIGSEGV in the buffer cache after allocating for minutes
        #expect(performing: { try BertModel(b) }, throws: contains("too large"))
        b = try bertConfig
        b.intermediate = -3
        #expect(performing: { try BertForMaskedLM(b) }, throws: contains("intermediate_size is -3"))
        b = try bertConfig
        b.typeCount = 0
        #expect(performing: { try BertForSequenceClassification(b) }, throws: contains("type_vocab_size is 0"))
    }

    @Test func configFilesWithNumbersThatDoNotFitAreRefused() throws {
        // n_embd near 4e18 with n_inner given: 4 × n_embd was once evaluated anyway and overflowed.
        #expect(
            performing: { try GPT2Config(json: json(#"{"n_embd": 4000000000000000000, "n_head": 1, "n_inner": 8}"#)) },
            throws: contains("too large"))
        #expect(
            performing: { try GPT2Config(json: json(#"{"n_embd": 4000000000000000000, "n_head": 1}"#)) },
            throws: contains("n_inner is -1"))
        // 2.7 layers was truncated to 2; 2^64 + 2 wrapped to 2.
        #expect(
            performing: { try GPT2Config(json: json(#"{"n_layer": 2.7}"#), path: "c.json") },
            throws: contains("c.json: 'n_layer' is not an integer (2.7)"))
        #expect(
            performing: { try BertConfig(json: json(#"{"num_hidden_layers": 18446744073709551618}"#)) },
            throws: contains("'num_hidden_layers' is not an integer"))
        #expect(
            performing: { try BertConfig(json: json(#"{"num_labels": 1000000000000}"#)) },
            throws: contains("more than this machine's"))
        #expect(
            performing: { try BertConfig(json: json(#"{"pad_token_id": 10000000000}"#)) },
            throws: contains("pad_token_id 10000000000 is outside"))
        #expect(try GPT2Config(json: json(#"{"n_layer": 3.0}"#)).layers == 3, "an integral float is exact")
    }

    @Test func modelCallsRefuseShapesTheyCannotUse() throws {
        let gpt2 = try BottleneckAdapterTests().gpt2()
        // [1, 0] once sliced 0..<-1 (a trap); one token gave NaN (nothing to predict).
        #expect(
            performing: { try gpt2.loss(try IntTensor(shape: [1, 0], values: [])) },
            throws: contains("at least 2 tokens"))
        #expect(
            performing: { try gpt2.loss(try IntTensor(shape: [1, 1], values: [5])) },
            throws: contains("at least 2 tokens"))
        #expect(performing: { try gpt2.loss(IntTensor([5, 6, 7])) }, throws: contains("must be [batch, length]"))
        #expect(
            performing: { try gpt2.generate(prompts: [[1, 2]], options: GenerationOptions(maxNewTokens: .max)) },
            throws: contains("longer than the model's 24 positions"))
        let bert = try BertForQuestionAnswering(try bertConfig)
        #expect(
            performing: { try bert.bert.pooled(try Tensor.zeros([2, 30])) },
            throws: contains("this model was built without a pooler"))
        let pooled = try BertModel(try bertConfig)
        #expect(performing: { try pooled.pooled(try Tensor.zeros([2, 30])) }, throws: contains("got [2, 30]"))
        #expect(
            performing: { try BertForQuestionAnswering.bestSpan(start: [1, 2, 3], end: [1]) },
            throws: contains("must agree"))
        #expect(
            performing: { try BertForQuestionAnswering.bestSpan(start: [1, 2], end: [1, 2], allowed: [true]) },
            throws: contains("must agree"))
        #expect(
            try BertForQuestionAnswering.bestSpan(start: [1, 2], end: [0, 5], maxAnswerLength: .max)! == (1, 1, 7))
    }

    @Test func trainingOptionsThatCannotRunAreRefused() throws {
        let model = try BottleneckAdapterTests().bert()
        let task = try SequenceClassificationTask(
            model: model, labels: 3, train: [LabeledText(text: "a", label: 1)], evaluation: [], padID: 0
        ) { _, _ in ([2, 3], [0, 0]) }
        func options(_ change: (inout TrainingOptions) -> Void) -> TrainingOptions {
            var o = TrainingOptions(steps: 2, batchSize: 1, learningRate: 1e-3)
            change(&o)
            return o
        }
        // evaluateEvery and checkpointEvery 0 were a division by zero (step % 0).
        #expect(
            performing: { try Trainer(task: task, options: options { $0.evaluateEvery = 0 }) },
            throws: contains("evaluateEvery must be positive"))
        #expect(
            performing: { try Trainer(task: task, options: options { $0.checkpointEvery = 0 }) },
            throws: contains("checkpointEvery must be positive"))
        #expect(
            performing: { try Trainer(task: task, options: options { $0.earlyStoppingPatience = -1 }) },
            throws: contains("earlyStoppingPatience"))
        #expect(
            performing: { try Trainer(task: task, options: options { $0.learningRate = .nan }) },
            throws: contains("learning rate"))
        #expect(
            performing: { try Trainer(task: task, options: options { $0.clipNorm = 0 }) }, throws: contains("clipNorm"))
        #expect(
            performing: {
                try Trainer(
                    task: task,
                    options: options {
                        $0.batchSize = 1 << 40; $0.gradientAccumulation = 1 << 30
                    })
            },
            throws: contains("more examples than can be counted"))
        #expect(
            performing: { try Trainer(task: task, options: options { $0.optimizer = .adamW(beta1: 1) }) },
            throws: contains("betas"))
    }

    @Test func tokenizingHugeWordsAndManySpecialTokensTakesLinearishTime() throws {
        let bpe = Fixtures.directory.appendingPathComponent("tokenizers/bpe")
        let tokenizer = try BPETokenizer(
            vocabularyFile: bpe.appendingPathComponent("vocab.json").path,
            mergesFile: bpe.appendingPathComponent("merges.txt").path)
        // One 300,000-letter word (pre-tokenization keeps a letter run whole) and 20,000 special tokens: once
        // quadratic in the word and in the number of specials.
        let word = String(repeating: "thequickbrownfox", count: 18_750)
        let specials = String(repeating: "ab<|endoftext|>", count: 20_000)
        let start = Date()
        let ids = tokenizer.encode(word)
        #expect(tokenizer.decode(ids) == word)
        #expect(tokenizer.encode(specials).filter { $0 == tokenizer.endOfText }.count == 20_000)
        // Linear work takes ~2 s in release and ~21 s under ThreadSanitizer on a slow 2-core machine; the quadratic
        // versions this guards against took hours.
        #expect(Date().timeIntervalSince(start) < 120, "took \(Date().timeIntervalSince(start)) s")
    }

    @Test func macroF1SumsItsClassesInAFixedOrder() {
        // The same value to the last bit whatever order a Set would give: the per-class scores summed by class.
        let truth = (0..<300).map { ($0 * 7) % 23 }, predicted = (0..<300).map { ($0 * 5) % 23 }
        var sum = 0.0
        for c in 0..<23 {
            let tp = Double(zip(predicted, truth).filter { $0 == c && $1 == c }.count)
            let fp = Double(zip(predicted, truth).filter { $0 == c && $1 != c }.count)
            let fn = Double(zip(predicted, truth).filter { $0 != c && $1 == c }.count)
            sum += tp == 0 ? 0 : 2 * tp / (2 * tp + fp + fn)
        }
        #expect(Metrics.macroF1(predicted: predicted, truth: truth).bitPattern == (sum / 23).bitPattern)
    }
}
