#!/usr/bin/env bash
# Gateway benchmark: wrk at 64 connections against the same test upstream (1 KiB responses), directly
# and through revisor, HAProxy and nginx, in two configurations: one revision with one upstream (as
# measured outside the project: HAProxy with its default threads and `http-reuse always`, nginx with
# upstream keepalive) and a 90/10 split between two, interleaved over ROUNDS rounds; with one revision
# also `hyper-1rev`, the gateway's HTTP stack relaying and doing nothing else
# (crates/revisor-gateway/examples/bare_proxy.rs), to tell the stack's cost from revisor's. Prints a Markdown
# table of medians (requests/s, p50, p99) with the spread of the rounds, and revisor's ratios to each
# peer in each configuration.
#
#   bench/gateway.sh [ROUNDS=5] [DURATION=10s]
#   PERF=1 bench/gateway.sh ...   also prints each proxy's top symbols (perf record, one revision)
#                                 and its cost per request (perf stat: CPU time, context switches,
#                                 system calls); with ROUNDS=0, only those
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
cargo build --release -q -p revisor-gateway --example bare_proxy
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
REVISOR_PID=$!
wait_port "$ADMIN"
export REVISOR_SERVER="https://127.0.0.1:$ADMIN"
export REVISOR_CA_FILE="$WORK/revisor/tls/ca.crt" REVISOR_TOKEN_FILE="$WORK/revisor/admin-token"
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

# HAProxy: global settings (threads), bind port, then the backend's lines.
haproxy_cfg() { # file, global lines, port, backend lines
  cat > "$1" <<CFG
global
  maxconn 4096
$2
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$3
  default_backend be
backend be
  http-reuse always
$4
CFG
}
# The same 90/10 weights.
HP=$(port)
haproxy_cfg "$WORK/haproxy.cfg" "  nbthread 2" "$HP" "  balance random
  server s1 127.0.0.1:$P1 weight 90
  server s2 127.0.0.1:$P2 weight 10"
