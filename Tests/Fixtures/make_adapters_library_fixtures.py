#!/usr/bin/env python3
"""Bottleneck adapters made with the `adapters` library (AdapterHub) on the tiny BERT, converted to Reins's adapter
layout and in the library's own directory format (`hub/`, saved with use_safetensors=True), with the logits the
library gives. Run by hand, never in CI:

    ~/.reins-reference/bin/python Tests/Fixtures/make_adapters_library_fixtures.py

Pinned: torch==2.15.0, transformers==4.57.6, adapters (the version Tests/Fixtures/reference-venv.sh installs).
Houlsby is the library's DoubleSeqBnConfig (after attention and after the FFN, swish, reading the sublayer output);
Pfeiffer is SeqBnConfig (after the FFN, relu, reading the block's layer norm of output + residual:
original_ln_before=True). Weights are random (the up-projections are not zero) so that the adapters matter.
"""
import json
import os

import adapters
import torch
from adapters import DoubleSeqBnConfig, SeqBnConfig
from safetensors.torch import save_file
from transformers import BertForSequenceClassification

HERE = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(5150)


def make(name, config, non_linearity, original_ln_before):
    model = BertForSequenceClassification.from_pretrained(os.path.join(HERE, "models", "bert-cls")).eval()
    adapters.init(model)
    model.add_adapter(name, config=config)
    model.set_active_adapters(name)
    tensors = {}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if f"adapters.{name}." not in n:
                continue
            p.copy_(torch.randn_like(p) * 0.3)
            # bert.encoder.layer.L.{attention.output|output}.adapters.NAME.adapter_{down.0|up}.{weight|bias}
            layer = n.split(".")[3]
            slot = "attention_adapter" if ".attention.output." in n else "output_adapter"
            part = "adapter_down" if "adapter_down" in n else "adapter_up"
            tensors[f"bert.encoder.layer.{layer}.adapters.{slot}.{part}.{n.split('.')[-1]}"] = p.detach().clone()
    ids = torch.tensor([[2, 14, 15, 16, 3, 40, 41, 3, 0], [2, 50, 51, 3, 60, 3, 0, 0, 0]])
    types = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    out = os.path.join(HERE, "adapters", name)
    os.makedirs(out, exist_ok=True)
    save_file(tensors, os.path.join(out, "adapter_model.safetensors"))
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "REINS_BLOCK_ADAPTERS", "non_linearity": non_linearity, "original_ln_before": original_ln_before,
                   "slots": sorted({k.split(".")[5] for k in tensors}), "source": f"adapters {adapters.__version__}"}, f, indent=2, sort_keys=True)
    save_file({"input_ids": ids.int(), "attention_mask": mask.int(), "token_type_ids": types.int(), "logits": logits.float()},
              os.path.join(out, "expected.safetensors"))
    # The library's own directory (adapter_config.json + adapter.safetensors), which Reins also loads.
    model.save_adapter(os.path.join(out, "hub"), name, use_safetensors=True)
    print(name, len(tensors), "tensors", logits.flatten()[:3])


make("bert-houlsby-adapterhub", DoubleSeqBnConfig(reduction_factor=6), "swish", False)
make("bert-pfeiffer-adapterhub", SeqBnConfig(reduction_factor=5), "relu", True)
