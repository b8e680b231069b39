#!/usr/bin/env bash
# Scale benchmark: `revisor serve` holding 1,000 services, each a model revision created at zero
# (`initial-scale: "0"`), and 50 Rollouts progressing at once beside one whose webhook answers after
# 10 s. Measures, in this order (bench/scale/run.py says how):
#   1. applying the 1,000 services from one file, and until all are Ready;
#   2. the server's CPU while all are idle, and its resident memory per service;
#   3. cold starts of 20 services (one request each) with the other 980 beside them, against the same
#      20 cold starts in a server holding only those 20 (after the same idle time);
#   4. with 50 Rollouts progressing (analysis every 2 s through a webhook) and a 51st whose webhook
#      answers after 10 s: the time from each analysis falling due to the traffic write it leads to;
#   5. the time for a route change (a new tag) to reach the gateway, with the 1,000 services.
#
#   bench/scale.sh [SERVICES=1000] [ROLLOUTS=50]
#   PREFORK=0 bench/scale.sh ...   replicas exec'd instead of forked from the pre-fork server
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p revisor
exec python3 bench/scale/run.py "$(pwd)/target/release/revisor" "${1:-1000}" "${2:-50}"
