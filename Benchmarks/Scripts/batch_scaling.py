"""How much decoding 8 sequences at once gains over decoding one, in Reins and in llama.cpp, on the same GGUF file and
the same two cores. This is the ceiling a server's batching works under (issue 18's load test asks 8 clients for 3x
the tokens/s of one at a time): one sequence streams the weights from memory once per token, eight share that read
and are bound by the integer products instead.

Both sides: a 64-token prompt per sequence, then 63 greedy steps, every sequence with its own cache; tokens/s of the
steps alone (the prompt pass is timed apart and taken off). Reins runs `reins bench --only "SmolLM2 GGUF Q4_1 decode
64 batch N"`; llama.cpp runs the same through llama-cpp-python's low-level API (one `llama_decode` per step over a
batch holding one token per sequence, as llama.cpp's own server batches its slots). Run by hand, after `swift build
-c release --product reins`, in the venv that has llama-cpp-python (see compare_gguf.py):

    ~/.llamacpp-venv/bin/python Benchmarks/Scripts/batch_scaling.py --rounds 3
"""
import argparse
import ctypes
import json
import os
import statistics
import sys

from compare_gguf import ROOT, find_model, run
from timing import median_ms

PROMPT = [(1 + 7 * i) % 4000 + 100 for i in range(64)]
STEPS = 63


def llama_cpp_worker(model_path, rows, repeats):
    """Times 63 decoding steps over `rows` sequences in llama.cpp; prints a JSON line like `reins bench`."""
    import numpy as np
    import llama_cpp as L

    L.llama_backend_init()
    mparams = L.llama_model_default_params()
    model = L.llama_model_load_from_file(model_path.encode(), mparams)
    cparams = L.llama_context_default_params()
    cparams.n_ctx = 256 * rows
    cparams.n_batch = 64 * rows
    cparams.n_ubatch = 64 * rows
    cparams.n_seq_max = rows
    cparams.n_threads = 2
    cparams.n_threads_batch = 2
    ctx = L.llama_init_from_model(model, cparams)
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    batch = L.llama_batch_init(64 * rows, 0, 1)
    memory = L.llama_get_memory(ctx)

    def decode(entries):
        """entries: (token, position, sequence, wants logits)."""
        batch.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        if L.llama_decode(ctx, batch) != 0:
            sys.exit("llama_decode failed")

    def argmax(i):
        return int(np.argmax(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(n_vocab,))))

    def prompts():
        L.llama_memory_clear(memory, True)
        # Each sequence's prompt differs, as Reins's bench makes them.
        decode([((t + 31 * r) % 40000 + 100, p, r, p == 63) for r in range(rows) for p, t in enumerate(PROMPT)])
        return [argmax(64 * r + 63) for r in range(rows)]

    def whole():
        tokens = prompts()
        for step in range(STEPS):
            decode([(tokens[r], 64 + step, r, True) for r in range(rows)])
            tokens = [argmax(r) for r in range(rows)]

    decode_ms = median_ms(whole, repeats) - median_ms(prompts, repeats)
    print(json.dumps({"name": f"decode 64 batch {rows}", "median_ms": decode_ms / STEPS,
                      "per_second": STEPS * rows / decode_ms * 1000, "unit": "tokens/s"}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None)
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    model = a.model or find_model()
    if a.worker:
        return llama_cpp_worker(model, a.worker, a.repeats)
    env = dict(os.environ, REINS_SMOLLM2_GGUF=model)
    results = {}
    for r in range(a.rounds):
        for rows in (1, 8):
            for row in run([os.path.join(ROOT, ".build", "release", "reins"), "bench", "--only",
                            f"SmolLM2 GGUF Q4_1 decode 64 batch {rows}", "--repeats", str(a.repeats)], env):
                if row["name"] == f"SmolLM2 GGUF Q4_1 decode 64 batch {rows}":
                    results.setdefault(("Reins", rows), []).append(row["per_second"])
            for row in run([sys.executable, __file__, "--worker", str(rows), "--repeats", str(a.repeats),
                            "--model", model]):
                results.setdefault(("llama.cpp", rows), []).append(row["per_second"])
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    print(f"{a.rounds} rounds x {a.repeats} repeats, 2 threads each, {os.path.basename(model)}; decoding tokens/s, "
          "medians (each round's values in brackets).\n")
    print("| engine | 1 sequence | 8 sequences | 8 over 1 |")
    print("|---|---:|---:|---:|")
    for engine in ("Reins", "llama.cpp"):
        one, eight = results[(engine, 1)], results[(engine, 8)]
        per_round = " / ".join(f"{e / o:.2f}" for o, e in zip(one, eight))
        print(f"| {engine} | {statistics.median(one):.1f} | {statistics.median(eight):.1f} | "
              f"{statistics.median(eight) / statistics.median(one):.2f}x ({per_round}) |")


if __name__ == "__main__":
    main()
