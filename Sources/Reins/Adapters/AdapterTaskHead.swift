import Foundation
import ReinsTensor

/// The task head of a classification or question-answering adapter kept beside a base that has no place for it: a
/// PEFT `SEQ_CLS`, `TOKEN_CLS` or `QUESTION_ANS` adapter (trained on a `...ForSequenceClassification`,
/// `...ForTokenClassification` or `...ForQuestionAnswering` model) served on the causal language model of the same
/// decoder. The adapter's own layers go into the shared base; its head (`score`, `classifier` or `qa_outputs`, saved in
/// `modules_to_save`) stays here and reads the base's final hidden states with the adapter routed — what the model
/// with that head and the adapter computes, so one base serves generation, classification and extraction adapters
/// side by side.
public final class AdapterTaskHead {
    /// What the head computes, by PEFT's `task_type`.
    public enum Task: String, Sendable, CaseIterable {
        /// `[labels]` per sequence, read at its last token (transformers' decoder classifiers read the last token
        /// that is not padding; the sequences given here hold no padding).
        case sequenceClassification = "SEQ_CLS"
        /// `[tokens, labels]` per sequence.
        case tokenClassification = "TOKEN_CLS"
        /// `[tokens, 2]` per sequence: each token's logit of starting and of ending the answer.
        case questionAnswering = "QUESTION_ANS"
    }

    public let task: Task
    /// `[labels, hidden]`, with the bias when the head has one (token classifiers and QA heads do).
    public let layer: Linear
    /// The class names: `labels.json` in the adapter's directory, else `LABEL_i` (transformers' defaults); for
    /// question answering `start`, `end` (a labels.json is not read).
    public let labels: [String]

    /// A head from its saved tensors (`<key>.weight` `[labels, width]`, optional `<key>.bias`), checked.
    /// - Throws: ``ModelError`` naming the mis-shaped or unexpected tensor.
    init(task: Task, entries: [(key: String, plain: String, tensor: Tensor)], width: Int, labels names: [String]?)
        throws
    {
        guard let headKey = PEFTAdapter.headKeys.first(where: { k in entries.contains { $0.plain.hasPrefix(k + ".") } }),
            let weight = entries.first(where: { $0.plain == headKey + ".weight" })?.tensor
        else {
            throw ModelError.checkpointMismatch(
                missing: ["score.weight, classifier.weight or qa_outputs.weight"], unexpected: entries.map(\.key),
                misshaped: [])
        }
        let unexpected = entries.filter { $0.plain != headKey + ".weight" && $0.plain != headKey + ".bias" }
        guard unexpected.isEmpty else {
            throw ModelError.checkpointMismatch(missing: [], unexpected: unexpected.map(\.key), misshaped: [])
        }
        let bias = entries.first(where: { $0.plain == headKey + ".bias" })?.tensor
        let count = weight.rank == 2 ? weight.shape[0] : 0
        guard count > 0, weight.shape[1] == width, bias.map({ $0.shape == [count] }) ?? true else {
            throw ModelError.checkpointMismatch(
                missing: [], unexpected: [],
                misshaped: [
                    "\(headKey).weight is \(weight.shape)\(bias.map { " and its bias \($0.shape)" } ?? ""), expected [labels, \(width)]"
                ])
        }
        guard task != .questionAnswering || count == 2 else {
            throw ModelError.checkpointMismatch(
                missing: [], unexpected: [], misshaped: ["\(headKey).weight is \(weight.shape), expected [2, \(width)] for question answering"])
        }
        if task != .questionAnswering, let names = names, names.count != count {
            throw ModelError.badInput("labels.json names \(names.count) labels; the adapter's head has \(count)")
        }
        layer = try Linear(inputs: width, outputs: count, bias: bias != nil, seed: 0)
        layer.weight.value = weight.detached()
        if let bias { layer.bias?.value = bias.detached() }
        layer.freeze()
        self.task = task
        labels = task == .questionAnswering ? ["start", "end"] : names ?? (0..<count).map { "LABEL_\($0)" }
    }

    /// The head's logits for each of `sequences` (token ids, none empty) on `model` with `adapter` routed to every
    /// row (nil: the bare base), in one batch: `[labels]` per sequence (sequence classification) or `[tokens, labels]`
    /// (token classification; question answering's columns are the start and end logits).
    /// - Throws: ``ModelError/badInput(_:)`` for no or empty sequences; the model's errors for ids out of range.
    public func logits(_ model: any CausalLanguageModel, _ sequences: [[Int32]], adapter: String?) throws -> [Tensor] {
        try Self.logits(model, rows: sequences.map { ($0, adapter, self) })
    }

