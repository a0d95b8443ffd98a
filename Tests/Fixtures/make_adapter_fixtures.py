#!/usr/bin/env python3
"""PEFT adapters on the tiny fixture models, with the logits PEFT gives (and, for DoRA, gradients). Run by hand, never in CI:

    ~/.reins-reference/bin/python Tests/Fixtures/make_adapter_fixtures.py

Pinned: torch==2.15.0, transformers==4.57.6, peft==0.21.2 (Tests/Fixtures/reference-venv.sh). Adapters are saved with
`save_pretrained` (adapter_config.json + adapter_model.safetensors) to Tests/Fixtures/adapters/<name>/, beside
expected.safetensors (inputs and logits). LoRA weights are random (B is not zero) so that the adapter matters.
"""
import os

import torch
from peft import AdaLoraConfig, IA3Config, LoHaConfig, LoraConfig, PeftModel, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import BertForSequenceClassification, BertForTokenClassification, GPT2LMHeadModel

HERE = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(4242)


def randomize(model, adapter_marker, scale, shift=0.0, heads=True):
    """Replaces the adapter's tensors (names containing `adapter_marker`) by shift + scale * N(0, 1) and, with `heads`,
    nudges the saved heads (modules_to_save) by 0.1 * N(0, 1), in parameter order, so that every tensor matters."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if adapter_marker in n:
                p.copy_(shift + torch.randn_like(p) * scale)
            elif heads and "modules_to_save" in n:
                p.add_(torch.randn_like(p) * 0.1)


def randomize_lora(model):
    randomize(model, "lora_", 0.3)


def gpt2_base():
    return GPT2LMHeadModel.from_pretrained(os.path.join(HERE, "models", "gpt2-lm")).eval()


def bert_base():
    return BertForSequenceClassification.from_pretrained(os.path.join(HERE, "models", "bert-cls")).eval()


def drop_model_card(directory):
    """PEFT writes a README.md model card (boilerplate, with this machine's paths) beside every adapter: not a fixture."""
    card = os.path.join(directory, "README.md")
    if os.path.exists(card):
        os.remove(card)


def save(name, peft_model, inputs, logits, extra=None):
    out = os.path.join(HERE, "adapters", name)
    peft_model.save_pretrained(out, safe_serialization=True)
    drop_model_card(out)
    save_file({**{k: v.contiguous() for k, v in inputs.items()}, "logits": logits.detach().float().contiguous(), **(extra or {})},
              os.path.join(out, "expected.safetensors"))
    keys = sorted(load_file(os.path.join(out, "adapter_model.safetensors")).keys())
    print(name, len(keys), "tensors, e.g.", keys[:2], keys[-1])


GPT2_IDS = [[5, 17, 42, 95, 3, 8, 60], [11, 0, 23, 7, 88, 96, 96]]
GPT2_MASK = [[1] * 7, [1, 1, 1, 1, 1, 0, 0]]


def adapter_gradients(m, logits):
    """With `grads`: the gradients of sum(logits * W), W a fixed random weighting saved as `loss_weights`, for every
    trainable tensor, saved as `grad:` + its key in adapter_model.safetensors."""
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(99))
    m.zero_grad()
    (logits * weights).sum().backward()
    out = {"loss_weights": weights}
    for n, p in m.named_parameters():
        if p.requires_grad and p.grad is not None:
            key = n.replace(".default", "")
            key = key[: -len(".weight")] if key.endswith("lora_magnitude_vector.weight") else key
            out["grad:" + key.replace("modules_to_save.", "")] = p.grad.detach().clone().contiguous()
    return out


def save_gpt2(name, m, grads=False):
    """The GPT-2 fixture batch (one row right-padded) through an adapted model, saved with its logits."""
    m.eval()
    ids, mask = torch.tensor(GPT2_IDS, dtype=torch.int32), torch.tensor(GPT2_MASK, dtype=torch.int32)
    with torch.set_grad_enabled(grads):
        logits = m(input_ids=ids.long(), attention_mask=mask.long()).logits
    save(name, m, {"input_ids": ids, "attention_mask": mask}, logits, adapter_gradients(m, logits) if grads else None)


