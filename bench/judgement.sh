#!/usr/bin/env bash
# The false-rollback and detection tables of docs/JUDGEMENT.md: `revisor simulate` (the real Rollout
# state machine and analysis on a simulated clock) for each Rollout in bench/judgement/ against
# each canary, at 1, 10 and 100 requests/s, with fixed seeds 0..SEEDS-1 (default 1000).
# Usage: bench/judgement.sh [SEEDS] [ROLLOUT...]   (prints a Markdown table)
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-1000}
shift || true
ROLLOUTS=("$@")
[ ${#ROLLOUTS[@]} -gt 0 ] || ROLLOUTS=(bench/judgement/sequential-relative.yaml bench/judgement/interval-relative.yaml bench/judgement/flagger.yaml)
# REVISOR_BIN: a binary built already (say, a copy that a rebuild beside this run will not replace).
BIN=${REVISOR_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release --locked -p revisor >&2
  BIN=target/release/revisor
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# name errorRate median
CANARIES=("good 0.005 20ms" "1%-errors 0.01 20ms" "2%-errors 0.02 20ms" "5%-errors 0.05 20ms" "20%-errors 0.20 20ms" "1.3x-latency 0.005 26ms" "2x-latency 0.005 40ms")
echo "| rollout | rate | canary | promoted | rolled back | undecided | median s to rollback | median failed canary requests to rollback |"
echo "|---|---:|---|---:|---:|---:|---:|---:|"
for r in "${ROLLOUTS[@]}"; do
  for rate in 1 10 100; do
    for c in "${CANARIES[@]}"; do
      set -- $c
      printf 'rate: %s\nduration: 1h\nstable: {errorRate: 0.005, latency: {median: 20ms, sigma: 0.5}}\ncanary: {errorRate: %s, latency: {median: %s, sigma: 0.5}}\n' "$rate" "$2" "$3" > "$tmp/s.yaml"
      "$BIN" simulate -f "$r" --scenario "$tmp/s.yaml" --seeds "$SEEDS" -o json | tail -1 | python3 -c '
import json, sys
r, rate, name = sys.argv[1:4]
s = json.load(sys.stdin)["summary"]
fmt = lambda x: "-" if x is None else "%.0f" % x
pct = lambda k: "%.1f%%" % (100 * s[k])
cells = [r, rate, name, pct("promoted"), pct("rolledBack"), pct("undecided"),
         fmt(s["medianSecondsToRollback"]), fmt(s["medianFailedRequestsToRollback"])]
print("| " + " | ".join(cells) + " |")
' "$(basename "$r" .yaml)" "$rate" "$1"
    done
  done
done
