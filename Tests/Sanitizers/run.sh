#!/usr/bin/env bash
# Runs the whole test suite under AddressSanitizer (with LeakSanitizer) and under ThreadSanitizer, each in its own
# build folder. Both must exit 0. The only suppression is lsan.supp's, for a leak in XCTest's runner, with its minimal
# reproduction beside it; ThreadSanitizer needs none (see README.md here for the lock Reins uses and why).
#   bash Tests/Sanitizers/run.sh [address|thread]...   (default: both)
set -euo pipefail
cd "$(dirname "$0")/../.."
kinds=("$@")
[ ${#kinds[@]} -gt 0 ] || kinds=(address thread)
for kind in "${kinds[@]}"; do
    echo "== swift test --sanitize=$kind"
    start=$(date +%s)
    LSAN_OPTIONS="suppressions=$PWD/Tests/Sanitizers/lsan.supp:print_suppressions=0" \
    TSAN_OPTIONS="halt_on_error=0:exitcode=66" \
        swift test --sanitize="$kind" --scratch-path ".build-$kind"
    echo "== $kind: clean, $(($(date +%s) - start)) s"
done
