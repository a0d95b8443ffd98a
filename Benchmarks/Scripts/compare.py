#!/usr/bin/env python3
"""Times every kernel workload in Reins and in PyTorch on this machine, in the same run, and prints a Markdown table
with both medians and the ratio. The two sides alternate workload by workload, over several rounds, so that a noisy
neighbour hurts both alike; each figure is the median over rounds of the per-round medians.

    swift build -c release --product reins
    ~/.reins-reference/bin/python Benchmarks/Scripts/compare.py [--rounds 3] [--repeats 11] [--only TEXT]

Reins is checked against its scalar reference kernels before it is timed (`reins kernels` refuses to time a wrong
kernel). PyTorch runs with 2 threads (pytorch_kernels.py).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return {r["name"]: r["median_ms"] for r in map(json.loads, filter(None, out.splitlines()))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--only", default=None)
    args = ap.parse_args()
    reins_bin = os.path.join(ROOT, ".build", "release", "reins")
    labels = subprocess.run([reins_bin, "kernels", "--list"], check=True, capture_output=True, text=True).stdout.split("\n")
    # ReinsTensor's matmul and raw cblas_sgemm on the same shape are timed together (round-robin in one process),
    # selected by the shape they share.
    labels = [l.removeprefix("matmul ") for l in labels
              if l and not l.startswith("cblas_sgemm") and (args.only is None or args.only in l)]
    reins, torch = {}, {}
    for r in range(args.rounds):
        for label in labels:
            common = ["--only", label, "--repeats", str(args.repeats)]
            for name, ms in run_json([reins_bin, "kernels", "--json"] + common).items():
                reins.setdefault(name, []).append(ms)
            for name, ms in run_json([sys.executable, os.path.join(HERE, "pytorch_kernels.py")] + common).items():
                torch.setdefault(name, []).append(ms)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    import torch as t
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"Machine: {cpu}, {os.cpu_count()} cores; torch {t.__version__} with {t.get_num_threads()} threads "
          f"set to 2 in the script; {args.rounds} rounds x {args.repeats} repeats.\n")
    print("| workload | Reins median ms | PyTorch median ms | PyTorch / Reins |")
    print("|---|---:|---:|---:|")
    for name, times in reins.items():
        if name.startswith("cblas_sgemm"):
            continue
        rm = statistics.median(times)
        tm = statistics.median(torch[name]) if name in torch else float("nan")
        print(f"| {name} | {rm:.3f} | {tm:.3f} | {tm / rm:.2f}x |")
    print("\n| shape | ReinsTensor matmul ms | raw cblas_sgemm ms | ReinsTensor / raw GFLOP/s |")
    print("|---|---:|---:|---:|")
    for name, times in reins.items():
        if name.startswith("cblas_sgemm"):
            shape = name.removeprefix("cblas_sgemm ")
            ours, raw = statistics.median(reins["matmul " + shape]), statistics.median(times)
            print(f"| {shape} | {ours:.3f} | {raw:.3f} | {100 * raw / ours:.1f}% |")


if __name__ == "__main__":
    main()
