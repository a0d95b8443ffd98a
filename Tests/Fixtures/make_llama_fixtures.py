#!/usr/bin/env python3
"""Writes tiny Llama-family checkpoints (Hugging Face layout), PEFT adapters on them, and their reference outputs.
Run by hand, never in CI:

    ~/.reins-reference/bin/python Tests/Fixtures/make_llama_fixtures.py

Pinned reference stack (Tests/Fixtures/reference-venv.sh): torch==2.15.0 transformers==4.57.6 peft==0.21.2.

Each model goes to Tests/Fixtures/models/<name>/ (save_pretrained) with io.safetensors beside it: int32 input_ids and
a left-padded attention_mask, the logits, the causal-LM loss on a right-padded batch and `grad.<key>` for every
parameter, and greedy continuations of a left-padded batch of two prompts (`generated`, [B, L + new], pad -1 where a
row stopped). Sizes are odd on purpose: widths 30 and 36, head sizes 6 (not a power of two), grouped-query attention
with 6 query heads over 2 key/value heads and 5 over 1, vocabularies 97 and 101. Adapters go to
Tests/Fixtures/adapters/<name>/ (PEFT's save_pretrained) with io.safetensors: the logits with the adapter, the loss and
the adapter's gradients under PEFT's keys. `make_llama_fixtures.py task-heads` writes only the classification and
question-answering adapters (on the committed llama-tiny) that a causal base serves with their heads set aside.
"""
import os
import sys

import torch
from peft import (IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model)
from safetensors.torch import save_file
from transformers import (LlamaConfig, LlamaForCausalLM, LlamaForQuestionAnswering, LlamaForSequenceClassification,
                          LlamaForTokenClassification, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

ROOT = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(2411)


def randomize(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def ints(rows):
    return torch.tensor(rows, dtype=torch.int32)


def save(path, tensors):
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path)
    size = sum(os.path.getsize(os.path.join(os.path.dirname(path), f)) for f in os.listdir(os.path.dirname(path)))
    print(f"{os.path.relpath(os.path.dirname(path), ROOT)}: {len(tensors)} tensors, {size} bytes")


# A left-padded batch (row 1 starts with two pads) for logits, and a right-padded one for the loss.
def batches(vocab, pad):
    ids = ints([[5, 17, 42, vocab - 2, 3, 8, 60, 11], [pad, pad, 23, 7, 88, 1, 9, 4]])
    mask = ints([[1] * 8, [0, 0, 1, 1, 1, 1, 1, 1]])
    train = ints([[9, 4, 77, 12, 30, 2, 6], [40, 41, 3, 19, pad, pad, pad]])
    train_mask = ints([[1] * 7, [1, 1, 1, 1, 0, 0, 0]])
    labels = train.long().masked_fill(train_mask == 0, -100)
    return ids, mask, train, train_mask, labels


def greedy(model, pad, prompts, new=6):
    """Left-padded batch generation with transformers' generate (greedy, KV cache)."""
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=pad,
                         eos_token_id=None)
    return out.to(torch.int32), ints([p + [-1] * (L - len(p)) for p in prompts])


def write_model(name, model, pad):
    out = os.path.join(ROOT, "models", name)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    vocab = model.config.vocab_size
    ids, mask, train, train_mask, labels = batches(vocab, pad)
    with torch.no_grad():
        logits = model(input_ids=ids.long(), attention_mask=mask.long()).logits
    model.zero_grad()
    loss = model(input_ids=train.long(), attention_mask=train_mask.long(), labels=labels).loss
    loss.backward()
    generated, prompts = greedy(model, pad, [[5, 17, 42, 3], [23, 7]])
    tensors = {"input_ids": ids, "attention_mask": mask, "logits": logits, "train_ids": train,
               "train_mask": train_mask, "loss": loss.reshape(1), "generated": generated, "prompts": prompts}
    for key, p in model.named_parameters():
        if p.grad is not None:
            tensors[f"grad.{key}"] = p.grad
    save(os.path.join(out, "io.safetensors"), tensors)
    return ids, mask, train, train_mask, labels


