#!/usr/bin/env bash
# Runs each cargo-fuzz target (libFuzzer, nightly) for SECONDS (default 600) on its kept corpus,
# adding what it finds interesting, then minimizes the corpus. A crash stops the script and leaves
# its input in fuzz/artifacts/<target>/. Not part of CI: CI replays fuzz/corpus on stable
# (crates/revisor-fuzzing/tests/corpus.rs).
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
secs=${1:-600}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v cargo-fuzz > /dev/null || cargo install cargo-fuzz --locked
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(manifest units traffic gateway_head inference)
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "== $t: ${secs}s"
  status=0
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -max_len=65536 -timeout=10 \
    -print_final_stats=1 > "fuzz/last-run-$t.log" 2>&1 || status=$?
  grep -E "stat::(number_of_executed_units|average_exec_per_sec|new_units_added)|SUMMARY|panicked" "fuzz/last-run-$t.log" || true
  [ "$status" -eq 0 ] || { echo "$t failed: see fuzz/last-run-$t.log and fuzz/artifacts/$t"; exit 1; }
  cargo +nightly fuzz cmin "$t" "fuzz/corpus/$t" > /dev/null 2>&1
  echo "$t: $(ls "fuzz/corpus/$t" | wc -l) inputs kept"
done
