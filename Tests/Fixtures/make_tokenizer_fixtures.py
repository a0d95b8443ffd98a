#!/usr/bin/env python3
"""Trains a tiny WordPiece and a tiny byte-level BPE tokenizer with Hugging Face `tokenizers`, and records the ids they
give for hard texts (CJK, emoji, accents, runs of spaces and tabs, newlines, long words, contractions, special
tokens). Run by hand, never in CI:

    ~/.reins-reference/bin/python Tests/Fixtures/make_tokenizer_fixtures.py

Pinned: tokenizers==0.22.2 (see Tests/Fixtures/reference-venv.sh).
"""
import json
import os

from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer, Tokenizer
from tokenizers.processors import BertProcessing

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenizers")
CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's a dog's life, isn't it?",
    "Fine-tuning adapters: LoRA, prefix tuning, BitFit and Houlsby adapters steer one frozen base model.",
    "Café, naïve, résumé, Ångström and Zürich keep their accents in cased text.",
    "中文分词测试：我们在北京学习语言模型。日本語のテキストも少しあります。",
    "Numbers like 3.14159, 2026 and 1,000,000 appear; emoji too 🙂🚀 and symbols #@$%^&*.",
    "Tabs\tand  double  spaces   and\nnewlines\n\nare whitespace.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
    "We're sure they'll say you've done what I'd do; I'm sure.",
] * 20

TEXTS = [
    "Hello, world!",
    "The quick brown fox's jumps: isn't it LAZY?",
    "Café naïve RÉSUMÉ Ångström",
    "中文分词测试 and 日本語",
    "emoji 🙂🚀 and 👩‍👩‍👧 family",
    "tabs\tand  two spaces   three\nnew line\n\n  indented",
    "   leading and trailing spaces   ",
    "supercalifragilisticexpialidocious" * 4,
    "We're done, they'll go; I'd say you've I'm",
    "numbers 3.14159 and 1,000,000",
    "weird\u00a0nbsp\u2028line sep\u200bzero width\u0007bell",
    "",
    "end of text <|endoftext|> then more<|endoftext|>",
]
# Where each piece came from (character offsets, as question answering cuts answers): decomposed accents and control
# characters that normalization drops, at piece boundaries and inside pieces.
OFFSET_TEXTS = TEXTS + [
    "cafe\u0301 Cafe\u0301s Pla\u0301ying",
    "width\u0007bell sep\u200bzero \u0007abc",
    "Café naïve RÉSUMÉ Ångström İstanbul ǅemal ﬁne",
]
PAIRS = [("Where is the fox?", "The quick brown fox jumps over the lazy dog."), ("short", "a much longer second text with many words in it")]


def wordpiece():
    os.makedirs(os.path.join(OUT, "wordpiece"), exist_ok=True)
    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1,
                            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], limit_alphabet=300)
    # As in a real BERT tokenizer.json: [CLS] A [SEP] (B [SEP]) with type ids 0 then 1.
    tok.post_processor = BertProcessing(("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]")))
    tok.save_model(os.path.join(OUT, "wordpiece"))
    tok.save(os.path.join(OUT, "wordpiece", "tokenizer.json"))
    t = Tokenizer.from_file(os.path.join(OUT, "wordpiece", "tokenizer.json"))
    single = [t.encode(x).ids for x in TEXTS]
    pairs = [{"a": a, "b": b, "ids": e.ids, "type_ids": e.type_ids} for (a, b) in PAIRS for e in [t.encode(a, b)]]
    t.enable_truncation(max_length=9, strategy="longest_first")
    truncated = [{"a": a, "b": b, "ids": e.ids, "type_ids": e.type_ids} for (a, b) in PAIRS for e in [t.encode(a, b)]]
    truncated_single = [t.encode(x).ids for x in TEXTS]
    t.no_truncation()
    decoded = [t.decode(ids) for ids in single]
    offsets = [{"text": x, "ids": e.ids, "offsets": e.offsets} for x in OFFSET_TEXTS for e in [t.encode(x, add_special_tokens=False)]]
    return {"texts": TEXTS, "ids": single, "pairs": pairs, "truncated_pairs_max9": truncated,
            "truncated_max9": truncated_single, "decoded": decoded, "offsets": offsets}


def bpe():
    os.makedirs(os.path.join(OUT, "bpe"), exist_ok=True)
    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(CORPUS, vocab_size=600, min_frequency=2, special_tokens=["<|endoftext|>"])
    tok.save_model(os.path.join(OUT, "bpe"))
    tok.save(os.path.join(OUT, "bpe", "tokenizer.json"))
    t = Tokenizer.from_file(os.path.join(OUT, "bpe", "tokenizer.json"))
    ids = [t.encode(x).ids for x in TEXTS]
    return {"texts": TEXTS, "ids": ids, "decoded": [t.decode(i, skip_special_tokens=False) for i in ids]}


if __name__ == "__main__":
    expected = {"wordpiece": wordpiece(), "bpe": bpe()}
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
    print("wrote", sorted(os.listdir(OUT)), os.listdir(os.path.join(OUT, "bpe")))
