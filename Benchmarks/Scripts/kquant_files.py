#!/usr/bin/env python3
"""SmolLM2-135M-Instruct as llama.cpp's own quantizer writes it in the K-quant mixes people download (Q4_K_M, Q5_K_M,
Q6_K; with `--types`, any of llama.cpp's file types, e.g. Q3_K_M,Q2_K,IQ4_XS,IQ4_NL), and a by-hand check of Reins on
those files against llama.cpp: which block types each file holds, the largest difference between Reins's exact
logits and llama.cpp's at the prompt's last position, and the greedy ids of a chat prompt from `reins generate` and
from llama-cpp-python (2 threads each).

    swift build -c release --product reins
    ~/.llamacpp-venv/bin/python Benchmarks/Scripts/kquant_files.py [--out /tmp] [--wide] [--types Q3_K_M,IQ4_XS]

The files are made from the pip package's Q4_1 file: `reins quantize --type f16` first, then
`llama_cpp.llama_model_quantize` (llama.cpp's quantizer, its own choice of fallback types for the rows that are not
whole 256-value super-blocks). Time them with `compare_gguf.py --model FILE`.

With `--wide`, a wider Llama of random weights instead (hidden 1024, FFN 2816, 16 query / 4 key-value heads, 16
layers, SmolLM2's tokenizer and chat template), whose every matrix is whole super-blocks, so that its mixes hold the
K types themselves, as larger models' files do: `wide-f16.gguf`, then `wide-Q4_K_M.gguf` and the others. Its greedy
ids are compared the same way (random weights: the text is noise, the ids still have to agree).
"""
import argparse
import collections
import ctypes
import json
import os
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from compare_gguf import find_model  # noqa: E402

REINS = os.path.join(ROOT, ".build", "release", "reins")
CHAT = b"<|im_start|>user\nWrite a short story about a cat who learns to play the piano.<|im_end|>\n<|im_start|>assistant\n"


def block_types(path):
    """The ggml type of every tensor in a GGUF file, counted (read with llama.cpp's gguf-py if present)."""
    try:
        import gguf
    except ImportError:
        return "(pip install gguf to list the block types)"
    return dict(collections.Counter(t.tensor_type.name for t in gguf.GGUFReader(path).tensors))


def exact_logits(path, ids, workdir):
    """The last position's logits from the dequantized weights in float32 (`reins logits`, which computes exactly)
    for the prompt `ids`."""
    import numpy as np
    data = np.array([ids], dtype=np.int32).tobytes()
    header = json.dumps({"input_ids": {"dtype": "I32", "shape": [1, len(ids)], "data_offsets": [0, len(data)]}}).encode()
    inputs, outputs = os.path.join(workdir, "kquant-in.safetensors"), os.path.join(workdir, "kquant-out.safetensors")
    with open(inputs, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data)
    subprocess.run([REINS, "logits", "--model", path, "--inputs", inputs, "--output", outputs], check=True,
                   capture_output=True)
    raw = open(outputs, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    entry = json.loads(raw[8:8 + n])["logits"]
    start, end = entry["data_offsets"]
    logits = np.frombuffer(raw[8 + n + start:8 + n + end], dtype=np.float32).reshape(entry["shape"])
    return logits[0, -1]


def make_wide(source, path, hidden=1024, ffn=2816, layers=16, heads=16, kv_heads=4, seed=0):
    """A random-weight Llama in F16 with the metadata (tokenizer, chat template, RoPE) of the GGUF file `source`."""
    import gguf
    import numpy as np
    reader = gguf.GGUFReader(source)
    shape = {"llama.embedding_length": hidden, "llama.feed_forward_length": ffn, "llama.block_count": layers,
             "llama.attention.head_count": heads, "llama.attention.head_count_kv": kv_heads,
             "llama.rope.dimension_count": hidden // heads, "general.name": "wide random Llama",
             "general.file_type": 1}
    writer = gguf.GGUFWriter(path, "llama")
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        main_type = field.types[0]
        sub_type = field.types[-1] if main_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, shape.get(name, field.contents()), main_type, sub_type=sub_type)
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    rng = np.random.default_rng(seed)

    def normal(*dims):
        return (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16)

    head = hidden // heads
    writer.add_tensor("token_embd.weight", normal(vocab, hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    for i in range(layers):
        for part, dims in [("attn_q", (hidden, hidden)), ("attn_k", (kv_heads * head, hidden)),
                           ("attn_v", (kv_heads * head, hidden)), ("attn_output", (hidden, hidden)),
                           ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)), ("ffn_down", (hidden, ffn))]:
            writer.add_tensor(f"blk.{i}.{part}.weight", normal(*dims))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--wide", action="store_true", help="a wider Llama of random weights (see above)")
    ap.add_argument("--types", default="Q4_K_M,Q5_K_M,Q6_K",
                    help="llama.cpp file types, comma-separated (the names after LLAMA_FTYPE_MOSTLY_)")
    a = ap.parse_args()
    import llama_cpp
    import numpy as np

    stem = "wide" if a.wide else "smollm2"
    f16 = os.path.join(a.out, f"{stem}-f16.gguf")
    if a.wide:
        if not os.path.exists(f16):
            make_wide(find_model(), f16)
    else:
        subprocess.run([REINS, "quantize", "--model", find_model(), "--type", "f16", "--output", f16], check=True,
                       capture_output=True)
    for name in a.types.split(","):
        ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}", None)
        if ftype is None:
            sys.exit(f"llama.cpp has no file type {name}")
        path = os.path.join(a.out, f"{stem}-{name}.gguf")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.nthread = ftype, 2
        if llama_cpp.llama_model_quantize(f16.encode(), path.encode(), ctypes.byref(params)) != 0:
            sys.exit(f"llama.cpp could not write {path}")
        llm = llama_cpp.Llama(model_path=path, n_threads=2, n_ctx=512, n_batch=512, verbose=False, logits_all=True)
        prompt = llm.tokenize(CHAT, add_bos=False, special=True)
        llm.eval(prompt)
        first = np.array(llm.scores[llm.n_tokens - 1])
        exact = exact_logits(path, prompt, a.out)
        theirs, gaps = [], []
        for _ in range(a.tokens):
            scores = np.array(llm.scores[llm.n_tokens - 1])
            top = np.sort(scores)[-2:]
            theirs.append(int(scores.argmax()))
            gaps.append(float(top[1] - top[0]))
            llm.eval([theirs[-1]])
        out = subprocess.run([REINS, "generate", "--model", path, "--prompt-ids", ",".join(map(str, prompt)),
                              "--max-new-tokens", str(a.tokens), "--greedy", "--print-ids"],
                             check=True, capture_output=True, text=True).stdout
        ours = json.loads(out.strip().splitlines()[-1])[len(prompt):]
        same = next((i for i, (x, y) in enumerate(zip(theirs, ours)) if x != y), a.tokens)
        print(f"{name}: {os.path.getsize(path) / 1e6:.1f} MB, {block_types(path)}")
        print(f"  the prompt's last logits: max |Reins exact - llama.cpp| {np.abs(exact - first).max():.4f}"
              f" (their standard deviation {first.std():.3f})")
        line = f"  greedy ids equal for the first {same} of {a.tokens} tokens"
        if same < a.tokens:
            exact = int(exact_logits(path, prompt + theirs[:same], a.out).argmax())
            line += (f"; there llama.cpp's top two logits are {gaps[same]:.3f} apart, llama.cpp takes {theirs[same]},"
                     f" Reins {ours[same]}, the exact float product {exact}")
        print(line)


if __name__ == "__main__":
    main()