def save_bert(name, m, grads=False):
    """The BERT fixture batch (sentence pairs, two padding lengths) through an adapted model, saved with its logits."""
    m.eval()
    ids = torch.tensor([[2, 14, 15, 16, 3, 40, 41, 3, 0], [2, 50, 51, 3, 60, 3, 0, 0, 0]], dtype=torch.int32)
    types = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 0, 0, 0]], dtype=torch.int32)
    mask = torch.tensor([[1] * 8 + [0], [1] * 6 + [0] * 3], dtype=torch.int32)
    with torch.set_grad_enabled(grads):
        logits = m(input_ids=ids.long(), attention_mask=mask.long(), token_type_ids=types.long()).logits
    save(name, m, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}, logits,
         adapter_gradients(m, logits) if grads else None)


def randomize_dora(model):
    """A and B random (B is not zero), and the magnitudes moved off the base norms they start at."""
    randomize(model, "lora_A", 0.3)
    randomize(model, "lora_B", 0.3, heads=False)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_magnitude_vector" in n:
                p.mul_(1 + 0.2 * torch.randn_like(p))


def gpt2():
    m = get_peft_model(gpt2_base(), LoraConfig(r=3, lora_alpha=5, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True,
                                               lora_dropout=0.0, task_type="CAUSAL_LM"))
    randomize_lora(m)
    save_gpt2("gpt2-lora", m)


def bert():
    m = get_peft_model(bert_base(), LoraConfig(r=2, lora_alpha=7, target_modules=["query", "value", "output.dense"], use_rslora=True,
                                               lora_dropout=0.0, modules_to_save=["classifier"], task_type="SEQ_CLS"))
    randomize_lora(m)
    save_bert("bert-lora", m)


def gpt2_dora():
    """DoRA (use_dora) on GPT-2's Conv1D layers: the magnitude is per output, the norm over each output's column."""
    m = get_peft_model(gpt2_base(), LoraConfig(r=3, lora_alpha=5, target_modules=["c_attn", "mlp.c_proj"], fan_in_fan_out=True,
                                               use_dora=True, lora_dropout=0.0, task_type="CAUSAL_LM"))
    randomize_dora(m)
    save_gpt2("gpt2-dora", m, grads=True)


def bert_dora():
    """DoRA on BERT's query, value and output.dense, with the classifier saved beside it; gradients included."""
    m = get_peft_model(bert_base(), LoraConfig(r=2, lora_alpha=7, target_modules=["query", "value", "output.dense"], use_dora=True,
                                               lora_dropout=0.0, modules_to_save=["classifier"], task_type="SEQ_CLS"))
    randomize_dora(m)
    save_bert("bert-dora", m, grads=True)


def gpt2_prefix():
    """Prefix tuning (no projection): prompt_embeddings [P, L*2*C]; layer l takes slot 2l as keys, 2l+1 as values."""
    m = get_peft_model(gpt2_base(), PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"))
    randomize(m, "prompt_encoder", 0.5, heads=False)
    save_gpt2("gpt2-prefix", m)


def bert_prefix():
    """Prefix tuning on BERT sequence classification, padded pairs; the classifier is saved with the adapter."""
    m = get_peft_model(bert_base(), PrefixTuningConfig(num_virtual_tokens=3, task_type="SEQ_CLS"))
    randomize(m, "prompt_encoder", 0.5)
    save_bert("bert-prefix", m)


def gpt2_ia3():
    """IA3: learned vectors rescaling c_attn's output and the input of mlp.c_proj (a feed-forward module)."""
    m = get_peft_model(gpt2_base(), IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"],
                                              fan_in_fan_out=True, task_type="CAUSAL_LM"))
    randomize(m, "ia3_l", 0.3, shift=1.0, heads=False)
    save_gpt2("gpt2-ia3", m)


