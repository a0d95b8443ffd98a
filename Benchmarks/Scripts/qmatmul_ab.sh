#!/bin/bash
# Builds qmatmul_ab.c against the working tree's CReinsKernels and REV's qmatmul.c (its exported names prefixed with
# before_) and runs it: `bash Benchmarks/Scripts/qmatmul_ab.sh REV TYPE ROWS [ISA]`. By hand; needs clang and OpenBLAS.
set -euo pipefail
rev=$1; shift
root=$(cd "$(dirname "$0")/../.." && pwd)
k=$root/CSupport/CReinsKernels
out=$(mktemp -d)
git -C "$root" show "$rev:CSupport/CReinsKernels/qmatmul.c" > "$out/before.c"
renames=()
for name in $(grep -oE '^(int|size_t|void) rk_[a-z0-9_]+' "$out/before.c" | awk '{print $2}' | sort -u); do
    renames+=("-D$name=before_$name")
done
blas=-I/usr/include/x86_64-linux-gnu/openblas-pthread
clang -O3 -I"$k" -I"$k/include" $blas "${renames[@]}" -c "$out/before.c" -o "$out/before.o"
clang -O3 -I"$k" -I"$k/include" $blas "$root/Benchmarks/Scripts/qmatmul_ab.c" "$out/before.o" "$k/qmatmul.c" \
    "$k/dispatch.c" "$k/quant.c" "$k/quantize.c" -o "$out/qmatmul_ab" -lopenblas -lpthread -lm
"$out/qmatmul_ab" "$@"
