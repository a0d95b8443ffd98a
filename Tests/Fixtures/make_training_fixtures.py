#!/usr/bin/env python3
"""Ten-step expected-loss tables: full fine-tuning and every adapter method, trained in PyTorch on the tiny fixture
models. Run by hand, never in CI:

    ~/.reins-reference/bin/python Tests/Fixtures/make_training_fixtures.py

Pinned: torch==2.15.0, transformers==4.57.6, peft==0.21.2 (Tests/Fixtures/reference-venv.sh).

Each method starts from a saved initial state in Tests/Fixtures/training/<method>/ (an adapter directory with its head,
or nothing for full fine-tuning) and trains for 10 steps on one fixed batch: AdamW (betas 0.9/0.999, eps 1e-8, weight
decay 0.01 on matrices only), linear warm-up over 2 steps then linear decay to step 10 (transformers'
get_linear_schedule_with_warmup), global-norm clipping at 1.0; one run uses SGD with momentum 0.9 instead. The loss of
each step (before its update) goes to training/expected.json. Dropout is 0 in the fixture configs.

The bottleneck adapters (Houlsby, Pfeiffer), AdapterBias and the parallel adapter are written here in plain PyTorch at
the insertion points Reins documents (each BERT layer's attention-output and FFN-output dense layers, before the
residual add and layer norm), and saved in Reins's adapter layout. LoRA, DoRA, prefix tuning, prompt tuning and IA3
are PEFT's own.
"""
import json
import os
import types

import torch
from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from safetensors.torch import save_file
from transformers import BertForSequenceClassification, GPT2LMHeadModel, get_linear_schedule_with_warmup

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "training")
STEPS, WARMUP, CLIP = 10, 2, 1.0

# Six sentence pairs of different lengths (right-padded), three classes.
BERT_IDS = [[2, 14, 15, 16, 3, 40, 41, 3, 0, 0], [2, 50, 51, 3, 60, 3, 0, 0, 0, 0], [2, 7, 8, 9, 10, 11, 3, 12, 13, 3],
            [2, 33, 3, 34, 35, 3, 0, 0, 0, 0], [2, 70, 71, 72, 3, 73, 3, 0, 0, 0], [2, 90, 91, 92, 93, 94, 95, 3, 96, 3]]
BERT_TYPES = [[0, 0, 0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
              [0, 0, 0, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]]
BERT_LABELS = [0, 2, 1, 1, 0, 2]
GPT2_IDS = [[5, 17, 42, 95, 3, 8, 60, 1, 2], [11, 0, 23, 7, 88, 96, 41, 9, 13], [4, 4, 31, 77, 50, 21, 6, 90, 33]]



def drop_model_card(directory):
    """PEFT writes a README.md model card (boilerplate, with this machine's paths) beside every adapter: not a fixture."""
    card = os.path.join(directory, "README.md")
    if os.path.exists(card):
        os.remove(card)

def bert_batch():
    ids = torch.tensor(BERT_IDS)
    return dict(input_ids=ids, token_type_ids=torch.tensor(BERT_TYPES), attention_mask=(ids != 0).long(),
                labels=torch.tensor(BERT_LABELS))


def train(model, params, lr, batch, optimizer="adamw"):
    decay = [p for p in params if p.ndim >= 2]
    flat = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": flat, "weight_decay": 0.0}]
    if optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    else:
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    sched = get_linear_schedule_with_warmup(opt, WARMUP, STEPS)
    model.train()
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        sched.step()
    return losses


def bert_base():
    return BertForSequenceClassification.from_pretrained(os.path.join(HERE, "models", "bert-cls"))


def save_reins(name, tensors, config):
    out = os.path.join(OUT, name)
    os.makedirs(out, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, os.path.join(out, "adapter_model.safetensors"))
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "REINS_BLOCK_ADAPTERS", **config}, f, indent=2, sort_keys=True)


def head_tensors(model):
    return {"classifier.weight": model.classifier.weight, "classifier.bias": model.classifier.bias}