"$HAPROXY" -f "$WORK/haproxy.cfg" -db >/dev/null 2>&1 & PIDS+=($!)
# One revision, one upstream: HAProxy as installed (its default threads), reusing connections.
H1=$(port)
haproxy_cfg "$WORK/haproxy1.cfg" "" "$H1" "  server s1 127.0.0.1:$P1"
"$HAPROXY" -f "$WORK/haproxy1.cfg" -db >/dev/null 2>&1 & PIDS+=($!)
HAPROXY1_PID=$!
# The gateway's HTTP stack alone (hyper and tokio as the gateway sets them up, relaying to one
# upstream and nothing else): what of revisor's cost is the stack's.
BARE=$(port)
target/release/examples/bare_proxy "127.0.0.1:$BARE" "127.0.0.1:$P1" 2>/dev/null & PIDS+=($!)
BARE_PID=$!
NP=$(port); N1=$(port)
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
  upstream one { server 127.0.0.1:$P1; keepalive 256; }
  server {
    listen 127.0.0.1:$NP;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  server {
    listen 127.0.0.1:$N1;
    location / { proxy_pass http://one; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CFG
"$NGINX" -c "$WORK/nginx.conf" -p "$WORK/nginx" -g 'daemon off;' 2>/dev/null & PIDS+=($!)
NGINX_PID=$!
wait_port "$HP"; wait_port "$NP"; wait_port "$H1"; wait_port "$N1"; wait_port "$BARE"

declare -A URL HOST
URL[direct]="http://127.0.0.1:$P1/";            HOST[direct]="127.0.0.1"
URL[revisor-1rev]="http://127.0.0.1:$GW/";      HOST[revisor-1rev]="single.default.localhost"
URL[revisor-90/10]="http://127.0.0.1:$GW/";     HOST[revisor-90/10]="split.default.localhost"
URL[hyper-1rev]="http://127.0.0.1:$BARE/";     HOST[hyper-1rev]="127.0.0.1"
URL[haproxy-1rev]="http://127.0.0.1:$H1/";     HOST[haproxy-1rev]="127.0.0.1"
URL[nginx-1rev]="http://127.0.0.1:$N1/";       HOST[nginx-1rev]="127.0.0.1"
URL[haproxy-90/10]="http://127.0.0.1:$HP/";     HOST[haproxy-90/10]="127.0.0.1"
URL[nginx-90/10]="http://127.0.0.1:$NP/";       HOST[nginx-90/10]="127.0.0.1"
TARGETS=(direct revisor-1rev hyper-1rev haproxy-1rev nginx-1rev revisor-90/10 haproxy-90/10 nginx-90/10)

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

if [ "${PERF:-0}" = 1 ]; then
  # Where each proxy spends its CPU, one revision each, under the same load.
  declare -A PERF_PIDS
  PERF_PIDS[revisor-1rev]=$REVISOR_PID
  PERF_PIDS[hyper-1rev]=$BARE_PID
  PERF_PIDS[haproxy-1rev]=$HAPROXY1_PID
  PERF_PIDS[nginx-1rev]=$(pgrep -P "$NGINX_PID" | paste -sd, -)
  for t in revisor-1rev haproxy-1rev nginx-1rev; do
    wrk -t"$THREADS" -c"$CONNS" -d8s -H "Host: ${HOST[$t]}" "${URL[$t]}" >/dev/null &
    LOAD=$!
    sleep 1
    perf record -q -F 999 -g -p "${PERF_PIDS[$t]}" -o "$WORK/perf.data" -- sleep 5 2>/dev/null
    wait "$LOAD"
    echo "perf top symbols, $t (self time):" >&2
    perf report -q -i "$WORK/perf.data" --stdio --no-children --sort symbol 2>/dev/null \
      | grep -E '^ +[0-9.]+%' | sed -E 's/ {2,}/ /g' | cut -c1-110 | head -12 >&2 || true  # head closes the pipe
  done
  # What each request costs the proxy (its own threads, not the upstream's), from counters over 5 s of
  # a 7 s load: the requests in those 5 s are taken as wrk's rate times 5.
  for t in revisor-1rev hyper-1rev haproxy-1rev nginx-1rev; do
    wrk -t"$THREADS" -c"$CONNS" -d7s -H "Host: ${HOST[$t]}" "${URL[$t]}" > "$WORK/wrk.txt" &
    LOAD=$!
    sleep 1
    perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter -p "${PERF_PIDS[$t]}" -o "$WORK/stat.txt" -- sleep 5
    wait "$LOAD"
    rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt")
    # perf stat -x, lines: value,unit,event,... (the event may carry modifiers such as :u; a counter
    # perf could not read has a value that is not a number, reported as such).
    awk -F, -v t="$t" -v rps="${rps:-0}" '
      function num(v) { return v ~ /^[0-9.]+$/ ? v : "n/a" }
      BEGIN { cpu = cs = sc = "n/a" }
      $3 ~ /^task-clock/ { cpu = num($1) } $3 ~ /^context-switches/ { cs = num($1) } $3 ~ /sys_enter/ { sc = num($1) }
      END {
        n = rps * 5
        if (n <= 0 || cpu == "n/a" || cs == "n/a" || sc == "n/a") { printf "per request, %s: not measured (wrk %s req/s; cpu %s, switches %s, calls %s)\n", t, rps, cpu, cs, sc; exit }
        printf "per request, %s: %.1f us CPU, %.2f context switches, %.2f system calls (%.0f req/s)\n", t, cpu * 1000 / n, cs / n, sc / n, rps
      }
    ' "$WORK/stat.txt" >&2
  done
fi

[ -s "$RAW" ] || exit 0  # ROUNDS=0: the profiles only
python3 - "$RAW" <<'PY'
import sys, statistics, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
by = collections.OrderedDict()
for r in rows:
    by.setdefault(r[1], []).append(r)
def col(rs, i):
    return [float(r[i]) for r in rs]
med = {t: (statistics.median(col(rs, 2)), statistics.median(col(rs, 3)), statistics.median(col(rs, 4)), sum(1 for r in rs if r[5].strip())) for t, rs in by.items()}
print("| target | requests/s (median) | rounds (min-max) | p50 ms | p99 ms (median) | p99 rounds (min-max) | runs with errors |")
print("|---|---:|---:|---:|---:|---:|---:|")
for t, (rps, p50, p99, e) in med.items():
    r, q = col(by[t], 2), col(by[t], 4)
    print(f"| {t} | {rps:,.0f} | {min(r):,.0f}-{max(r):,.0f} | {p50:.3f} | {p99:.3f} | {min(q):.3f}-{max(q):.3f} | {e} |")
print()
for cfg in ("1rev", "90/10"):
    rv = med[f"revisor-{cfg}"]
    for peer in ("haproxy", "nginx"):
        p = med[f"{peer}-{cfg}"]
        per_round = [a / b for a, b in zip(col(by[f"revisor-{cfg}"], 2), col(by[f"{peer}-{cfg}"], 2))]
        print(f"revisor/{peer} ({cfg}): requests/s {rv[0]/p[0]:.2f}x (rounds {min(per_round):.2f}-{max(per_round):.2f}x), "
              f"p99 {rv[2]/p[2]:.2f}x")
PY
