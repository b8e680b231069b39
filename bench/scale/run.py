"""The scale benchmark's driver (bench/scale.sh): starts `revisor serve` on loopback, loads it and
measures; prints one line per figure and the table for bench/RESULTS.md. Standard library only."""

import http.client
import http.server
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime

REVISOR, SERVICES, ROLLOUTS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
COLD = 20
INTERVAL = 2.0
SLOW = 10.0
WORK = tempfile.mkdtemp(prefix="revisor-scale-")
os.environ["XDG_CONFIG_HOME"] = os.path.join(WORK, "config")
subprocess.run([REVISOR, "example-models", "--out", os.path.join(WORK, "models")], check=True, capture_output=True)
MODEL = os.path.join(WORK, "models", "tabular-v1.onnx")
BODY = json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]})


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]


def service(name, variant="v1", min_scale=None):
    ann = '        autoscaling.knative.dev/initial-scale: "0"\n'
    if min_scale:
        ann = f'        autoscaling.knative.dev/min-scale: "{min_scale}"\n'
    return (
        f"apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n"
        f"    metadata:\n      annotations:\n{ann}    spec:\n      containers:\n        - image: revisor\n"
        f'          command: ["revisor", "model-server", "--model", "file://{MODEL}", "--name", "m"]\n'
        f"          env:\n            - {{name: VARIANT, value: {variant}}}\n"
    )


class Server:
    def __init__(self, tag):
        self.dir = os.path.join(WORK, tag)
        os.makedirs(self.dir)
        cfg = os.path.join(self.dir, "revisor.toml")
        with open(cfg, "w") as f:
            f.write('[server]\nadmin-addr = "127.0.0.1:0"\ngateway-addr = "127.0.0.1:0"\n[autoscaler]\nallow-zero-initial-scale = true\n')
            # PREFORK=0: replicas exec'd, not forked from the pre-fork server (for an A/B in one build).
            f.write(f'[runtime]\nprefork = {"false" if os.environ.get("PREFORK") == "0" else "true"}\n')
        self.log = open(os.path.join(self.dir, "serve.log"), "w+")
        self.proc = subprocess.Popen(
            [REVISOR, "serve", "--config", cfg, "--data-dir", os.path.join(self.dir, "data")],
            stderr=self.log, stdout=subprocess.DEVNULL)
        for _ in range(300):
            text = open(self.log.name).read()
            admin = re.search(r"admin API listening on (https://\S+)", text)
            gw = re.search(r"gateway listening on http://(\S+)", text)
            if admin and gw:
                self.admin, self.gateway = admin.group(1), gw.group(1)
                break
            time.sleep(0.1)
        else:
            sys.exit(f"revisor serve did not start:\n{open(self.log.name).read()}")

    def cli(self, *args, data=None):
        return subprocess.run([REVISOR, *args, "--server", self.admin], check=True, capture_output=True,
                              text=True, input=data).stdout

    def apply(self, yaml_text):
        path = os.path.join(self.dir, f"apply-{time.monotonic_ns()}.yaml")
        with open(path, "w") as f:
            f.write(yaml_text)
        t = time.monotonic()
        self.cli("apply", "-f", path)
        return time.monotonic() - t

    def ready_count(self, kind="ksvc"):
        items = json.loads(self.cli("get", kind, "-o", "json"))
        items = items.get("items", items) if isinstance(items, dict) else items
        return sum(1 for s in items for c in s.get("status", {}).get("conditions", [])
                   if c.get("type") == "Ready" and c.get("status") == "True")

    def cpu_seconds(self):
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    def request(self, host, path="/v2/models/m/infer", body=BODY, timeout=60):
        h, p = self.gateway.rsplit(":", 1)
        c = http.client.HTTPConnection(h, int(p), timeout=timeout)
        headers = {"Host": host, "Content-Type": "application/json"}
        c.request("POST" if body else "GET", path, body=body, headers=headers)
        r = c.getresponse()
        r.read()
        c.close()
        return r.status

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wait_ready(s, n, kind="ksvc", limit=600):
    t = time.monotonic()
    while time.monotonic() - t < limit:
        if s.ready_count(kind) >= n:
            return time.monotonic() - t
        time.sleep(0.5)
    sys.exit(f"only {s.ready_count(kind)} of {n} {kind} Ready after {limit} s")


