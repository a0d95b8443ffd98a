#!/usr/bin/env python3
"""Reference values of the evaluation metrics on fixed inputs. Run by hand, never in CI:

    ~/.reins-reference/bin/python Tests/Fixtures/make_metric_fixtures.py

Pinned: torch==2.15.0, transformers==4.57.6 (learning-rate schedules), scikit-learn==1.9.1 (accuracy_score, f1_score average="macro"), sacrebleu==2.6.0 (corpus_bleu, tokenizer 13a),
seqeval==1.2.2 (entity precision, recall and F1, default mode).
Exact match and token F1 follow the SQuAD v1.1 evaluation script's definitions, written out below as that script does.
"""
import collections
import json
import os
import re
import string

import sacrebleu
import torch
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup
from sklearn.metrics import accuracy_score, f1_score
from seqeval.metrics import f1_score as entity_f1, precision_score as entity_precision, recall_score as entity_recall
from seqeval.metrics.sequence_labeling import get_entities

HERE = os.path.dirname(os.path.abspath(__file__))

truth = [0, 1, 2, 2, 1, 0, 3, 3, 3, 1, 4, 0]
pred = [0, 2, 2, 2, 1, 1, 3, 0, 3, 1, 5, 0]

hyps = ["The cat sat on the mat.", "It's 3.5 km away, isn't it?", "Prices rose by 2,000 (about 5%) in 2019-2020!",
        "He said: \"no\" & left", "a b c d e f", "completely different words here"]
refs = [["The cat is sitting on the mat.", "It is 3.5 km away, is it not?", "Prices rose 2,000 (roughly 5%) in 2019-2020.",
         "He said \"no\" and left", "a b c d e g", "nothing in common at all"],
        ["A cat sat on the mat.", "It's 3.5 kilometres away, right?", "Prices went up by 2,000 in 2019-2020!",
         "He replied: \"no\" & left.", "a b c d", "totally different words here"]]


def normalize(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1(p, g):
    p, g = normalize(p).split(), normalize(g).split()
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


qa = [("the Eiffel Tower", ["Eiffel Tower", "The Eiffel tower in Paris"]), ("in 1889.", ["1889"]),
      ("a big red dog", ["the red dog"]), ("nothing", ["something else"])]

# Tag sequences with the usual mistakes: a wrong boundary, a wrong type, I- with no B-, a type change inside an
# entity, IOBES tags, and adjacent entities of one type.
tags_true = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "I-ORG", "O", "B-PER"],
             ["B-MISC", "I-MISC", "B-MISC", "O"], ["S-PER", "O", "B-ORG", "I-ORG", "E-ORG", "O", "S-LOC"],
             ["O", "O", "O"], ["I-LOC", "I-LOC", "O", "B-PER", "B-PER"]]
tags_pred = [["B-PER", "I-PER", "O", "I-LOC"], ["O", "B-ORG", "I-ORG", "O", "O", "B-LOC"],
             ["B-MISC", "I-MISC", "I-MISC", "O"], ["S-PER", "O", "B-ORG", "E-ORG", "E-ORG", "O", "B-LOC"],
             ["B-PER", "O", "O"], ["I-LOC", "I-PER", "O", "B-PER", "I-PER"]]

out = {
    "truth": truth, "predicted": pred,
    "accuracy": accuracy_score(truth, pred), "macro_f1": f1_score(truth, pred, average="macro"),
    "hypotheses": hyps, "references": refs,
    "bleu": sacrebleu.corpus_bleu(hyps, refs, tokenize="13a").score,
    "bleu_single_reference": sacrebleu.corpus_bleu(hyps, refs[:1], tokenize="13a").score,
    "tokens_13a": [sacrebleu.tokenizers.tokenizer_13a.Tokenizer13a()(h).split() for h in hyps + refs[0] + refs[1]],
    "entities": {"truth": tags_true, "predicted": tags_pred,
                 "spans": [[[t, a, b] for t, a, b in get_entities(seq)] for seq in tags_true + tags_pred],
                 "precision": entity_precision(tags_true, tags_pred), "recall": entity_recall(tags_true, tags_pred),
                 "f1": entity_f1(tags_true, tags_pred)},
    "qa": [{"prediction": p, "answers": a, "exact_match": max(float(normalize(p) == normalize(x)) for x in a),
            "f1": max(f1(p, x) for x in a)} for p, a in qa],
}


def factors(make, steps=13):
    """The learning-rate factor used by each of `steps` updates (transformers' schedules, warm-up 3, total 11)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


out["schedules"] = {
    "constant": factors(lambda o: get_constant_schedule_with_warmup(o, 3)),
    "linear": factors(lambda o: get_linear_schedule_with_warmup(o, 3, 11)),
    "cosine": factors(lambda o: get_cosine_schedule_with_warmup(o, 3, 11)),
}
with open(os.path.join(HERE, "metrics", "expected.json"), "w") as f:
    json.dump(out, f, indent=1)
print(out["accuracy"], out["macro_f1"], out["bleu"], out["bleu_single_reference"])
