#!/usr/bin/env bash
# Inference benchmark: revisor's model server, with each of its engines (tract, built in; ONNX Runtime,
# loaded from the onnxruntime wheel's library), against KServe's Python model server (PyPI `kserve`,
# onnxruntime behind a small custom kserve.Model, bench/kserve_onnx.py) on the same ONNX file, the
# same V2 JSON request and the same load generator (wrk), at 1 and 32 concurrent clients, interleaved.
# Models: the tabular example (revisor example-models) and magika's classifier (PyPI magika 1.0.3).
#
#   bench/inference.sh [ROUNDS=3] [DURATION=10s]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROUNDS="${1:-3}"
DURATION="${2:-10s}"

command -v wrk >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
VENV="$ROOT/bench/.venv"
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/python" -c 'import kserve, onnxruntime, numpy' 2>/dev/null || "$VENV/bin/pip" install -q kserve onnxruntime numpy

ORT_LIB=$(ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.* | head -1)

cargo build --release -q -p revisor
REVISOR="$ROOT/target/release/revisor"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

"$REVISOR" example-models --out "$WORK/models" >/dev/null
MAGIKA="$ROOT/target/magika/model.onnx"
if [ ! -f "$MAGIKA" ]; then
  mkdir -p "$ROOT/target/magika/wheel"
  "$VENV/bin/pip" download -q --no-deps magika==1.0.3 -d "$ROOT/target/magika/wheel"
  "$VENV/bin/python" -c "import glob,sys,zipfile; z=zipfile.ZipFile(glob.glob('$ROOT/target/magika/wheel/magika-1.0.3-*.whl')[0]); open('$MAGIKA','wb').write(z.read('magika/models/standard_v3_3/model.onnx'))"
fi

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$1/v2/health/ready" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "server on $1 never became ready" >&2; exit 1; }

# Request bodies: one row each.
python3 - "$WORK" <<'PY'
import json, sys
w = sys.argv[1]
json.dump({"id": "1", "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}, open(f"{w}/tabular.json", "w"))
x = 12345
row = []
for _ in range(2048):
    x = (1103515245 * x + 12345) % 2**31
    row.append(x % 257)
json.dump({"id": "1", "inputs": [{"name": "bytes", "shape": [1, 2048], "datatype": "INT32", "data": row}]}, open(f"{w}/magika.json", "w"))
PY
cat > "$WORK/post.lua" <<'LUA'
local f = io.open(os.getenv("BODY"), "r")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
LUA

declare -A FILE=([tabular]="$WORK/models/tabular-v1.onnx" [magika]="$MAGIKA")
declare -A PORT
for m in tabular magika; do
  p=$(port); PORT[revisor-$m]=$p
  "$REVISOR" model-server --model "${FILE[$m]}" --name "$m" --port "$p" 2>/dev/null & PIDS+=($!)
  p=$(port); PORT[revisor-ort-$m]=$p
  "$REVISOR" model-server --model "${FILE[$m]}" --name "$m" --port "$p" --engine onnxruntime --onnxruntime-lib "$ORT_LIB" 2>/dev/null & PIDS+=($!)
  p=$(port); g=$(port); PORT[kserve-$m]=$p
  "$VENV/bin/python" bench/kserve_onnx.py --model_name "$m" --model_path "${FILE[$m]}" --http_port "$p" --grpc_port "$g" >/dev/null 2>&1 & PIDS+=($!)
done
for k in "${!PORT[@]}"; do wait_ready "${PORT[$k]}"; done

to_ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'; }
RAW="$WORK/raw.tsv"
for round in $(seq 1 "$ROUNDS"); do
  for m in tabular magika; do
    for c in 1 32; do
      for server in revisor revisor-ort kserve; do
        t=$(( c < 2 ? 1 : 2 ))
        out=$(BODY="$WORK/$m.json" wrk -t"$t" -c"$c" -d"$DURATION" --latency -s "$WORK/post.lua" "http://127.0.0.1:${PORT[$server-$m]}/v2/models/$m/infer")
        rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        p50=$(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')")
        p99=$(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')")
        errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$m" "$c" "$server" "$rps" "$p50" "$p99" "$errs" >> "$RAW"
        echo "round $round $m c=$c $server: $rps req/s, p50 ${p50}ms, p99 ${p99}ms $errs" >&2
      done
    done
  done
done

python3 - "$RAW" <<'PY'
import sys, statistics, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
by = collections.OrderedDict()
for r in rows:
    by.setdefault((r[1], r[2], r[3]), []).append(r)
med = {k: (statistics.median(float(r[4]) for r in v), statistics.median(float(r[5]) for r in v), statistics.median(float(r[6]) for r in v), sum(1 for r in v if r[7].strip())) for k, v in by.items()}
print("| model | clients | server | requests/s (median) | rounds (min-max) | p50 ms | p99 ms (median) | p99 rounds (min-max) | runs with errors |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
for (m, c, s), (rps, p50, p99, e) in med.items():
    r = [float(x[4]) for x in by[(m, c, s)]]
    q = [float(x[6]) for x in by[(m, c, s)]]
    print(f"| {m} | {c} | {s} | {rps:,.0f} | {min(r):,.0f}-{max(r):,.0f} | {p50:.3f} | {p99:.3f} | {min(q):.3f}-{max(q):.3f} | {e} |")
print()
for m in ("tabular", "magika"):
    for c in ("1", "32"):
        k = med[(m, c, "kserve")]
        for s, label in (("revisor", "revisor (tract)"), ("revisor-ort", "revisor (ONNX Runtime)")):
            r = med[(m, c, s)]
            print(f"- {m}, {c} client(s): {label}/KServe requests/s {r[0]/k[0]:.2f}x, p99 {r[2]/k[2]:.2f}x")
PY

# The floor under any server of magika on this machine: ONNX Runtime's own time for one row, in
# process, with no HTTP or JSON (one session with its default threads; and one thread, of which a
# server can run one per core side by side); for the graph as published (what KServe runs) and as
# revisor's ONNX Runtime engine opens it (`revisor rewrite-model`), alternated.
"$REVISOR" rewrite-model --model "$MAGIKA" --out "$WORK/magika-rewritten.onnx"
"$VENV/bin/python" - "$MAGIKA" "$WORK/magika-rewritten.onnx" <<'PY'
import collections, json, os, sys, tempfile, time
import numpy as np, onnxruntime as ort
for path, graph, threads in ((p, g, t) for t in (0, 1) for p, g in zip(sys.argv[1:], ("as published", "as revisor opens it"))):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = {s.get_inputs()[0].name: (np.arange(2048) * 7919 % 257).astype(np.int32).reshape(1, 2048)}
    for _ in range(50):
        s.run(None, x)
    n, t = 500, time.perf_counter()
    for _ in range(n):
        s.run(None, x)
    ms = (time.perf_counter() - t) / n * 1000
    print(f"- magika {graph} in ONNX Runtime alone, {'default threads' if threads == 0 else '1 thread'}: {ms:.2f} ms per row ({1000 / ms:.0f} rows/s)")
    # Where that time goes: ONNX Runtime's own profile of 100 more runs, summed by operator type.
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    for _ in range(100):
        s.run(None, x)
    ops, total = collections.Counter(), 0
    with open(s.end_profiling()) as f:
        for e in json.load(f):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                ops[e["args"]["op_name"]] += e["dur"]
                total += e["dur"]
    top = ", ".join(f"{op} {us / total:.0%}" for op, us in ops.most_common(6))
    print(f"  by operator: {top}")
PY
