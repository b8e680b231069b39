#!/usr/bin/env bash
# Gateway benchmark: wrk at 64 connections against the same test upstream (1 KiB responses), directly
# and through revisor (one revision; a 90/10 split with metrics), HAProxy (90/10) and nginx (90/10),
# interleaved over ROUNDS rounds. Prints a Markdown table of medians (requests/s, p50, p99).
#
#   bench/gateway.sh [ROUNDS=5] [DURATION=10s]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-5}"
DURATION="${2:-10s}"
CONNS=64
THREADS=2

need() { command -v "$1" >/dev/null 2>&1 || command -v "/usr/sbin/$1" >/dev/null 2>&1; }
if ! need haproxy || ! need nginx || ! need wrk; then
  echo "installing haproxy, nginx-light and wrk with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx-light wrk >/dev/null
fi
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release -q -p revisor -p revisor-testapp
REVISOR=target/release/revisor
UPSTREAM=$(pwd)/target/release/revisor-test-upstream

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

# Two upstreams for HAProxy, nginx and the direct run.
P1=$(port); P2=$(port)
PORT=$P1 K_REVISION=bench-00001 RESPONSE_BYTES=1024 "$UPSTREAM" 2>/dev/null & PIDS+=($!)
PORT=$P2 K_REVISION=bench-00002 RESPONSE_BYTES=1024 "$UPSTREAM" 2>/dev/null & PIDS+=($!)
wait_port "$P1"; wait_port "$P2"

# revisor, running its own replicas of the same upstream.
GW=$(port); ADMIN=$(port)
"$REVISOR" serve --data-dir "$WORK/revisor" --gateway-addr "127.0.0.1:$GW" --admin-addr "127.0.0.1:$ADMIN" 2>"$WORK/revisor.log" & PIDS+=($!)
wait_port "$ADMIN"
export REVISOR_SERVER="http://127.0.0.1:$ADMIN"
svc() { # name, version env, traffic block
  cat <<YAML
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: $1
spec:
  template:
    spec:
      containers:
        - image: revisor-test-upstream
          command: [$UPSTREAM]
          env:
            - {name: RESPONSE_BYTES, value: "1024"}
            - {name: V, value: "$2"}
$3
YAML
}
svc single 1 "" | "$REVISOR" apply -f - >/dev/null
svc split 1 "" | "$REVISOR" apply -f - >/dev/null
svc split 2 "" | "$REVISOR" apply -f - >/dev/null
"$REVISOR" traffic split --traffic split-00001=90,@latest=10 >/dev/null
for _ in $(seq 1 200); do
  ready=$("$REVISOR" get services | awk 'NR>1 && $6=="True"' | wc -l)
  routed=$("$REVISOR" get revisions | grep -c '%' || true)
  [ "$ready" = 2 ] && [ "$routed" = 3 ] && break; sleep 0.1
done
curl -sf -H 'Host: split.default.localhost' "http://127.0.0.1:$GW/" >/dev/null

# HAProxy with the same 90/10 weights.
HP=$(port)
cat > "$WORK/haproxy.cfg" <<CFG
global
  maxconn 4096
  nbthread 2
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$HP
  default_backend be
backend be
  balance random
  http-reuse always
  server s1 127.0.0.1:$P1 weight 90
  server s2 127.0.0.1:$P2 weight 10
CFG
"$HAPROXY" -f "$WORK/haproxy.cfg" -db >/dev/null 2>&1 & PIDS+=($!)
NP=$(port)
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx.conf" <<CFG
worker_processes 2;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  upstream be { server 127.0.0.1:$P1 weight=9; server 127.0.0.1:$P2 weight=1; keepalive 256; }
  server {
    listen 127.0.0.1:$NP;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CFG
"$NGINX" -c "$WORK/nginx.conf" -p "$WORK/nginx" -g 'daemon off;' 2>/dev/null & PIDS+=($!)
wait_port "$HP"; wait_port "$NP"

declare -A URL HOST
URL[direct]="http://127.0.0.1:$P1/";            HOST[direct]="127.0.0.1"
URL[revisor-1rev]="http://127.0.0.1:$GW/";      HOST[revisor-1rev]="single.default.localhost"
URL[revisor-90/10]="http://127.0.0.1:$GW/";     HOST[revisor-90/10]="split.default.localhost"
URL[haproxy-90/10]="http://127.0.0.1:$HP/";     HOST[haproxy-90/10]="127.0.0.1"
URL[nginx-90/10]="http://127.0.0.1:$NP/";       HOST[nginx-90/10]="127.0.0.1"
TARGETS=(direct revisor-1rev revisor-90/10 haproxy-90/10 nginx-90/10)

# Converts wrk latency text (850.00us, 1.20ms, 2.00s) to milliseconds.
to_ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'; }

RAW="$WORK/raw.tsv"
for round in $(seq 1 "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H "Host: ${HOST[$t]}" "${URL[$t]}")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')")
    p99=$(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')")
    errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$t" "$rps" "$p50" "$p99" "$errs" >> "$RAW"
    echo "round $round $t: $rps req/s, p50 ${p50}ms, p99 ${p99}ms ${errs}" >&2
  done
done

python3 - "$RAW" <<'PY'
import sys, statistics, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
by = collections.OrderedDict()
for r in rows:
    by.setdefault(r[1], []).append(r)
med = {t: (statistics.median(float(r[2]) for r in rs), statistics.median(float(r[3]) for r in rs), statistics.median(float(r[4]) for r in rs), sum(1 for r in rs if r[5].strip())) for t, rs in by.items()}
print("| target | requests/s (median) | p50 ms | p99 ms | runs with errors |")
print("|---|---:|---:|---:|---:|")
for t, (rps, p50, p99, e) in med.items():
    print(f"| {t} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {e} |")
rv, hp = med["revisor-90/10"], med["haproxy-90/10"]
print()
print(f"revisor/HAProxy (90/10): requests/s {rv[0]/hp[0]:.2f}x, p99 {rv[2]/hp[2]:.2f}x")
PY