def tiny_llama():
    # Grouped-query attention (6 query heads, 2 key/value heads, head size 6), untied output, llama3 rope scaling.
    cfg = LlamaConfig(vocab_size=101, hidden_size=36, intermediate_size=52, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=False, pad_token_id=100, bos_token_id=1,
                      eos_token_id=2,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    model = randomize(LlamaForCausalLM(cfg))
    write_model("llama-tiny", model, pad=100)
    return model


def tiny_qwen2():
    # q/k/v biases, tied output, 5 query heads over 1 key/value head (multi-query).
    cfg = Qwen2Config(vocab_size=97, hidden_size=30, intermediate_size=44, num_hidden_layers=2, num_attention_heads=5,
                      num_key_value_heads=1, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1000000.0,
                      tie_word_embeddings=True, pad_token_id=96, eos_token_id=95)
    model = randomize(Qwen2ForCausalLM(cfg))
    write_model("qwen2-tiny", model, pad=96)


def tiny_mistral():
    # A sliding window of 3 (shorter than the sequences), linear rope scaling.
    cfg = MistralConfig(vocab_size=101, hidden_size=36, intermediate_size=40, num_hidden_layers=2,
                        num_attention_heads=6, num_key_value_heads=3, head_dim=6, max_position_embeddings=64,
                        sliding_window=3, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                        pad_token_id=100, rope_scaling={"rope_type": "linear", "factor": 2.0})
    model = randomize(MistralForCausalLM(cfg))
    write_model("mistral-tiny", model, pad=100)


def tiny_llama_classifier():
    cfg = LlamaConfig(vocab_size=101, hidden_size=36, intermediate_size=52, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64, num_labels=3,
                      pad_token_id=100, tie_word_embeddings=False)
    model = randomize(LlamaForSequenceClassification(cfg))
    out = os.path.join(ROOT, "models", "llama-cls")
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    # Right padding (pad 100) as the classifier reads the last non-pad token; row 2 is all padding.
    ids = ints([[5, 17, 42, 9, 3], [23, 7, 100, 100, 100], [100, 100, 100, 100, 100]])
    mask = ints([[1] * 5, [1, 1, 0, 0, 0], [0] * 5])
    with torch.no_grad():
        logits = model(input_ids=ids.long(), attention_mask=mask.long()).logits
    save(os.path.join(out, "io.safetensors"), {"input_ids": ids, "attention_mask": mask, "logits": logits})


def adapter(name, base, config, pad, nonzero=True):
    """A PEFT adapter on a fresh copy of `base`: random (non-zero) adapter weights, logits, loss and gradients."""
    model = LlamaForCausalLM(base.config)
    model.load_state_dict(base.state_dict())
    peft_model = get_peft_model(model.eval(), config)
    if nonzero:
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if p.requires_grad:
                    p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "ia3" in n else 0.0))
    peft_model.eval()
    out = os.path.join(ROOT, "adapters", name)
    peft_model.save_pretrained(out)
    ids, mask, train, train_mask, labels = batches(base.config.vocab_size, pad)
    with torch.no_grad():
        logits = peft_model(input_ids=ids.long(), attention_mask=mask.long()).logits
    peft_model.zero_grad()
    loss = peft_model(input_ids=train.long(), attention_mask=train_mask.long(), labels=labels).loss
    loss.backward()
    tensors = {"input_ids": ids, "attention_mask": mask, "logits": logits, "train_ids": train,
               "train_mask": train_mask, "loss": loss.reshape(1)}
    for key, p in peft_model.named_parameters():
        if p.grad is not None:
            tensors[f"grad.{key}"] = p.grad
    save(os.path.join(out, "io.safetensors"), tensors)


def task_adapter(name, head_class, config, base_dir, labels, rename=None, seed=0):
    """A PEFT adapter with its task head (modules_to_save) on a `head_class` model built from the causal checkpoint in
    `base_dir` (its decoder weights; the head random). io.safetensors holds a right-padded batch (pad 100, never a real
    token), its mask and the model's logits (`logits`; for question answering `start_logits` and `end_logits`), which
    a causal base with the adapter and its head set aside must reproduce."""
    base = LlamaForCausalLM.from_pretrained(os.path.join(ROOT, "models", base_dir))
    cfg = base.config
    cfg.num_labels = labels
    generator = torch.Generator().manual_seed(seed)
    model = head_class(cfg)
    state = {k: v for k, v in base.state_dict().items() if k.startswith("model.")}
    if rename:
        state = {rename + k[len("model."):]: v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.split(".")[0] in ("score", "classifier", "qa_outputs") for k in missing), missing
    peft_model = get_peft_model(model.eval(), config)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3 + (1.0 if "ia3" in n else 0.0))
    peft_model.eval()
    out = os.path.join(ROOT, "adapters", name)
    peft_model.save_pretrained(out)
    ids = ints([[5, 17, 42, 9, 3, 61], [23, 7, 88, 100, 100, 100], [40, 100, 100, 100, 100, 100]])
    mask = ints([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        result = peft_model(input_ids=ids.long(), attention_mask=mask.long())
    tensors = {"input_ids": ids, "attention_mask": mask}
    if hasattr(result, "start_logits"):
        tensors["start_logits"], tensors["end_logits"] = result.start_logits, result.end_logits
    else:
        tensors["logits"] = result.logits
    save(os.path.join(out, "io.safetensors"), tensors)


def task_adapters():
    """Classification and QA adapters for a causal base serving them with their heads set aside (reins serve)."""
    task_adapter("llama-seqcls-lora", LlamaForSequenceClassification,
                 LoraConfig(task_type=TaskType.SEQ_CLS, r=3, lora_alpha=6, target_modules=["q_proj", "v_proj"],
                            lora_dropout=0.0), "llama-tiny", labels=3, seed=1)
    task_adapter("llama-seqcls-prefix", LlamaForSequenceClassification,
                 PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=2), "llama-tiny", labels=4, seed=2)
    task_adapter("llama-tokcls-ia3", LlamaForTokenClassification, IA3Config(task_type=TaskType.TOKEN_CLS),
                 "llama-tiny", labels=5, seed=3)
    task_adapter("llama-qa-lora", LlamaForQuestionAnswering,
                 LoraConfig(task_type=TaskType.QUESTION_ANS, r=2, lora_alpha=4,
                            target_modules=["k_proj", "o_proj", "up_proj"], lora_dropout=0.0),
                 "llama-tiny", labels=2, rename="transformer.", seed=4)


if __name__ == "__main__" and sys.argv[1:] == ["task-heads"]:
    task_adapters()
elif __name__ == "__main__":
    llama = tiny_llama()
    tiny_qwen2()
    tiny_mistral()
    tiny_llama_classifier()
    every_linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    adapter("llama-lora", llama, LoraConfig(task_type=TaskType.CAUSAL_LM, r=3, lora_alpha=5,
                                            target_modules=every_linear, lora_dropout=0.0), pad=100)
    adapter("llama-dora", llama, LoraConfig(task_type=TaskType.CAUSAL_LM, r=2, lora_alpha=4, use_dora=True,
                                            target_modules=["q_proj", "v_proj", "down_proj"]), pad=100)
    adapter("llama-ia3", llama, IA3Config(task_type=TaskType.CAUSAL_LM), pad=100)
    adapter("llama-prefix", llama, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3), pad=100)
    adapter("llama-prompt", llama, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4), pad=100)
