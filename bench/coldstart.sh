#!/usr/bin/env bash
# Cold-start benchmark: two model-server revisions (the tabular example model and magika's classifier)
# behind `revisor serve`, each scaled to zero by the autoscaler, then one V2 inference request sent to
# it: the time from the request's arrival to its response, RUNS times each, with a breakdown from the
# revision's ColdStart event (process spawn, first successful readiness probe) and the model server's
# own log (model load and warm-up). The server uses the shortest windows Knative allows (stable window
# 6 s, grace period 6 s), so each round waits ~13 s for both revisions to reach zero.
#
#   bench/coldstart.sh [RUNS=20]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUNS="${1:-20}"

cargo build --release -q -p revisor
REVISOR="$ROOT/target/release/revisor"
WORK=$(mktemp -d)
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

"$REVISOR" example-models --out "$WORK/models" >/dev/null
MAGIKA="$ROOT/target/magika/model.onnx"
if [ ! -f "$MAGIKA" ]; then
  VENV="$ROOT/bench/.venv-download"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  mkdir -p "$ROOT/target/magika/wheel"
  "$VENV/bin/pip" download -q --no-deps magika==1.0.3 -d "$ROOT/target/magika/wheel"
  python3 -c "import glob,zipfile; z=zipfile.ZipFile(glob.glob('$ROOT/target/magika/wheel/magika-1.0.3-*.whl')[0]); open('$MAGIKA','wb').write(z.read('magika/models/standard_v3_3/model.onnx'))"
fi

cat > "$WORK/revisor.toml" <<TOML
[server]
admin-addr = "127.0.0.1:0"
gateway-addr = "127.0.0.1:0"
[autoscaler]
stable-window = "6s"
scale-to-zero-grace-period = "6s"
TOML
"$REVISOR" serve --config "$WORK/revisor.toml" --data-dir "$WORK/data" 2>"$WORK/serve.log" &
SERVER_PID=$!
for _ in $(seq 1 100); do grep -q "admin API listening" "$WORK/serve.log" 2>/dev/null && break; sleep 0.1; done
ADMIN=$(sed -n 's/^revisor: admin API listening on \(https:[^ ]*\).*/\1/p' "$WORK/serve.log")
GATEWAY=$(sed -n 's/^revisor: gateway listening on http:\/\/\(.*\)$/\1/p' "$WORK/serve.log")
export REVISOR_SERVER="$ADMIN"

for m in tabular magika; do
  file="$WORK/models/tabular-v1.onnx"; [ "$m" = magika ] && file="$MAGIKA"
  cat > "$WORK/$m.yaml" <<YAML
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: $m
spec:
  template:
    spec:
      containers:
        - image: revisor
          command: ["revisor", "model-server", "--model", "file://$file", "--name", "$m"]
YAML
  "$REVISOR" apply -f "$WORK/$m.yaml" >/dev/null
done

python3 - "$REVISOR" "$GATEWAY" "$WORK" "$RUNS" <<'PY'
import json, re, statistics, subprocess, sys, time, urllib.request, glob, os

revisor, gateway, work, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def cli(*args):
    return subprocess.run([revisor, *args], check=True, capture_output=True, text=True).stdout
def replicas(svc):
    r = json.loads(cli("get", "revision", f"{svc}-00001", "-o", "json"))
    return r.get("status", {}).get("actualReplicas")
x = 12345
row = []
for _ in range(2048):
    x = (1103515245 * x + 12345) % 2**31
    row.append(x % 257)
bodies = {
    "tabular": {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]},
    "magika": {"inputs": [{"name": "bytes", "shape": [1, 2048], "datatype": "INT32", "data": row}]},
}
def infer(svc):
    req = urllib.request.Request(f"http://{gateway}/v2/models/{svc}/infer", data=json.dumps(bodies[svc]).encode(),
                                 headers={"Host": f"{svc}.default.localhost", "Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        resp.read()
        assert resp.status == 200
    return (time.perf_counter() - t) * 1e3
def latest_cold_start(svc, seen):
    deadline = time.time() + 10
    while time.time() < deadline:
        lines = [l for l in cli("events", svc).splitlines() if "ColdStart" in l]
        if len(lines) > seen:
            m = re.search(r"after (\d+) ms \(process spawn ([\d.]+) ms, first successful readiness probe ([\d.]+) ms after the start, (\d+) probes\)", lines[-1])
            return len(lines), float(m.group(1)), float(m.group(2)), float(m.group(3)), int(m.group(4))
        time.sleep(0.05)
    raise SystemExit(f"no new ColdStart event for {svc}")
def model_load(svc):
    logs = sorted(glob.glob(f"{work}/data/logs/default/{svc}-00001/replica-*.log"), key=os.path.getmtime)
    text = open(logs[-1]).read()
    found = re.findall(r"loaded and warmed up in ([\d.]+)(ms|µs|s)", text)
    v, unit = found[-1]
    return float(v) * {"ms": 1, "µs": 1e-3, "s": 1e3}[unit]

seen = {"tabular": 0, "magika": 0}
results = {"tabular": [], "magika": []}
for svc in results:  # warm the page cache and the route; the first cold start is not counted
    while replicas(svc) != 1:
        time.sleep(0.2)
    infer(svc)
for i in range(runs):
    while any(replicas(s) != 0 for s in results):
        time.sleep(0.2)
    for svc in results:
        total = infer(svc)
        seen[svc], waited, spawn, ready, probes = latest_cold_start(svc, seen[svc])
        results[svc].append({"total": total, "spawn": spawn, "load": model_load(svc), "ready": ready, "probes": probes,
                             "after_ready": total - ready})
        print(f"run {i+1:2d} {svc:8s} total {total:7.1f} ms  spawn {spawn:5.1f}  model load {results[svc][-1]['load']:6.1f}  ready {ready:6.1f} ({probes} probes)", flush=True)

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
print()
print("| model | runs | total p50 | total p90 | process spawn p50 | model load + warm-up p50 | first successful probe p50 | rest (poke, route, proxy, inference) p50 |")
print("|---|---|---|---|---|---|---|---|")
for svc, rs in results.items():
    col = lambda k: [r[k] for r in rs]
    print(f"| {svc} | {len(rs)} | {pct(col('total'), 50):.1f} ms | {pct(col('total'), 90):.1f} ms | {pct(col('spawn'), 50):.2f} ms | "
          f"{pct(col('load'), 50):.1f} ms | {pct(col('ready'), 50):.1f} ms | {pct(col('after_ready'), 50):.1f} ms |")
PY