def gpt2_prompt():
    """Prompt tuning: P learned input embeddings before the tokens; logits come back for all P + T positions."""
    m = get_peft_model(gpt2_base(), PromptTuningConfig(num_virtual_tokens=5, task_type="CAUSAL_LM"))
    randomize(m, "prompt_encoder", 0.5, heads=False)
    save_gpt2("gpt2-prompt", m)


def bert_prompt():
    """Prompt tuning on BERT sequence classification: P input vectors before the tokens (positions 0..P-1, token type 0,
    always attended to); the pooler reads the first virtual token; the classifier is saved with the adapter."""
    m = get_peft_model(bert_base(), PromptTuningConfig(num_virtual_tokens=4, task_type="SEQ_CLS"))
    randomize(m, "prompt_encoder", 0.5)
    save_bert("bert-prompt", m)


def gpt2_lora_embedding():
    """LoRA on the tied token embedding wte (lora_embedding_A [r, V], lora_embedding_B [C, r]; the output layer keeps
    the base table) and on c_attn, with gradients."""
    m = get_peft_model(gpt2_base(), LoraConfig(r=3, lora_alpha=5, target_modules=["wte", "c_attn"], fan_in_fan_out=True,
                                               task_type="CAUSAL_LM"))
    randomize_lora(m)
    save_gpt2("gpt2-lora-embedding", m, grads=True)


def bert_lora_embedding():
    """LoRA on BERT's word (padding_idx 0) and token-type embeddings and on query, classifier saved, with gradients."""
    m = get_peft_model(bert_base(), LoraConfig(r=2, lora_alpha=3, target_modules=["word_embeddings", "token_type_embeddings", "query"],
                                               modules_to_save=["classifier"], task_type="SEQ_CLS"))
    randomize_lora(m)
    save_bert("bert-lora-embedding", m, grads=True)


def gpt2_ptuning():
    """P-tuning (PEFT's P_TUNING): virtual token embeddings through an MLP while training; saved folded, so a loaded
    adapter is prompt tuning with those vectors."""
    m = get_peft_model(gpt2_base(), PromptEncoderConfig(num_virtual_tokens=4, encoder_hidden_size=11, task_type="CAUSAL_LM"))
    randomize(m, "prompt_encoder", 0.5, heads=False)
    save_gpt2("gpt2-ptuning", m)


def bert_ptuning():
    m = get_peft_model(bert_base(), PromptEncoderConfig(num_virtual_tokens=3, encoder_hidden_size=13, task_type="SEQ_CLS"))
    randomize(m, "prompt_encoder", 0.5)
    save_bert("bert-ptuning", m)


def bert_ia3():
    """IA3 on BERT as PEFT's defaults for it: key and value outputs rescaled, the inputs of both output.dense layers
    (attention output and feed-forward output: PEFT's suffix match takes both) rescaled; classifier saved; gradients."""
    m = get_peft_model(bert_base(), IA3Config(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"],
                                              modules_to_save=["classifier"], task_type="SEQ_CLS"))
    randomize(m, "ia3_l", 0.3, shift=1.0)
    save_bert("bert-ia3", m, grads=True)


def prefix_projection():
    """Prefix tuning with prefix_projection: trained through an MLP, saved as the prefixes the MLP produces."""
    m = get_peft_model(gpt2_base(), PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=17,
                                                       task_type="CAUSAL_LM"))
    randomize(m, "prompt_encoder", 0.5, heads=False)
    save_gpt2("gpt2-prefix-projection", m)
    m = get_peft_model(bert_base(), PrefixTuningConfig(num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=9,
                                                       task_type="SEQ_CLS"))
    randomize(m, "prompt_encoder", 0.5)
    save_bert("bert-prefix-projection", m)


