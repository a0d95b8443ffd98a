#!/usr/bin/env python3
"""By-hand check that adapters saved by Reins load in PEFT and give PEFT's own logits. Never run in CI:

    REINS_SAVE_ADAPTERS=/tmp/reins-adapters swift test --filter "AdapterFileTests|AdapterSetTests|peftAdaLoRA|LlamaAdapterTests"
    ~/.reins-reference/bin/python Tests/Fixtures/check_reins_adapters_in_peft.py /tmp/reins-adapters

The test writes gpt2-lora/, bert-lora/, gpt2-prefix/, bert-prefix/, gpt2-ia3/, gpt2-prompt/, bert-prompt/, gpt2-dora/,
bert-dora/, gpt2-ptuning/, bert-ptuning/ (saved as prompt tuning), gpt2-lora-embedding/, bert-lora-embedding/,
bert-ia3/, gpt2-lora-lm-head/, gpt2-/bert-prefix-projection/, bert-adalora/ (saved as LoRA) and bert-loha/ there with
`PEFTAdapter.save` after loading the PEFT fixtures.
Pinned: torch==2.15.0, transformers==4.57.6, peft==0.21.2.
"""
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import BertForSequenceClassification, GPT2LMHeadModel

HERE = os.path.dirname(os.path.abspath(__file__))
saved = sys.argv[1]
for adapter, base, cls in [("gpt2-lora", "gpt2-lm", GPT2LMHeadModel), ("bert-lora", "bert-cls", BertForSequenceClassification),
                           ("gpt2-prefix", "gpt2-lm", GPT2LMHeadModel), ("bert-prefix", "bert-cls", BertForSequenceClassification),
                           ("gpt2-ia3", "gpt2-lm", GPT2LMHeadModel), ("gpt2-prompt", "gpt2-lm", GPT2LMHeadModel),
                           ("bert-prompt", "bert-cls", BertForSequenceClassification), ("gpt2-dora", "gpt2-lm", GPT2LMHeadModel),
                           ("bert-dora", "bert-cls", BertForSequenceClassification), ("gpt2-ptuning", "gpt2-lm", GPT2LMHeadModel),
                           ("bert-ptuning", "bert-cls", BertForSequenceClassification),
                           ("gpt2-lora-embedding", "gpt2-lm", GPT2LMHeadModel),
                           ("bert-lora-embedding", "bert-cls", BertForSequenceClassification),
                           ("bert-ia3", "bert-cls", BertForSequenceClassification), ("gpt2-lora-lm-head", "gpt2-lm", GPT2LMHeadModel),
                           ("gpt2-prefix-projection", "gpt2-lm", GPT2LMHeadModel),
                           ("bert-prefix-projection", "bert-cls", BertForSequenceClassification),
                           ("bert-adalora", "bert-cls", BertForSequenceClassification),
                           ("bert-loha", "bert-cls", BertForSequenceClassification)]:
    model = PeftModel.from_pretrained(cls.from_pretrained(os.path.join(HERE, "models", base)), os.path.join(saved, adapter)).eval()
    e = load_file(os.path.join(HERE, "adapters", adapter, "expected.safetensors"))
    kw = {k: v.long() for k, v in e.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        logits = model(**kw).logits
    print(f"{adapter}: PEFT on the Reins-saved adapter, max |diff| vs PEFT's own = {(logits - e['logits']).abs().max().item():.2e}")

# Adapters on a Llama (LlamaAdapterTests saves each PEFT fixture again with REINS_SAVE_ADAPTERS set): PEFT's logits.
from transformers import LlamaForCausalLM
for adapter in ["llama-lora", "llama-dora", "llama-ia3", "llama-prefix", "llama-prompt"]:
    if not os.path.isdir(os.path.join(saved, adapter)):
        continue
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(os.path.join(HERE, "models", "llama-tiny")),
                                      os.path.join(saved, adapter)).eval()
    e = load_file(os.path.join(HERE, "adapters", adapter, "io.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=e["input_ids"].long(), attention_mask=e["attention_mask"].long()).logits
    print(f"{adapter}: PEFT on the Reins-saved adapter, max |diff| vs PEFT's own = {(logits - e['logits']).abs().max().item():.2e}")

# LoRA + BitFit trained in Reins (AdapterSetTests, with REINS_SAVE_ADAPTERS set): PEFT's bias="all" must give Reins's logits.
combo = os.path.join(saved, "bert-lora-bitfit")
if os.path.isdir(combo):
    model = PeftModel.from_pretrained(BertForSequenceClassification.from_pretrained(os.path.join(HERE, "models", "bert-cls")), combo).eval()
    e = load_file(os.path.join(combo, "expected.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=e["input_ids"].long(), attention_mask=e["attention_mask"].long()).logits
    print(f"bert-lora-bitfit: PEFT on the Reins-trained adapter, max |diff| vs Reins = {(logits - e['logits']).abs().max().item():.2e}")
