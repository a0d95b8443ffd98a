#!/usr/bin/env python3
"""Whole-model timings in Reins (`reins bench`) and PyTorch + transformers (pytorch_models.py), alternating workload by
workload over several rounds; each figure is the median over rounds of the per-round medians.

    swift build -c release --product reins
    HF_HUB_OFFLINE=1 ~/.reins-reference/bin/python Benchmarks/Scripts/compare_models.py [--rounds 3] [--repeats 5]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
WORKLOADS = ["BERT-base forward", "GPT-2-small greedy", "MiniLM load", "GPT-2-small train step full", "GPT-2-small train step LoRA",
             "BERT-base train step full", "BERT-base train step LoRA", "BERT-base train step BitFit", "BERT-base train step Houlsby",
             "BERT-base train step prefix", "SmolLM2-135M train step LoRA", "SmolLM2-135M greedy"]


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default=None, help="only workloads whose name contains this text")
    a = ap.parse_args()
    reins, torch, units, peaks = {}, {}, {}, {}
    for r in range(a.rounds):
        for w in [w for w in WORKLOADS if a.only is None or a.only in w]:
            common = ["--only", w, "--repeats", str(a.repeats)]
            for row in run([os.path.join(ROOT, ".build", "release", "reins"), "bench"] + common):
                reins.setdefault(row["name"], []).append(row["per_second"])
                units[row["name"]] = row["unit"]
                peaks.setdefault(("Reins", row["name"]), []).append(row.get("peak_rss_mb", float("nan")))
            for row in run([sys.executable, os.path.join(HERE, "pytorch_models.py")] + common):
                torch.setdefault(row["name"], []).append(row["per_second"])
                peaks.setdefault(("PyTorch", row["name"]), []).append(row.get("peak_rss_mb", float("nan")))
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    print(f"{a.rounds} rounds x {a.repeats} repeats, 2 threads each.\n")
    print("| workload | Reins | PyTorch | Reins / PyTorch |")
    print("|---|---:|---:|---:|")
    for name, values in reins.items():
        # A quantized base is compared with PyTorch's float32 step of the same method.
        torch_name = name.replace(" on a Q8_0 base", "")
        rm, tm = statistics.median(values), statistics.median(torch.get(torch_name, [float("nan")]))
        print(f"| {name} | {rm:.2f} {units[name]} | {tm:.2f} {units[name]} | {rm / tm:.2f}x |")
    print("\n| workload | Reins peak RSS MB | PyTorch peak RSS MB |")
    print("|---|---:|---:|")
    for name in reins:
        if "train step" in name:
            torch_name = name.replace(" on a Q8_0 base", "")
            print(f"| {name} | {statistics.median(peaks[('Reins', name)]):.0f} | {statistics.median(peaks.get(('PyTorch', torch_name), [float('nan')])):.0f} |")


if __name__ == "__main__":
    main()
