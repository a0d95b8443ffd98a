import Foundation

/// Evaluation metrics, each defined as its usual reference implementation defines it (scikit-learn for accuracy and
/// F1, seqeval for entity F1, the SQuAD script for exact match and token F1, sacrebleu for BLEU).
public enum Metrics {
    /// The fraction of positions where `predicted` equals `truth` (0 for empty input).
    public static func accuracy<T: Equatable>(predicted: [T], truth: [T]) -> Double {
        guard !truth.isEmpty, predicted.count == truth.count else { return 0 }
        return Double(zip(predicted, truth).filter { $0 == $1 }.count) / Double(truth.count)
    }

    /// The unweighted mean of per-class F1 over every class that occurs in `truth` or `predicted`, as scikit-learn's
    /// `f1_score(average="macro")` (a class with no true or predicted positives scores 0).
    public static func macroF1(predicted: [Int], truth: [Int]) -> Double {
        // Sorted: a Set's order changes from process to process, and so would the last bit of the sum.
        let classes = Set(predicted).union(truth).sorted()
        guard !classes.isEmpty, predicted.count == truth.count else { return 0 }
        var sum = 0.0
        for c in classes {
            var tp = 0.0, fp = 0.0, fn = 0.0
            for (p, t) in zip(predicted, truth) {
                if p == c && t == c { tp += 1 } else if p == c { fp += 1 } else if t == c { fn += 1 }
            }
            sum += tp == 0 ? 0 : 2 * tp / (2 * tp + fp + fn)
        }
        return sum / Double(classes.count)
    }

    /// A labelled span of a tag sequence: its type and its first and last positions.
    public struct Entity: Hashable, Sendable {
        public var type: String, first: Int, last: Int
        public init(type: String, first: Int, last: Int) { (self.type, self.first, self.last) = (type, first, last) }
    }

    /// The entities of a tag sequence in the BIO / IOBES family (`B-PER`, `I-PER`, `E-PER`, `S-PER`, `O`), read as the
    /// CoNLL evaluation script (and seqeval's default mode) reads them: an entity starts at `B` or `S`, at `I` or `E`
    /// after `O`, `E` or `S`, or wherever the type changes; it ends before such a start or an `O`, and after `E` or `S`.
    /// A tag without one of these prefixes (`PER`) is read as `I-PER` (seqeval defines no reading for it).
    public static func entities(_ tags: [String]) -> [Entity] {
        func split(_ tag: String) -> (prefix: Character, type: String) {
            if tag == "O" || tag.isEmpty { return ("O", "") }
            let parts = tag.split(separator: "-", maxSplits: 1)
            if parts.count == 2, parts[0].count == 1, let p = parts[0].first, "BIES".contains(p) {
                return (p, String(parts[1]))
            }
            return ("I", tag)
        }
        var result: [Entity] = []
        var open: (type: String, first: Int)?
        var previous: (prefix: Character, type: String) = ("O", "")
        for (i, tag) in (tags + ["O"]).enumerated() {
            let (p, type) = split(tag)
            let (pp, ptype) = previous
            let ends =
                pp == "E" || pp == "S" || (pp != "O" && (p == "B" || p == "S" || p == "O"))
                || (pp != "O" && ptype != type)
            let starts =
                p == "B" || p == "S" || (p != "O" && (pp == "E" || pp == "S" || pp == "O"))
                || (p != "O" && ptype != type)
            if ends, let o = open { result.append(Entity(type: o.type, first: o.first, last: i - 1)); open = nil }
            if starts { open = (type, i) }
            previous = (p, type)
        }
        return result
    }

