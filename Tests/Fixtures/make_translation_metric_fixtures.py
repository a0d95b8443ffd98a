#!/usr/bin/env python3
"""sacreBLEU's BLEU and chrF on the translation demo's kind of output. Run by hand, never in CI:

    ~/.reins-reference/bin/python Tests/Fixtures/make_translation_metric_fixtures.py

Pinned: sacrebleu==2.6.0 (corpus_bleu with tokenizers 13a and char, corpus_chrf with its defaults). Cases: hand-made ones
(accents, apostrophes, hyphens, empty and repeated outputs, several references), and the outputs the decoder demo
printed for its held-out items (Tests/Fixtures/metrics/demo-translations.json, copied from a `reins demo decoder`
run's outputs.json): every method's hypotheses against the same references.
"""
import json
import os

import sacrebleu

HERE = os.path.dirname(os.path.abspath(__file__))
cases = [
    {"name": "accents and phrases",
     "hypotheses": ["abandonner", "l'abbaye", "une petite maison", "être d'accord", "", "chat chat chat", "à côté de"],
     "references": [["abandonner", "abbaye", "une maison", "être d'accord", "rien", "chat", "à côté de"]]},
    {"name": "two references",
     "hypotheses": ["le garçon", "très bien", "grand-mère", "aujourd'hui", "Élève"],
     "references": [["le garçon", "bien", "grand-mère", "aujourd'hui", "élève"],
                    ["un garçon", "très bien", "mamie", "ce jour", "étudiant"]]},
    {"name": "a 4-gram total without a match (smoothed)",
     "hypotheses": ["le chat noir dort sur le canapé", "bonjour", "une maison"],
     "references": [["le chat noir dort", "bonjour", "la maison"]]},
    {"name": "a verbose output beside single words",
     "hypotheses": ["Je suis le couleur de la femme.", "abolition", "marsh", "blanc"],
     "references": [["blanc", "abolition", "marais", "blanc"]]},
    {"name": "phrases long enough for 4-grams",
     "hypotheses": ["il fait très beau aujourd'hui à Paris", "je ne sais pas du tout", "la maison de ma grand-mère est grande"],
     "references": [["il fait beau aujourd'hui à Paris", "je ne sais pas", "la maison de ma grand-mère est très grande"]]},
]
demo = os.path.join(HERE, "metrics", "demo-translations.json")
if os.path.exists(demo):
    runs = json.load(open(demo))
    for method, hyps in runs["outputs"].items():
        cases.append({"name": f"demo {method}", "hypotheses": hyps, "references": [runs["references"]]})
for c in cases:
    c["bleu"] = sacrebleu.corpus_bleu(c["hypotheses"], c["references"], tokenize="13a").score
    c["bleu_char"] = sacrebleu.corpus_bleu(c["hypotheses"], c["references"], tokenize="char").score
    c["chrf"] = sacrebleu.corpus_chrf(c["hypotheses"], c["references"]).score
json.dump(cases, open(os.path.join(HERE, "metrics", "translation.json"), "w"), indent=1, ensure_ascii=False)
for c in cases:
    print(c["name"], round(c["bleu"], 4), round(c["bleu_char"], 4), round(c["chrf"], 4))