def bert_token_prompt():
    """Prompt tuning on BERT token classification: PEFT's logits cover the P virtual positions too, [B, P + T, labels]."""
    base = BertForTokenClassification.from_pretrained(os.path.join(HERE, "models", "bert-tok")).eval()
    m = get_peft_model(base, PromptTuningConfig(num_virtual_tokens=2, task_type="TOKEN_CLS"))
    randomize(m, "prompt_encoder", 0.5)
    save_bert("bert-tok-prompt", m)


def gpt2_lora_lm_head():
    """LoRA on GPT-2's lm_head (tied to wte: PEFT saves the output weight as lm_head.base_layer.weight beside A and B)
    and on c_fc, with gradients."""
    m = get_peft_model(gpt2_base(), LoraConfig(r=2, lora_alpha=3, target_modules=["lm_head", "c_fc"], fan_in_fan_out=True,
                                               task_type="CAUSAL_LM"))
    randomize_lora(m)
    save_gpt2("gpt2-lora-lm-head", m, grads=True)


def bert_adalora():
    """AdaLoRA on BERT: random A, E, B, then rank allocation (importance from gradients, no weight updates) keeps 5 of the
    4 x 4 ranks (1, 1, 2 and 1 per module); saved with the kept ranks (lora_A / lora_B / lora_E, rank_pattern). The
    expected logits are those of the adapter loaded back with PeftModel.from_pretrained (equal to the in-memory ones)."""
    m = get_peft_model(bert_base(), AdaLoraConfig(init_r=4, target_r=1, tinit=0, tfinal=0, deltaT=1, total_step=4, lora_alpha=6,
                                                  target_modules=["query", "value"], modules_to_save=["classifier"], task_type="SEQ_CLS"))
    randomize(m, "lora_", 0.4)
    ids = torch.tensor([[2, 14, 15, 16, 3, 40, 41, 3, 0], [2, 50, 51, 3, 60, 3, 0, 0, 0]])
    for step in range(3):
        m.zero_grad()
        m(input_ids=ids, labels=torch.tensor([0, 2])).loss.backward()
        m.base_model.update_and_allocate(step)
    save_bert("bert-adalora", m)
    out = os.path.join(HERE, "adapters", "bert-adalora")
    loaded = PeftModel.from_pretrained(bert_base(), out).eval()
    expected = load_file(os.path.join(out, "expected.safetensors"))
    with torch.no_grad():
        logits = loaded(**{k: expected[k].long() for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    print("bert-adalora: in-memory vs reloaded max |diff|", (logits - expected["logits"]).abs().max().item(),
          "rank pattern", {k: sum(v) for k, v in loaded.peft_config["default"].rank_pattern.items()})
    save_file({**expected, "logits": logits.contiguous()}, os.path.join(out, "expected.safetensors"))


def bert_loha():
    """LoHa on BERT's query and value (r = 3, alpha = 5: scale 5/3), every factor random, classifier saved; gradients.
    Seeded on its own, so that it regenerates the same whatever runs before it."""
    torch.manual_seed(31)
    m = get_peft_model(bert_base(), LoHaConfig(r=3, alpha=5, target_modules=["query", "value"], modules_to_save=["classifier"],
                                               task_type="SEQ_CLS"))
    randomize(m, "hada_", 0.3)
    save_bert("bert-loha", m, grads=True)


if __name__ == "__main__":
    gpt2()
    bert()
    gpt2_prefix()
    bert_prefix()
    gpt2_ia3()
    gpt2_prompt()
    bert_prompt()
    gpt2_dora()
    bert_dora()
    gpt2_lora_embedding()
    bert_lora_embedding()
    gpt2_ptuning()
    bert_ptuning()
    bert_ia3()
    prefix_projection()
    bert_token_prompt()
    gpt2_lora_lm_head()
    bert_adalora()
    bert_loha()