    /// Entity-level precision, recall and F1, micro-averaged over every sequence (seqeval's default `f1_score`): an
    /// entity counts only if its type and both ends match. 0 where a denominator is 0.
    public static func entityScores(predicted: [[String]], truth: [[String]]) -> (
        precision: Double, recall: Double, f1: Double
    ) {
        var correct = 0, predictedCount = 0, trueCount = 0
        for (p, t) in zip(predicted, truth) {
            let (pe, te) = (entities(p), Set(entities(t)))
            correct += pe.filter(te.contains).count
            predictedCount += pe.count
            trueCount += te.count
        }
        let precision = predictedCount == 0 ? 0 : Double(correct) / Double(predictedCount)
        let recall = trueCount == 0 ? 0 : Double(correct) / Double(trueCount)
        return (precision, recall, precision + recall == 0 ? 0 : 2 * precision * recall / (precision + recall))
    }

    /// Perplexity from a mean per-token negative log-likelihood (natural log).
    public static func perplexity(meanNegativeLogLikelihood nll: Double) -> Double { exp(nll) }

    // MARK: question answering (SQuAD v1.1 evaluation script's definitions)

    /// Lower-cased, punctuation and the articles a/an/the removed, whitespace collapsed.
    public static func normalizeAnswer(_ s: String) -> String {
        let lower = s.lowercased()
        let noPunct = String(lower.unicodeScalars.filter { !isASCIIPunctuation($0) }.map(Character.init))
        let words = noPunct.split(whereSeparator: { $0.isWhitespace }).filter { !["a", "an", "the"].contains($0) }
        return words.joined(separator: " ")
    }

    static func isASCIIPunctuation(_ u: Unicode.Scalar) -> Bool {
        // Python's string.punctuation
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".unicodeScalars.contains(u)
    }

    /// 1 if the normalized strings are equal, else 0; the best over the reference answers.
    public static func exactMatch(prediction: String, answers: [String]) -> Double {
        answers.map { normalizeAnswer(prediction) == normalizeAnswer($0) ? 1.0 : 0.0 }.max() ?? 0
    }

    /// Token-overlap F1 of the normalized strings; the best over the reference answers.
    public static func tokenF1(prediction: String, answers: [String]) -> Double {
        answers.map { answer -> Double in
            let p = normalizeAnswer(prediction).split(separator: " "), g = normalizeAnswer(answer).split(separator: " ")
            var counts: [Substring: Int] = [:]
            for t in g { counts[t, default: 0] += 1 }
            var common = 0
            for t in p where (counts[t] ?? 0) > 0 { common += 1; counts[t]! -= 1 }
            guard common > 0 else { return 0 }
            let precision = Double(common) / Double(p.count), recall = Double(common) / Double(g.count)
            return 2 * precision * recall / (precision + recall)
        }.max() ?? 0
    }

    // MARK: BLEU (Papineni et al. 2002), as sacrebleu's corpus_bleu with its default 13a tokenizer

    /// Corpus BLEU in percent: clipped n-gram precisions (n = 1...4) pooled over the corpus, geometric mean, brevity
    /// penalty against the closest reference length, and sacrebleu's default "exp" smoothing of an order without a
    /// match. `references[k][i]` is reference k for hypothesis i.
    /// How BLEU splits text into tokens, as sacrebleu's tokenizers of these names.
    public enum BLEUTokenizer: String, Sendable {
        /// `13a` (mteval-v13a, sacrebleu's default): words, with punctuation split off.
        case thirteenA = "13a"
        /// `char`: every character but whitespace is a token (n-grams of characters), which gives one-word outputs
        /// n-grams to match.
        case character = "char"
    }

    public static func bleu(hypotheses: [String], references: [[String]], tokenizer: BLEUTokenizer = .thirteenA) -> Double {
        bleu(statistics: bleuStatistics(hypotheses: hypotheses, references: references, tokenizer: tokenizer))
    }