def bottleneck(C, m, g):
    down = torch.nn.Linear(C, m)
    up = torch.nn.Linear(m, C)
    with torch.no_grad():
        for p in (down.weight, down.bias, up.weight, up.bias):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return down, up


def block_adapter_run(kind):
    """Houlsby / Pfeiffer / AdapterBias / parallel adapters written at Reins's insertion points."""
    model = bert_base()
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed({"houlsby": 1, "pfeiffer": 2, "adapterbias": 3, "parallel": 4}[kind])
    C, I = model.config.hidden_size, model.config.intermediate_size
    tensors, trainable = {}, []
    for i, layer in enumerate(model.bert.encoder.layer):
        prefix = f"bert.encoder.layer.{i}.adapters"
        if kind == "houlsby":
            down, up = bottleneck(C, 5, g)
            so = layer.attention.output

            def self_output(self, h, x, down=down, up=up):
                d = self.dense(h)
                d = d + up(torch.relu(down(d)))
                return self.LayerNorm(x + d)

            so.forward = types.MethodType(self_output, so)
            for n, mod in (("adapter_down", down), ("adapter_up", up)):
                tensors[f"{prefix}.attention_adapter.{n}.weight"] = mod.weight
                tensors[f"{prefix}.attention_adapter.{n}.bias"] = mod.bias
            trainable += list(down.parameters()) + list(up.parameters())
        out = layer.output
        if kind in ("houlsby", "pfeiffer"):
            down, up = bottleneck(C, 5 if kind == "houlsby" else 7, g)

            def output(self, z, h, down=down, up=up):
                f = self.dense(z)
                f = f + up(torch.relu(down(f)))
                return self.LayerNorm(h + f)

            for n, mod in (("adapter_down", down), ("adapter_up", up)):
                tensors[f"{prefix}.output_adapter.{n}.weight"] = mod.weight
                tensors[f"{prefix}.output_adapter.{n}.bias"] = mod.bias
        elif kind == "adapterbias":
            alpha = torch.nn.Linear(I, 1)
            vector = torch.nn.Parameter(torch.randn(C, generator=g) * 0.2)
            with torch.no_grad():
                alpha.weight.copy_(torch.randn(alpha.weight.shape, generator=g) * 0.2)
                alpha.bias.copy_(torch.randn(1, generator=g) * 0.2)

            def output(self, z, h, alpha=alpha, vector=vector):
                f = self.dense(z) + alpha(z) * vector  # α reads the FFN's intermediate activation z
                return self.LayerNorm(h + f)

            tensors[f"{prefix}.adapter_bias.adapter_alpha.weight"] = alpha.weight
            tensors[f"{prefix}.adapter_bias.adapter_alpha.bias"] = alpha.bias
            tensors[f"{prefix}.adapter_bias.adapter_vector"] = vector
            down, up = alpha, types.SimpleNamespace(parameters=lambda v=vector: [v])
        else:  # parallel: f + s·up(relu(down(h))) with h the FFN's input
            down, up = bottleneck(C, 6, g)

            def output(self, z, h, down=down, up=up):
                f = self.dense(z) + 4.0 * up(torch.relu(down(h)))
                return self.LayerNorm(h + f)

            for n, mod in (("adapter_down", down), ("adapter_up", up)):
                tensors[f"{prefix}.parallel_adapter.{n}.weight"] = mod.weight
                tensors[f"{prefix}.parallel_adapter.{n}.bias"] = mod.bias
        out.forward = types.MethodType(output, out)
        trainable += list(down.parameters()) + list(up.parameters())
    for p in model.classifier.parameters():
        p.requires_grad_(True)
    trainable += list(model.classifier.parameters())
    tensors.update(head_tensors(model))
    save_reins(kind, {k: v.clone() for k, v in tensors.items()},
               {"slots": [], "non_linearity": "relu", "parallel_scale": 4.0, "head": "classifier"})
    return train(model, trainable, 3e-2, bert_batch())


