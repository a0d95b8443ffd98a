import Foundation
import Reins
import ReinsTensor
import ReinsTestSupport
import Testing

/// Ten training steps of full fine-tuning and of every adapter method reproduce PyTorch's losses step for step
/// (Tests/Fixtures/make_training_fixtures.py: AdamW or SGD, linear warm-up and decay, clipping, weight decay on
/// matrices only), and adapter training leaves the base bit for bit as it was.
struct TrainingTableTests {
    static let directory = Fixtures.directory.appendingPathComponent("training")

    static func expected(_ name: String) throws -> [Double] {
        let json =
            try JSONSerialization.jsonObject(with: Data(contentsOf: directory.appendingPathComponent("expected.json")))
            as! [String: Any]
        return ((json["losses"] as! [String: Any])[name] as! [NSNumber]).map(\.doubleValue)
    }

    static let bertIDs: [[Int32]] = [
        [2, 14, 15, 16, 3, 40, 41, 3], [2, 50, 51, 3, 60, 3], [2, 7, 8, 9, 10, 11, 3, 12, 13, 3],
        [2, 33, 3, 34, 35, 3], [2, 70, 71, 72, 3, 73, 3], [2, 90, 91, 92, 93, 94, 95, 3, 96, 3],
    ]
    static let bertTypes: [[Int32]] = [
        [0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
    ]
    static let bertLabels = [0, 2, 1, 1, 0, 2]

    /// The fixture batch as a classification task: example "i" is row i.
    static func bertTask(_ model: BertForSequenceClassification) throws -> SequenceClassificationTask {
        let examples = bertLabels.enumerated().map { LabeledText(text: String($0.offset), label: $0.element) }
        return try SequenceClassificationTask(model: model, labels: 3, train: examples, evaluation: examples, padID: 0)
        { text, _ in
            (bertIDs[Int(text)!], bertTypes[Int(text)!])
        }
    }

    static func options(_ lr: Float, batch: Int, sgd: Bool = false) -> TrainingOptions {
        var o = TrainingOptions(steps: 10, batchSize: batch, learningRate: lr)
        o.warmupSteps = 2
        o.schedule = .linear
        o.clipNorm = 1
        o.weightDecay = 0.01
        o.optimizer = sgd ? .sgd(momentum: 0.9) : .adamW()
        return o
    }

    @Test(arguments: [
        "full", "full-sgd", "bitfit", "houlsby", "pfeiffer", "adapterbias", "parallel", "lora", "dora", "prefix",
        "prompt", "ia3",
    ])
    func bertLossesMatchPyTorch(method: String) throws {
        let model = try BottleneckAdapterTests().bert()
        if !method.hasPrefix("full") {
            try model.loadAdapter("task", from: Self.directory.appendingPathComponent(method))
        }
        let base = model.namedParameters().filter { !$0.parameter.isTrainable }.map {
            ($0.key, $0.parameter.value.scalars)
        }
        let lr: Float = method == "full" ? 1e-2 : method == "full-sgd" ? 0.3 : 3e-2
        let trainer = try Trainer(
            task: Self.bertTask(model), options: Self.options(lr, batch: 6, sgd: method == "full-sgd"))
        try trainer.run()
        expectClose(
            trainer.history.map(\.loss).map(Float.init), try Self.expected(method).map(Float.init), atol: 1e-4, rtol: 0,
            "\(method): 10 losses vs PyTorch")
        if !method.hasPrefix("full") {
            #expect(!base.isEmpty)
            let after = Dictionary(
                uniqueKeysWithValues: model.namedParameters().map { ($0.key, $0.parameter.value.scalars) })
            for (key, before) in base where !key.hasPrefix("classifier") {
                #expect(after[key] == before, "\(key) changed while training the \(method) adapter")
            }
        }
    }

    @Test(arguments: ["gpt2-full", "gpt2-lora"])
    func gpt2LossesMatchPyTorch(run: String) throws {
        let model = try BottleneckAdapterTests().gpt2()
        if run == "gpt2-lora" { try model.loadAdapter("task", from: Self.directory.appendingPathComponent(run)) }
        let ids: [[Int32]] = [
            [5, 17, 42, 95, 3, 8, 60, 1, 2], [11, 0, 23, 7, 88, 96, 41, 9, 13], [4, 4, 31, 77, 50, 21, 6, 90, 33],
        ]
        let task = try CausalLMTask(model: model, train: ids.map { TokenSequence(ids: $0) }, evaluation: [], padID: 0)
        let trainer = try Trainer(task: task, options: Self.options(run == "gpt2-full" ? 2e-3 : 1e-2, batch: 3))
        try trainer.run()
        expectClose(
            trainer.history.map(\.loss).map(Float.init), try Self.expected(run).map(Float.init), atol: 1e-4, rtol: 0,
            "\(run): 10 losses vs PyTorch")
    }
}