def cold_starts(s, names):
    out = []
    for name in names:
        t = time.monotonic()
        status = s.request(f"{name}.default.localhost")
        if status != 200:
            sys.exit(f"{name} answered {status}")
        out.append((time.monotonic() - t) * 1000)
    return out


results = {}
try:
    # 3 (baseline): the same cold starts in a server with only those services.
    small = Server("small")
    small.apply("---\n".join(service(f"s{i:04d}") for i in range(COLD)))
    wait_ready(small, COLD)
    # As long as the big server idles between its services being Ready and its cold starts (it settles,
    # then its idle CPU is measured for 30 s): started at once, the first starts find a busier and
    # warmer machine, and the comparison would measure the wait rather than the number of services.
    time.sleep(35)
    base = cold_starts(small, [f"s{i:04d}" for i in range(COLD)])
    small.stop()
    print(f"cold start, {COLD} services in the server: p50 {pct(base, 50):.1f} ms, p99 {pct(base, 99):.1f} ms", flush=True)

    s = Server("big")
    time.sleep(2)
    cpu0, t0 = s.cpu_seconds(), time.monotonic()
    time.sleep(10)
    empty_cpu = (s.cpu_seconds() - cpu0) / (time.monotonic() - t0) * 100
    rss0 = s.rss_mib()
    # 1. One file with every service (plus one kept warm for the route-change measurement).
    docs = [service(f"s{i:04d}") for i in range(SERVICES - 1)] + [service("warm", min_scale=1)]
    applied = s.apply("---\n".join(docs))
    ready = wait_ready(s, SERVICES)
    print(f"apply {SERVICES} services from one file: {applied:.2f} s ({applied / SERVICES * 1000:.1f} ms each); "
          f"all Ready {ready:.1f} s after", flush=True)
    # 2. Idle: nothing changes for 30 s, once the server has settled (its last reconciles done: under
    # 5% of a core over 5 s, or 120 s passed).
    settle = time.monotonic()
    while time.monotonic() - settle < 120:
        c, t = s.cpu_seconds(), time.monotonic()
        time.sleep(5)
        if (s.cpu_seconds() - c) / (time.monotonic() - t) < 0.05:
            break
    settled = time.monotonic() - settle
    cpu0, t0 = s.cpu_seconds(), time.monotonic()
    time.sleep(30)
    idle_cpu = (s.cpu_seconds() - cpu0) / (time.monotonic() - t0) * 100
    rss1 = s.rss_mib()
    print(f"settled {settled:.0f} s after all were Ready; "
          f"idle CPU with {SERVICES} services: {idle_cpu:.2f}% of one core (empty server {empty_cpu:.2f}%); "
          f"RSS {rss0:.0f} -> {rss1:.0f} MiB ({(rss1 - rss0) * 1024 / SERVICES:.1f} KiB per service)", flush=True)
    # 3. Cold starts among the others.
    first = min(SERVICES // 2, SERVICES - 1 - COLD)
    big = cold_starts(s, [f"s{i:04d}" for i in range(first, first + COLD)])
    print(f"cold start, {SERVICES} services in the server: p50 {pct(big, 50):.1f} ms, p99 {pct(big, 99):.1f} ms",
          flush=True)

    # 5. Route changes: a new tag on the warm service, until the gateway answers it.
    assert s.request("warm.default.localhost") == 200
    route = []
    for i in range(20):
        tag = f"t{i}"
        t = time.monotonic()
        s.cli("traffic", "warm", "--tag", f"warm-00001={tag}")
        while s.request(f"{tag}-warm.default.localhost", path="/v2/health/ready", body=None) != 200:
            if time.monotonic() - t > 10:
                sys.exit(f"tag {tag} never reached the gateway")
        route.append((time.monotonic() - t) * 1000)
    cli = []
    for _ in range(10):
        t = time.monotonic()
        s.cli("get", "revision", "warm-00001", "-o", "json")
        cli.append((time.monotonic() - t) * 1000)
    print(f"route change (a new tag, from the CLI's start to the gateway answering it): "
          f"p50 {pct(route, 50):.1f} ms, p99 {pct(route, 99):.1f} ms; the CLI alone (`revisor get`, "
          f"its start, TLS and one request) takes p50 {pct(cli, 50):.1f} ms", flush=True)

    # 4. Rollouts: a webhook server that notes each analysis run; one Rollout's answers take 10 s.
    arrivals = {}

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            arrivals.setdefault(body["name"], []).append(time.time())
            if body["name"] == "s0000":
                time.sleep(SLOW)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    class HookServer(http.server.ThreadingHTTPServer):
        # socketserver's default listen backlog is 5: 50 webhook calls at once would overflow it, and
        # a dropped SYN is sent again after a second, which would read as a second of controller lag.
        request_queue_size = 256

    hooks = HookServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{hooks.server_address[1]}/run"
    names = [f"s{i:04d}" for i in range(ROLLOUTS + 1)]
    rollout = lambda n: (
        f"apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: {n}\nspec:\n  serviceRef:\n"
        f"    name: {n}\n  strategy:\n    canary:\n      stepWeight: 10\n      maxWeight: 50\n  analysis:\n"
        f"    interval: {int(INTERVAL)}s\n    webhooks:\n      - name: run\n        type: rollout\n"
        f"        url: {hook_url}\n        timeout: 15s\n")
    s.apply("---\n".join(rollout(n) for n in names))
    limit = time.monotonic() + 120
    while time.monotonic() < limit:
        st = json.loads(s.cli("get", "rollouts", "-o", "json"))
        items = st.get("items", st) if isinstance(st, dict) else st
        if sum(1 for r in items if r.get("status", {}).get("stableRevision")) >= len(names):
            break
        time.sleep(0.5)
    t_canary = time.time()
    s.apply("---\n".join(service(n, variant="v2") for n in names))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        st = json.loads(s.cli("get", "rollouts", "-o", "json"))
        items = st.get("items", st) if isinstance(st, dict) else st
        done = [r for r in items if r.get("status", {}).get("phase") in ("Succeeded", "RolledBack", "Failed")
                and r.get("status", {}).get("stableRevision", "").endswith("00002")]
        if len(done) >= len(names) - 1 and any(r["metadata"]["name"] != "s0000" for r in done):
            break
        time.sleep(1)
    lags = []
    for n in names[1:]:
        runs = sorted(t for t in arrivals.get(n, []) if t >= t_canary)
        events = json.loads(s.cli("events", n, "-o", "json"))
        events = events.get("items", events) if isinstance(events, dict) else events
        writes = sorted(datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp() for e in events
                        if e.get("object", "").startswith("Rollout/") and e["time"] and
                        datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp() >= t_canary)
        if os.environ.get("SCALE_DEBUG") and n == names[1]:
            print("runs", [round(t - t_canary, 3) for t in runs], file=sys.stderr)
            for e in events:
                t = datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()
                print(round(t - t_canary, 3), e.get("object"), e.get("reason"), e.get("message", "")[:80], file=sys.stderr)
        for prev, cur in zip(runs, runs[1:]):
            due = prev + INTERVAL
            after = [w for w in writes if w >= cur - 0.001]
            if after:
                lags.append((after[0] - due) * 1000)
    slow_runs = sorted(arrivals.get("s0000", []))
    hooks.shutdown()
    print(f"{ROLLOUTS} rollouts beside one whose webhook takes {SLOW:.0f} s: due analysis -> traffic write "
          f"p50 {pct(lags, 50):.0f} ms, p99 {pct(lags, 99):.0f} ms, max {max(lags):.0f} ms over {len(lags)} runs; "
          f"the slow one ran {len(slow_runs)} analyses", flush=True)
    s.stop()
    # Nothing a server started may outlive it: replicas whose command line names this run's models.
    time.sleep(1)
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if WORK in open(f"/proc/{pid}/cmdline").read():
                left.append(pid)
        except OSError:
            pass
    print(f"replicas left after the servers stopped: {len(left)}", flush=True)
    if left:
        sys.exit(f"replicas outlived their server: {left}")
finally:
    for p in ("small", "s"):
        srv = globals().get(p)
        if srv and srv.proc.poll() is None:
            srv.proc.kill()
    shutil.rmtree(WORK, ignore_errors=True)
