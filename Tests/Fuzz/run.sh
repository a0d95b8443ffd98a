#!/usr/bin/env bash
# Coverage-guided fuzzing of Reins's file readers with libFuzzer (the toolchain's -sanitize=fuzzer, with
# AddressSanitizer), for a maintainer to run for longer than the suite's seeded mutation test does.
#
#   bash Tests/Fuzz/run.sh [SECONDS_PER_READER] [READER ...]     (default: 600 s, every reader)
#
# Each reader starts from the committed seeds in Tests/Fuzz/Corpus/READER and grows a working corpus in
# .build-fuzz/corpus/READER (not committed). An input that crashes, leaks, runs over 10 s or allocates more than
# 1 GB is saved as Tests/Fuzz/Crashes/READER-crash-... : turn it into a regression test, then delete it.
# Replay one with the ordinary build: swift run ReinsFuzz READER FILE
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-600}
shift || true
readers=("$@")
if [ ${#readers[@]} -eq 0 ]; then
    readers=(safetensors torchCheckpoint modelConfig checkpointDirectory tokenizerJSON vocabularyText bpeFiles
             adapterConfig adapterWeights dataJSONL dataCSV metricsLog chatTemplate gguf)
fi
# (The linker's "cannot export local symbol" warnings about ASan's own helpers are noise: filtered out.)
swift build --product ReinsFuzz --scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -DREINS_LIBFUZZER \
    2>&1 | grep -v "Cannot export local symbol" || true
test -x .build-fuzz/debug/ReinsFuzz
mkdir -p Tests/Fuzz/Crashes
for reader in "${readers[@]}"; do
    work=.build-fuzz/corpus/$reader
    mkdir -p "$work"
    echo "== $reader: $seconds s"
    # Leak detection stays on; ASan's allocator limit turns an allocation over 1 GB into a report.
    REINS_FUZZ_TARGET=$reader ASAN_OPTIONS=allocator_may_return_null=0:max_allocation_size_mb=1024 \
        .build-fuzz/debug/ReinsFuzz "$work" "Tests/Fuzz/Corpus/$reader" -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=65536 -print_final_stats=1 \
        -artifact_prefix="Tests/Fuzz/Crashes/$reader-" 2>&1 | grep -E "^(#[0-9]+ +DONE|stat::|==[0-9]+==ERROR|SUMMARY|Done|INFO: seed)" || true
done
echo "crashes saved: $(find Tests/Fuzz/Crashes -type f | wc -l)"
