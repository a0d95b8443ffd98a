import ArgumentParser
import Dispatch
import Foundation
import Reins

/// `reins info --model DIR`: the architecture, its sizes and parameter count.
struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "info", abstract: "Describe a Hugging Face model directory.")

    @Option(help: "A model directory (config.json + model.safetensors).")
    var model: String

    func run() throws {
        let start = DispatchTime.now().uptimeNanoseconds
        let loaded = try PretrainedModel.load(directory: URL(fileURLWithPath: model))
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
        let m = loaded.module
        switch loaded {
        case let .gpt2(x): print(gpt2Summary("GPT2Model", x.config))
        case let .gpt2LMHead(x): print(gpt2Summary("GPT2LMHeadModel", x.transformer.config))
        case let .gpt2SequenceClassification(x): print(gpt2Summary("GPT2ForSequenceClassification", x.transformer.config) + ", labels \(x.score.outputs)")
        case let .bert(x): print(bertSummary("BertModel", x.config))
        case let .bertMaskedLM(x): print(bertSummary("BertForMaskedLM", x.bert.config))
        case let .bertSequenceClassification(x): print(bertSummary("BertForSequenceClassification", x.bert.config) + ", labels \(x.classifier.outputs)")
        case let .bertTokenClassification(x): print(bertSummary("BertForTokenClassification", x.bert.config) + ", labels \(x.classifier.outputs)")
        case let .bertQuestionAnswering(x): print(bertSummary("BertForQuestionAnswering", x.bert.config))
        }
        print(String(format: "loaded in %.1f ms", elapsed))
        print("parameters: \(m.parameterCount) (\(String(format: "%.1f", Double(m.parameterCount) * 4 / 1_048_576)) MiB as float32), tensors: \(m.namedParameters().count)")
    }

    func gpt2Summary(_ name: String, _ c: GPT2Config) -> String {
        "architecture: \(name) (GPT-2, causal, pre-LN)\nlayers \(c.layers), hidden \(c.hidden), heads \(c.heads) (head size \(c.hidden / c.heads)), feed-forward \(c.inner), vocabulary \(c.vocabularySize), positions \(c.positions)"
    }

    func bertSummary(_ name: String, _ c: BertConfig) -> String {
        "architecture: \(name) (BERT, bidirectional, post-LN)\nlayers \(c.layers), hidden \(c.hidden), heads \(c.heads) (head size \(c.hidden / c.heads)), feed-forward \(c.intermediate), vocabulary \(c.vocabularySize), positions \(c.positions), token types \(c.typeCount)"
    }
}

/// `reins logits`: runs the head named by the config on a batch read from safetensors and writes the logits.
struct LogitsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logits",
        abstract: "Run a model's head on int32 input_ids [B, T] (optional attention_mask, token_type_ids) and write float32 logits.",
        discussion: "LM heads write logits [B, T, V]; classification heads [B, labels]; token classification [B, T, labels]; question answering start_logits and end_logits [B, T]; a bare model last_hidden_state [B, T, C]. This is how Reins is checked against the Python stack."
    )

    @Option(help: "A model directory (config.json + model.safetensors).")
    var model: String
    @Option(help: "A safetensors file with int32 input_ids [B, T] and optional attention_mask and token_type_ids.")
    var inputs: String
    @Option(help: "Where to write the output safetensors file.")
    var output: String

    func run() throws {
        let loaded = try PretrainedModel.load(directory: URL(fileURLWithPath: model))
        let file = try SafeTensorsFile(path: inputs)
        let ids = try file.intTensor("input_ids")
        let mask = try file.entries["attention_mask"].map { _ in try file.intTensor("attention_mask") }
        let types = try file.entries["token_type_ids"].map { _ in try file.intTensor("token_type_ids") }
        var outputs: [String: Tensor] = [:]
        try Autograd.withoutGradients {
            switch loaded {
            case let .gpt2(m): outputs["last_hidden_state"] = try m.hiddenStates(ids, attentionMask: mask)
            case let .gpt2LMHead(m): outputs["logits"] = try m.logits(ids, attentionMask: mask)
            case let .gpt2SequenceClassification(m): outputs["logits"] = try m.logits(ids, attentionMask: mask)
            case let .bert(m): outputs["last_hidden_state"] = try m.hiddenStates(ids, attentionMask: mask, tokenTypeIDs: types)
            case let .bertMaskedLM(m): outputs["logits"] = try m.logits(ids, attentionMask: mask, tokenTypeIDs: types)
            case let .bertSequenceClassification(m): outputs["logits"] = try m.logits(ids, attentionMask: mask, tokenTypeIDs: types)
            case let .bertTokenClassification(m): outputs["logits"] = try m.logits(ids, attentionMask: mask, tokenTypeIDs: types)
            case let .bertQuestionAnswering(m):
                let (start, end) = try m.logits(ids, attentionMask: mask, tokenTypeIDs: types)
                outputs["start_logits"] = start
                outputs["end_logits"] = end
            }
        }
        try SafeTensorsFile.write(outputs, to: output)
    }
}

/// `reins tokenize`: one text per line on standard input, one JSON array of ids per line on standard output.
struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "Encode lines of standard input as JSON arrays of token ids.",
        discussion: "The tokenizer file is a vocab.txt (WordPiece, adds [CLS]/[SEP]), a vocab.json with merges.txt beside it (GPT-2 byte-level BPE), or a tokenizer.json of either kind."
    )

    @Option(help: "vocab.txt, vocab.json (with merges.txt beside it) or tokenizer.json.")
    var tokenizer: String

    func run() throws {
        let tok = try AnyTokenizer(file: tokenizer)
        while let line = readLine(strippingNewline: true) {
            print("[" + (try tok.encode(line)).map(String.init).joined(separator: ", ") + "]")
        }
    }
}
