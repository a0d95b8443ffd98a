#!/usr/bin/env bash
# Runs the whole test suite under AddressSanitizer (with LeakSanitizer) and under ThreadSanitizer, each in its own
# build folder. Both must exit 0. Suppressions, none in Reins's own code: lsan.supp (two leaks in XCTest and
# Foundation, each with its minimal reproduction beside it) and tsan.supp (one SwiftNIO buffer hand-over that
# ThreadSanitizer cannot see); README.md here says why, and which lock Reins uses so that it needs none.
#   bash Tests/Sanitizers/run.sh [address|thread]...   (default: both)
set -euo pipefail
cd "$(dirname "$0")/../.."
kinds=("$@")
[ ${#kinds[@]} -gt 0 ] || kinds=(address thread)
for kind in "${kinds[@]}"; do
    echo "== swift test --sanitize=$kind"
    start=$(date +%s)
    LSAN_OPTIONS="suppressions=$PWD/Tests/Sanitizers/lsan.supp:print_suppressions=0" \
    TSAN_OPTIONS="halt_on_error=0:exitcode=66:suppressions=$PWD/Tests/Sanitizers/tsan.supp" \
        swift test --sanitize="$kind" --scratch-path ".build-$kind"
    echo "== $kind: clean, $(($(date +%s) - start)) s"
done
