#!/usr/bin/env bash
# How long `revisor serve` takes to stop on SIGTERM with N revisions running (default 250) while a
# client follows a log, and whether any replica process outlives it. Builds the debug binaries.
# Usage: scripts/reliability/shutdown.sh [N]
set -euo pipefail
n=${1:-250}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cargo build -q -p revisor -p revisor-testapp
bin=$root/target/debug/revisor
up=$root/target/debug/revisor-test-upstream
work=$(mktemp -d)
trap 'pkill -f "revisor serve --data-dir $work" 2>/dev/null || true; rm -rf "$work"' EXIT
for i in $(seq 1 "$n"); do
  printf -- '---\napiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: s%d\nspec:\n  template:\n    spec:\n      containers:\n        - image: x\n          command: [%s]\n' "$i" "$up"
done > "$work/many.yaml"
"$bin" serve --data-dir "$work/data" --admin-addr 127.0.0.1:0 --gateway-addr 127.0.0.1:0 2> "$work/log" &
server=$!
for _ in $(seq 1 100); do grep -q "admin API listening" "$work/log" && break; sleep 0.1; done
admin=$(sed -n 's/^revisor: admin API listening on \([^ ]*\).*/\1/p' "$work/log")
"$bin" apply -f "$work/many.yaml" --server "$admin" > /dev/null
for _ in $(seq 1 300); do
  ready=$("$bin" get services --server "$admin" | awk 'NR > 1 && $NF == "True"' | wc -l)
  [ "$ready" -ge "$n" ] && break
  sleep 1
done
running=$(pgrep -c -f "$up" || true)
"$bin" logs s1-00001 -f --server "$admin" > /dev/null 2>&1 &
follow=$!
sleep 1
start=$(date +%s.%N)
kill -TERM "$server"
wait "$server" || true
end=$(date +%s.%N)
kill "$follow" 2>/dev/null || true
sleep 0.5
left=$(pgrep -c -f "$up" || true)
printf 'revisions ready: %s of %s; replica processes before: %s, after: %s; stopped %.2f s after SIGTERM (a log followed)\n' \
  "$ready" "$n" "$running" "$left" "$(awk "BEGIN { print $end - $start }")"
grep -E "ERROR|panicked" "$work/log" && { echo "the server logged errors"; exit 1; }
[ "$left" -eq 0 ]
