import Foundation
import Reins
import ReinsTestSupport
import Testing

/// Metrics against scikit-learn, seqeval, sacrebleu and the SQuAD script on fixed inputs (Tests/Fixtures/make_metric_fixtures.py).
struct MetricsTests {
    let json =
        try! JSONSerialization.jsonObject(
            with: Data(contentsOf: Fixtures.directory.appendingPathComponent("metrics/expected.json")))
        as! [String: Any]

    @Test func classificationMetricsMatchScikitLearn() {
        let truth = json["truth"] as! [Int], predicted = json["predicted"] as! [Int]
        #expect(abs(Metrics.accuracy(predicted: predicted, truth: truth) - (json["accuracy"] as! Double)) < 1e-12)
        #expect(abs(Metrics.macroF1(predicted: predicted, truth: truth) - (json["macro_f1"] as! Double)) < 1e-12)
    }

    @Test func entityMetricsMatchSeqeval() {
        let e = json["entities"] as! [String: Any]
        let truth = e["truth"] as! [[String]], predicted = e["predicted"] as! [[String]]
        // Every sequence's entities, as seqeval's get_entities reads them (type, first, last).
        for (tags, spans) in zip(truth + predicted, e["spans"] as! [[[Any]]]) {
            let expected = spans.map {
                Metrics.Entity(type: $0[0] as! String, first: $0[1] as! Int, last: $0[2] as! Int)
            }
            #expect(Metrics.entities(tags) == expected, "entities of \(tags)")
        }
        let scores = Metrics.entityScores(predicted: predicted, truth: truth)
        #expect(abs(scores.precision - (e["precision"] as! Double)) < 1e-12)
        #expect(abs(scores.recall - (e["recall"] as! Double)) < 1e-12)
        #expect(abs(scores.f1 - (e["f1"] as! Double)) < 1e-12)
    }

    @Test func bleuMatchesSacreBLEU() {
        let hyps = json["hypotheses"] as! [String], refs = json["references"] as! [[String]]
        let tokens = json["tokens_13a"] as! [[String]]
        for (h, t) in zip(hyps + refs[0] + refs[1], tokens) {
            #expect(Metrics.tokenize13a(h).map(String.init) == t, "13a tokens of \(h)")
        }
        #expect(abs(Metrics.bleu(hypotheses: hyps, references: refs) - (json["bleu"] as! Double)) < 1e-9)
        #expect(
            abs(
                Metrics.bleu(hypotheses: hyps, references: Array(refs.prefix(1)))
                    - (json["bleu_single_reference"] as! Double)) < 1e-9)
    }

    @Test func questionAnsweringMetricsMatchSQuAD() {
        for case let row as [String: Any] in json["qa"] as! [Any] {
            let p = row["prediction"] as! String, a = row["answers"] as! [String]
            #expect(Metrics.exactMatch(prediction: p, answers: a) == row["exact_match"] as! Double, "EM of \(p)")
            #expect(abs(Metrics.tokenF1(prediction: p, answers: a) - (row["f1"] as! Double)) < 1e-12, "F1 of \(p)")
        }
    }
}

/// BLEU and chrF on translations of the decoder demo's kind (words and short phrases, accents, several references, and
/// the demo's own outputs) against sacreBLEU (Tests/Fixtures/make_translation_metric_fixtures.py).
struct TranslationMetricsTests {
    @Test func bleuAndChrFMatchSacreBLEU() throws {
        let url = Fixtures.directory.appendingPathComponent("metrics/translation.json")
        let cases = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [[String: Any]])
        #expect(cases.count >= 3)
        for c in cases {
            let name = c["name"] as? String ?? "", hyps = c["hypotheses"] as? [String] ?? []
            let refs = c["references"] as? [[String]] ?? []
            let bleu = Metrics.bleu(hypotheses: hyps, references: refs), chrf = Metrics.chrF(hypotheses: hyps, references: refs)
            #expect(abs(bleu - (c["bleu"] as? Double ?? .nan)) < 1e-9, "\(name) BLEU \(bleu)")
            #expect(abs(chrf - (c["chrf"] as? Double ?? .nan)) < 1e-9, "\(name) chrF \(chrf)")
            let charBLEU = Metrics.bleu(hypotheses: hyps, references: refs, tokenizer: .character)
            #expect(abs(charBLEU - (c["bleu_char"] as? Double ?? .nan)) < 1e-9, "\(name) character BLEU \(charBLEU)")
        }
    }
}