    /// BLEU's sufficient statistics, which add up over parts of a corpus: matched and total n-grams of orders 1...4,
    /// then the hypothesis and the closest reference lengths (10 numbers).
    public static func bleuStatistics(
        hypotheses: [String], references: [[String]], tokenizer: BLEUTokenizer = .thirteenA
    ) -> [Double] {
        let tokenize: (String) -> [Substring] = { text in
            switch tokenizer {
            case .thirteenA: return tokenize13a(text)
            case .character:
                return text.unicodeScalars.filter { !$0.properties.isWhitespace }.map { Substring(String($0)) }
            }
        }
        var matches = [Double](repeating: 0, count: 4), totals = [Double](repeating: 0, count: 4)
        var hypLength = 0.0, refLength = 0.0
        for (i, h) in hypotheses.enumerated() {
            let hyp = tokenize(h)
            let refs = references.compactMap { i < $0.count ? tokenize($0[i]) : nil }
            hypLength += Double(hyp.count)
            // The closest reference length; ties go to the shorter.
            let lengths = refs.map(\.count).sorted()
            let closest = lengths.min { (a: Int, b: Int) -> Bool in abs(a - hyp.count) < abs(b - hyp.count) }
            refLength += Double(closest ?? 0)
            for n in 1...4 {
                let counts = ngrams(hyp, n)
                var maxRef: [[Substring]: Int] = [:]
                for r in refs { for (g, c) in ngrams(r, n) { maxRef[g] = max(maxRef[g] ?? 0, c) } }
                for (g, c) in counts { matches[n - 1] += Double(min(c, maxRef[g] ?? 0)) }
                totals[n - 1] += Double(max(0, hyp.count - n + 1))
            }
        }
        return matches + totals + [hypLength, refLength]
    }

    /// Corpus BLEU from ``bleuStatistics(hypotheses:references:tokenizer:)`` (summed over parts of the corpus).
    public static func bleu(statistics: [Double]) -> Double {
        guard statistics.count == 10 else { return 0 }
        let matches = Array(statistics[0..<4]), totals = Array(statistics[4..<8])
        let (hypLength, refLength) = (statistics[8], statistics[9])
        guard matches.contains(where: { $0 > 0 }) else { return 0 }
        // sacrebleu's default "exp" smoothing (mteval-v13a's): the k-th order without a match counts as 1 / 2^k of a
        // match; an order with no n-grams at all (every hypothesis shorter than n) has precision 0, and sacrebleu's
        // log of 0 is -9999999999, which makes the score 0 to any printed precision.
        var smooth = 1.0, logSum = 0.0
        for n in 0..<4 {
            let precision: Double
            if totals[n] == 0 {
                precision = 0
            } else if matches[n] == 0 {
                smooth *= 2
                precision = 100 / (smooth * totals[n])
            } else {
                precision = 100 * matches[n] / totals[n]
            }
            logSum += precision > 0 ? log(precision) : -9_999_999_999
        }
        let brevity = hypLength < refLength ? (hypLength > 0 ? exp(1 - refLength / hypLength) : 0) : 1
        return brevity * exp(logSum / 4)
    }

    // MARK: chrF (Popović 2015), as sacrebleu's corpus_chrf with its defaults

    /// Corpus chrF in percent, as sacrebleu's `corpus_chrf` (character n-grams of orders 1...6 over the text with its
    /// whitespace removed, β = 2, no word n-grams, no lowercasing): per hypothesis, the n-gram statistics of the
    /// reference with the best chrF; the statistics summed over the corpus; precision and recall averaged over the
    /// orders both sides have n-grams of, then F-β. `references[k][i]` is reference k for hypothesis i.
    public static func chrF(hypotheses: [String], references: [[String]], order: Int = 6, beta: Double = 2) -> Double {
        var totals = [Int](repeating: 0, count: 3 * order)
        for (i, h) in hypotheses.enumerated() {
            let hyp = characterNgrams(h, order)
            var best: [Int] = [], bestScore = -1.0
            for refs in references where i < refs.count {
                let ref = characterNgrams(refs[i], order)
                var stats: [Int] = []
                for n in 0..<order {
                    var hypCount = 0, matches = 0
                    for (g, c) in hyp[n] {
                        hypCount += c
                        if let r = ref[n][g] { matches += min(c, r) }
                    }
                    // A hypothesis n-gram counts only where the reference has n-grams of that order.
                    stats += [ref[n].isEmpty ? 0 : hypCount, ref[n].values.reduce(0, +), matches]
                }
                let score = chrFScore(stats, order: order, beta: beta)
                if score > bestScore { (best, bestScore) = (stats, score) }
            }
            for (k, v) in best.enumerated() { totals[k] += v }
        }
        return chrFScore(totals, order: order, beta: beta)
    }