def full_run(optimizer):
    model = bert_base()
    return train(model, list(model.parameters()), 1e-2 if optimizer == "adamw" else 0.3, bert_batch(), optimizer)


def bitfit_run():
    model = bert_base()
    trainable = []
    for n, p in model.named_parameters():
        p.requires_grad_(n.endswith(".bias") or n.startswith("classifier."))
        if p.requires_grad:
            trainable.append(p)
    biases = {n: p for n, p in model.named_parameters() if n.endswith(".bias") and not n.startswith("classifier.")}
    save_reins("bitfit", {**{k: v.clone() for k, v in biases.items()}, **{k: v.clone() for k, v in head_tensors(model).items()}},
               {"slots": [], "bitfit": True, "head": "classifier"})
    return train(model, trainable, 3e-2, bert_batch())


def peft_run(name, config, randomize, around=0.0):
    """A PEFT adapter whose `randomize` tensors start at around + 0.3·N(0, 1) (not PEFT's no-op start)."""
    torch.manual_seed(7)
    model = get_peft_model(bert_base(), config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if randomize in n:
                p.copy_(around + torch.randn_like(p) * 0.3)
    model.save_pretrained(os.path.join(OUT, name), safe_serialization=True)
    drop_model_card(os.path.join(OUT, name))
    trainable = [p for p in model.parameters() if p.requires_grad]
    return train(model, trainable, 3e-2, bert_batch())


def gpt2_runs():
    ids = torch.tensor(GPT2_IDS)
    batch = dict(input_ids=ids, labels=ids)
    model = GPT2LMHeadModel.from_pretrained(os.path.join(HERE, "models", "gpt2-lm"))
    full = train(model, list(model.parameters()), 2e-3, batch)
    torch.manual_seed(8)
    model = get_peft_model(GPT2LMHeadModel.from_pretrained(os.path.join(HERE, "models", "gpt2-lm")),
                           LoraConfig(r=3, lora_alpha=6, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True,
                                      lora_dropout=0.0, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.3)
    model.save_pretrained(os.path.join(OUT, "gpt2-lora"), safe_serialization=True)
    drop_model_card(os.path.join(OUT, "gpt2-lora"))
    lora = train(model, [p for p in model.parameters() if p.requires_grad], 1e-2, batch)
    return {"gpt2-full": full, "gpt2-lora": lora}


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    table = {
        "full": full_run("adamw"),
        "full-sgd": full_run("sgd"),
        "bitfit": bitfit_run(),
        "houlsby": block_adapter_run("houlsby"),
        "pfeiffer": block_adapter_run("pfeiffer"),
        "adapterbias": block_adapter_run("adapterbias"),
        "parallel": block_adapter_run("parallel"),
        "lora": peft_run("lora", LoraConfig(r=3, lora_alpha=6, target_modules=["query", "value"], lora_dropout=0.0,
                                            modules_to_save=["classifier"], task_type="SEQ_CLS"), "lora_B"),
        "prefix": peft_run("prefix", PrefixTuningConfig(num_virtual_tokens=3, task_type="SEQ_CLS"), "prompt_encoder"),
        "prompt": peft_run("prompt", PromptTuningConfig(num_virtual_tokens=3, task_type="SEQ_CLS"), "prompt_encoder"),
        "ia3": peft_run("ia3", IA3Config(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"],
                                         modules_to_save=["classifier"], task_type="SEQ_CLS"), "ia3_l", around=1.0),
        "dora": peft_run("dora", LoraConfig(r=3, lora_alpha=6, target_modules=["query", "value"], use_dora=True, lora_dropout=0.0,
                                            modules_to_save=["classifier"], task_type="SEQ_CLS"), "lora_B"),
        **gpt2_runs(),
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump({"steps": STEPS, "warmup": WARMUP, "clip": CLIP, "losses": table}, f, indent=1, sort_keys=True)
    for k, v in table.items():
        print(f"{k:12s} {v[0]:.5f} -> {v[-1]:.5f}")