    /// One pass over rows of many adapters and their heads — requests for different classification and
    /// question-answering adapters answered together: row `i` reads `rows[i].ids` with `rows[i].adapter` routed
    /// (``Module/withAdapters(perRow:_:)``) and `rows[i].head` on its final states. Each row's result is what
    /// ``logits(_:_:adapter:)`` gives it alone (up to float rounding: the base's products are shared).
    /// - Throws: ``ModelError/badInput(_:)`` for no or empty rows; the model's errors for ids out of range or unknown
    ///   adapters.
    public static func logits(
        _ model: any CausalLanguageModel, rows: [(ids: [Int32], adapter: String?, head: AdapterTaskHead)]
    ) throws -> [Tensor] {
        guard !rows.isEmpty, rows.allSatisfy({ !$0.ids.isEmpty }) else {
            throw ModelError.badInput("a task head reads at least one sequence, and none may be empty")
        }
        let B = rows.count, T = rows.map(\.ids.count).max() ?? 0
        let sequences = rows.map(\.ids)
        let ids = try rightPadded(sequences, with: Int32(model.padTokenID ?? 0)), mask = try paddingMask(sequences)
        return try Autograd.withoutGradients {
            let h = try model.withAdapters(perRow: rows.map(\.adapter)) {
                try model.decoderStates(ids, attentionMask: mask, positionIDs: nil, cache: nil)
            }
            // Prompt-tuning rows come first; each sequence's tokens are the T rows after them, padding last.
            let first = h.shape[1] - T
            var out = [Tensor?](repeating: nil, count: B)
            // Each head on its own rows.
            var groups: [ObjectIdentifier: [Int]] = [:], order: [ObjectIdentifier] = []
            for (b, row) in rows.enumerated() {
                let key = ObjectIdentifier(row.head)
                if groups[key] == nil { order.append(key) }
                groups[key, default: []].append(b)
            }
            for key in order {
                let members = groups[key] ?? []
                guard let head = members.first.map({ rows[$0].head }) else { continue }
                let L = head.layer.outputs
                let states = try h.rows(members)
                switch head.task {
                case .sequenceClassification:
                    let logits = try head.layer(states.positions(members.map { first + rows[$0].ids.count - 1 }))
                    for (i, b) in members.enumerated() { out[b] = try logits.slice(axis: 0, i..<(i + 1)).reshaped([L]) }
                case .tokenClassification, .questionAnswering:
                    let logits = try head.layer(states)
                    for (i, b) in members.enumerated() {
                        let n = rows[b].ids.count
                        out[b] = try logits.slice(axis: 0, i..<(i + 1)).slice(axis: 1, first..<(first + n)).reshaped([n, L])
                    }
                }
            }
            return out.compactMap { $0 }
        }
    }
}

extension AdapterFiles {
    /// Loads an adapter directory into `model` under `name` as ``load(directory:into:name:)`` does, except that a task
    /// head the adapter saved and the model has no module for — a `SEQ_CLS`, `TOKEN_CLS` or `QUESTION_ANS` adapter on
    /// a causal language model — is returned instead of refused. Llama's question-answering model keeps its decoder
    /// under `transformer.`; such an adapter's keys are read under the model's `model.`.
    /// - Returns: the head set aside, or nil when the adapter has none the model lacks.
    /// - Throws: ``ModelError`` as ``load(directory:into:name:)`` does, and for a head without a `task_type` it fits.
    public static func loadSettingHeadAside(directory: URL, into model: any Module, name: String) throws
        -> AdapterTaskHead?
    {
        let configURL = directory.appendingPathComponent("adapter_config.json")
        let config = try Checkpoint.readJSON(configURL)
        let taskType = config["task_type"] as? String
        var renaming: (from: String, to: String)?
        if taskType == AdapterTaskHead.Task.questionAnswering.rawValue {
            // Only a question-answering adapter needs the model's top-level names (a walk of every module).
            let modules = Set(model.namedModules().map(\.key))
            if !modules.contains("transformer") && modules.contains("model") { renaming = ("transformer.", "model.") }
        }
        let aside = PEFTAdapter.HeadsAside()
        try PEFTAdapter.$pathRenaming.withValue(renaming) {
            try PEFTAdapter.$headsAside.withValue(aside) { try load(directory: directory, into: model, name: name) }
        }
        guard !aside.entries.isEmpty else { return nil }
        do {
            guard let task = taskType.flatMap(AdapterTaskHead.Task.init(rawValue:)) else {
                throw ModelError.badConfig(
                    path: configURL.path,
                    detail:
                        "the adapter saves a task head (\(aside.entries.map(\.key).sorted().joined(separator: ", "))) but its task_type '\(taskType ?? "")' is not SEQ_CLS, TOKEN_CLS or QUESTION_ANS"
                )
            }
            guard let width = model.encoderShape?.hidden else {
                throw ModelError.badInput("a task head needs a model with transformer blocks")
            }
            let labelsURL = directory.appendingPathComponent("labels.json")
            var names: [String]?
            if let data = FileBytes.contents(labelsURL.path) {
                guard let list = (try? JSONSerialization.jsonObject(with: data)) as? [String] else {
                    throw ModelError.badConfig(path: labelsURL.path, detail: "labels.json must be a list of strings")
                }
                names = list
            }
            return try AdapterTaskHead(task: task, entries: aside.entries, width: width, labels: names)
        } catch {
            try? model.deleteAdapter(name)
            throw error
        }
    }
}