    static func chrFScore(_ stats: [Int], order: Int, beta: Double) -> Double {
        let factor = beta * beta
        var precision = 0.0, recall = 0.0, effective = 0
        for n in 0..<order {
            let (hyp, ref, match) = (stats[3 * n], stats[3 * n + 1], stats[3 * n + 2])
            guard hyp > 0, ref > 0 else { continue }
            precision += Double(match) / Double(hyp)
            recall += Double(match) / Double(ref)
            effective += 1
        }
        guard effective > 0 else { return 0 }
        (precision, recall) = (precision / Double(effective), recall / Double(effective))
        guard precision + recall > 0 else { return 0 }
        return 100 * (1 + factor) * precision * recall / (factor * precision + recall)
    }

    /// Counts of the character n-grams (n = 1...order; characters are Unicode scalars, as Python's) of `text` with its
    /// whitespace removed.
    static func characterNgrams(_ text: String, _ order: Int) -> [[String: Int]] {
        let scalars = Array(text.unicodeScalars.filter { !$0.properties.isWhitespace })
        return (1...order).map { n in
            var counts: [String: Int] = [:]
            if scalars.count >= n {
                for i in 0...(scalars.count - n) {
                    var s = String.UnicodeScalarView()
                    s.append(contentsOf: scalars[i..<(i + n)])
                    counts[String(s), default: 0] += 1
                }
            }
            return counts
        }
    }

    static func ngrams(_ tokens: [Substring], _ n: Int) -> [[Substring]: Int] {
        var counts: [[Substring]: Int] = [:]
        if tokens.count >= n { for i in 0...(tokens.count - n) { counts[Array(tokens[i..<(i + n)]), default: 0] += 1 } }
        return counts
    }

    /// sacrebleu's 13a tokenizer (mteval-v13a): unescape a few entities, then four regular-expression passes —
    /// split off the symbols `{|}~[\]^_` + "`" + ` !"#$%&()*+:;<=>?@/` (not the apostrophe or hyphen), split a period or comma
    /// unless a digit precedes it, split one unless a digit follows it, split a hyphen after a digit — and split on
    /// whitespace.
    public static func tokenize13a(_ line: String) -> [Substring] {
        var s = line.replacingOccurrences(of: "<skipped>", with: "").replacingOccurrences(of: "-\n", with: "")
            .replacingOccurrences(of: "\n", with: " ")
        if s.contains("&") {
            for (a, b) in [("&quot;", "\""), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")] {
                s = s.replacingOccurrences(of: a, with: b)
            }
        }
        s = " \(s) "  // as sacrebleu: the padding lets a final period split off after a digit
        for (pattern, template) in thirteenA {
            s = pattern.stringByReplacingMatches(in: s, range: NSRange(s.startIndex..., in: s), withTemplate: template)
        }
        return s.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" })
    }

    static let thirteenA: [(NSRegularExpression, String)] = [
        (#"([\{-\~\[-\` -\&\(-\+\:-\@\/])"#, " $1 "),
        (#"([^0-9])([\.,])"#, "$1 $2 "),
        (#"([\.,])([^0-9])"#, " $1 $2"),
        (#"([0-9])(-)"#, "$1 $2 "),
    ].map { (try! NSRegularExpression(pattern: $0.0), $0.1) }  // constant patterns, valid (the metric tests compile them)
}
