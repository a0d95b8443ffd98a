#!/usr/bin/env python3
"""By-hand sweep: PEFT adapters of many kinds, none of them a committed fixture, made on the tiny fixture models with
random weights, saved with `save_pretrained`, then run through `reins logits --adapter` and compared with PEFT's own
outputs. Never run in CI:

    swift build -c release --product reins
    HF_HUB_OFFLINE=1 ~/.reins-reference/bin/python Tests/Fixtures/check_peft_adapter_sweep.py [/tmp/peft-sweep]

Pinned: torch==2.15.0, transformers==4.57.6, peft==0.21.2 (Tests/Fixtures/reference-venv.sh).
"""
import os
import subprocess
import sys

import torch
from peft import (AdaLoraConfig, IA3Config, LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model)
from safetensors.torch import load_file, save_file
from transformers import (BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification,
                          BertModel, GPT2ForSequenceClassification, GPT2LMHeadModel)

HERE = os.path.dirname(os.path.abspath(__file__))
REINS = os.path.join(HERE, "..", "..", ".build", "release", "reins")
OUT = sys.argv[1] if len(sys.argv) > 1 else "/tmp/peft-sweep"
torch.manual_seed(77)

GPT2 = {"input_ids": [[5, 17, 42, 95, 3, 8, 60], [11, 0, 23, 7, 88, 96, 96]], "attention_mask": [[1] * 7, [1] * 5 + [0, 0]]}
BERT = {"input_ids": [[2, 14, 15, 16, 3, 40, 41, 3, 0], [2, 50, 51, 3, 60, 3, 0, 0, 0]],
        "token_type_ids": [[0, 0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 0, 0, 0]],
        "attention_mask": [[1] * 8 + [0], [1] * 6 + [0] * 3]}

CASES = [
    ("gpt2-lora-all-linear", "gpt2-lm", GPT2LMHeadModel, GPT2,
     LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.1, task_type="CAUSAL_LM")),
    ("gpt2-lora-patterns", "gpt2-lm", GPT2LMHeadModel, GPT2,
     LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"], layers_to_transform=[1], fan_in_fan_out=True,
                rank_pattern={"c_fc": 5}, alpha_pattern={"transformer.h.1.attn.c_attn": 7}, task_type="CAUSAL_LM")),
    ("bert-cls-lora-alpha-regex", "bert-cls", BertForSequenceClassification, BERT,
     LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], alpha_pattern={r"layer\.1\..*query": 9, "value": 1},
                task_type="SEQ_CLS")),
    ("gpt2-lora-save-ln-f", "gpt2-lm", GPT2LMHeadModel, GPT2,
     LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], modules_to_save=["ln_f", "wpe"], fan_in_fan_out=True, task_type="CAUSAL_LM")),
    ("bert-cls-lora-save-pooler", "bert-cls", BertForSequenceClassification, BERT,
     LoraConfig(r=2, lora_alpha=4, target_modules=["query"], modules_to_save=["classifier", "pooler", "embeddings.LayerNorm"], task_type="SEQ_CLS")),
    ("gpt2-cls-lora", "gpt2-cls", GPT2ForSequenceClassification, GPT2,
     LoraConfig(r=3, lora_alpha=6, target_modules=["c_attn", "attn.c_proj"], fan_in_fan_out=True, task_type="SEQ_CLS")),
    ("gpt2-cls-ia3", "gpt2-cls", GPT2ForSequenceClassification, GPT2,
     IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"], fan_in_fan_out=True, task_type="SEQ_CLS")),
    ("gpt2-prefix-projection", "gpt2-lm", GPT2LMHeadModel, GPT2,
     PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=17, task_type="CAUSAL_LM")),
    ("gpt2-lora-wte-rslora", "gpt2-lm", GPT2LMHeadModel, GPT2,
     LoraConfig(r=4, lora_alpha=3, target_modules=["wte", "wpe", "mlp.c_proj"], use_rslora=True, fan_in_fan_out=True, task_type="CAUSAL_LM")),
    ("bert-tok-lora", "bert-tok", BertForTokenClassification, BERT,
     LoraConfig(r=3, lora_alpha=5, target_modules=["query", "key", "value", "dense"], task_type="TOKEN_CLS")),
    ("bert-qa-lora", "bert-qa", BertForQuestionAnswering, BERT,
     LoraConfig(r=2, lora_alpha=2, target_modules=["query", "value"], task_type="QUESTION_ANS")),
    ("bert-mlm-lora", "bert-mlm", BertForMaskedLM, BERT,
     LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value", "dense"])),
    ("bert-base-lora", "bert-base", BertModel, BERT,
     LoraConfig(r=2, lora_alpha=4, target_modules=["query", "pooler.dense"], task_type="FEATURE_EXTRACTION")),
    ("bert-cls-lora-bias-all", "bert-cls", BertForSequenceClassification, BERT,
     LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], bias="all", task_type="SEQ_CLS")),
    ("bert-cls-lora-bias-lora-only", "bert-cls", BertForSequenceClassification, BERT,
     LoraConfig(r=2, lora_alpha=4, target_modules=["key", "intermediate.dense"], bias="lora_only", task_type="SEQ_CLS")),
    ("bert-cls-dora-rslora", "bert-cls", BertForSequenceClassification, BERT,
     LoraConfig(r=3, lora_alpha=4, target_modules=["query", "key", "value", "dense"], use_dora=True, use_rslora=True, task_type="SEQ_CLS")),
    ("bert-cls-lora-regex", "bert-cls", BertForSequenceClassification, BERT,
     LoraConfig(r=2, lora_alpha=4, target_modules=r".*layer\.1\.attention\.self\.(query|value)", task_type="SEQ_CLS")),
    ("bert-cls-prefix-projection", "bert-cls", BertForSequenceClassification, BERT,
     PrefixTuningConfig(num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=9, task_type="SEQ_CLS")),
    ("bert-cls-ptuning-lstm", "bert-cls", BertForSequenceClassification, BERT,
     PromptEncoderConfig(num_virtual_tokens=3, encoder_reparameterization_type="LSTM", encoder_hidden_size=8, task_type="SEQ_CLS")),
    ("bert-tok-ia3", "bert-tok", BertForTokenClassification, BERT,
     IA3Config(target_modules=["query", "value", "output.dense"], feedforward_modules=["output.dense"], task_type="TOKEN_CLS")),
    ("gpt2-prompt", "gpt2-lm", GPT2LMHeadModel, GPT2, PromptTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM")),
    ("gpt2-lora-lm-head", "gpt2-lm", GPT2LMHeadModel, GPT2,
     LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "lm_head"], fan_in_fan_out=True, task_type="CAUSAL_LM")),
    ("bert-mlm-lora-decoder", "bert-mlm", BertForMaskedLM, BERT,
     LoraConfig(r=2, lora_alpha=4, target_modules=["decoder", "word_embeddings"])),
    ("gpt2-adalora", "gpt2-lm", GPT2LMHeadModel, GPT2,
     AdaLoraConfig(init_r=3, total_step=10, lora_alpha=5, target_modules=["c_attn", "mlp.c_proj"], fan_in_fan_out=True, task_type="CAUSAL_LM")),
    ("gpt2-cls-dora-bias-all", "gpt2-cls", GPT2ForSequenceClassification, GPT2,
     LoraConfig(r=2, lora_alpha=4, target_modules=["c_fc", "mlp.c_proj"], use_dora=True, bias="all", fan_in_fan_out=True, task_type="SEQ_CLS")),
    ("gpt2-cls-prefix", "gpt2-cls", GPT2ForSequenceClassification, GPT2, PrefixTuningConfig(num_virtual_tokens=2, task_type="SEQ_CLS")),
    # With prompt tuning transformers gets inputs_embeds, cannot see the pad tokens (96 here) and pools the last position
    # of every row; Reins pools each row's last non-pad token. The same on a batch without pad tokens (on a right-padded
    # one transformers reads a pad position).
    ("gpt2-cls-prompt", "gpt2-cls", GPT2ForSequenceClassification, {"input_ids": [[5, 17, 42, 95, 3, 8, 60], [11, 0, 23, 7, 88, 90, 91]], "attention_mask": [[1] * 7] * 2},
     PromptTuningConfig(num_virtual_tokens=3, task_type="SEQ_CLS")),
    ("bert-qa-prefix", "bert-qa", BertForQuestionAnswering, BERT, PrefixTuningConfig(num_virtual_tokens=2, task_type="QUESTION_ANS")),
    ("bert-tok-prefix", "bert-tok", BertForTokenClassification, BERT, PrefixTuningConfig(num_virtual_tokens=3, task_type="TOKEN_CLS")),
    ("bert-tok-prompt", "bert-tok", BertForTokenClassification, BERT, PromptTuningConfig(num_virtual_tokens=2, task_type="TOKEN_CLS")),
    ("bert-qa-prompt", "bert-qa", BertForQuestionAnswering, BERT, PromptTuningConfig(num_virtual_tokens=2, task_type="QUESTION_ANS")),
    ("bert-base-prefix", "bert-base", BertModel, BERT, PrefixTuningConfig(num_virtual_tokens=2, task_type="FEATURE_EXTRACTION")),
]

worst = 0.0
for name, base, cls, batch, config in CASES:
    model = get_peft_model(cls.from_pretrained(os.path.join(HERE, "models", base)), config)
    with torch.no_grad():  # every trainable tensor random, so that each one matters
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    model.eval()
    out = os.path.join(OUT, name)
    model.save_pretrained(out)
    inputs = {k: torch.tensor(v, dtype=torch.int32) for k, v in batch.items()}
    # PEFT 0.21.2 drops token_type_ids in its question-answering wrapper (its forward does not pass them on) and, by
    # design with a warning, for prompt learning on FEATURE_EXTRACTION: those cases run without token types on both sides.
    if cls is BertForQuestionAnswering or (config.is_prompt_learning and config.task_type == "FEATURE_EXTRACTION"):
        inputs.pop("token_type_ids", None)
    save_file(inputs, os.path.join(out, "inputs.safetensors"))
    with torch.no_grad():
        result = model(**{k: v.long() for k, v in inputs.items()})
    proc = subprocess.run([REINS, "logits", "--model", os.path.join(HERE, "models", base), "--adapter", out,
                           "--inputs", os.path.join(out, "inputs.safetensors"), "--output", os.path.join(out, "reins.safetensors")],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{name}: reins failed: {proc.stderr.strip()[:300]}")
        continue
    ours = load_file(os.path.join(out, "reins.safetensors"))
    diffs = []
    for key, value in ours.items():
        theirs = getattr(result, key, None)
        if theirs is None:
            diffs.append(f"{key}: PEFT has no such output")
            continue
        if theirs.shape != value.shape:
            diffs.append(f"{key}: shape {tuple(value.shape)} vs PEFT's {tuple(theirs.shape)}")
            continue
        d = (theirs - value).abs().max().item()
        worst = max(worst, d)
        diffs.append(f"{key} max |diff| {d:.2e}")
    print(f"{name}: " + ", ".join(diffs))
print(f"worst max |diff| {worst:.2e}")
