#!/usr/bin/env python3
"""A soak of `revisor serve`: a steady request rate through the gateway for DURATION while, every
minute, a new version of the service starts a Rollout (every other one faulty, so it is rolled
back), and a throwaway service is created and deleted. Reports requests, failures (and whether
only faulty canaries caused them), p99 per minute, and the server's resident memory and open file
descriptors over time. Exits non-zero when a request failed that no faulty canary explains, or
when memory or descriptors grew by 10% or more once the stored object count was flat.

Usage: scripts/reliability/soak.py [--minutes 10] [--rate 50] [--release]
Builds the binaries it runs (debug unless --release). Standard library only.
"""

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(release):
    args = ["cargo", "build", "-q", "-p", "revisor", "-p", "revisor-testapp"]
    if release:
        args.append("--release")
    subprocess.run(args, cwd=ROOT, check=True)
    d = os.path.join(ROOT, "target", "release" if release else "debug")
    return os.path.join(d, "revisor"), os.path.join(d, "revisor-test-upstream")


def service(upstream, name, version, fail_percent=0):
    env = [f"            - name: VERSION\n              value: \"{version}\"\n"]
    if fail_percent:
        env.append(f"            - name: FAIL_PERCENT\n              value: \"{fail_percent}\"\n")
    return (
        f"apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n"
        f"    metadata:\n      annotations:\n        autoscaling.knative.dev/min-scale: \"1\"\n"
        f"    spec:\n      containers:\n        - image: soak\n          command: [{upstream}]\n"
        f"          env:\n" + "".join(env)
    )


ROLLOUT = """apiVersion: revisor.dev/v1alpha1
kind: Rollout
metadata:
  name: soak
spec:
  serviceRef:
    name: soak
  strategy:
    canary:
      steps:
        - setWeight: 20
        - pause: {duration: 15s}
        - setWeight: 50
        - pause: {duration: 15s}
  analysis:
    interval: 5s
    metrics:
      - name: success-rate
        thresholdRange: {min: 99}
"""


class Server:
    def __init__(self, revisor, work):
        self.revisor = revisor
        self.work = work
        self.log = open(os.path.join(work, "server.log"), "w+")
        self.proc = subprocess.Popen(
            [revisor, "serve", "--data-dir", os.path.join(work, "data"), "--admin-addr", "127.0.0.1:0",
             "--gateway-addr", "127.0.0.1:0"],
            stderr=self.log, stdout=subprocess.DEVNULL, env={**os.environ, "REVISOR_LOG": "warn"})
        deadline = time.time() + 30
        self.admin = self.gateway = None
        while time.time() < deadline and not (self.admin and self.gateway):
            time.sleep(0.1)
            text = open(self.log.name).read()
            m = re.search(r"admin API listening on (\S+)", text)
            g = re.search(r"gateway listening on http://(\S+)", text)
            self.admin = m and m.group(1)
            self.gateway = g and g.group(1)
        if not (self.admin and self.gateway):
            sys.exit("revisor serve did not start:\n" + open(self.log.name).read())

    def cli(self, *args, check=True):
        r = subprocess.run([self.revisor, *args, "--server", self.admin], capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"revisor {' '.join(args)}: {r.stderr}")
        return r.stdout

    def apply(self, name, text):
        path = os.path.join(self.work, name)
        with open(path, "w") as f:
            f.write(text)
        return self.cli("apply", "-f", path)

    def resources(self):
        pid = self.proc.pid
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) // 1024
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss, fds

    def objects(self):
        n = 0
        for kind in ("services", "revisions", "rollouts"):
            out = self.cli("get", kind, "-A", "-o", "json", check=False)
            try:
                n += len(json.loads(out).get("items", []))
            except ValueError:
                pass
        return n

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Load:
    """`rate` requests a second to soak.default.localhost, over `workers` keep-alive connections."""

    def __init__(self, gateway, rate, workers=8):
        self.gateway = gateway
        self.period = workers / rate
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.samples = []  # (time, seconds, status, body)
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(workers)]
        for t in self.threads:
            t.start()

    def run(self):
        host, port = self.gateway.rsplit(":", 1)
        conn = None
        nxt = time.time()
        while not self.stop.is_set():
            nxt += self.period
            t0 = time.time()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, int(port), timeout=30)
                conn.request("GET", "/", headers={"Host": "soak.default.localhost"})
                r = conn.getresponse()
                body = r.read().decode(errors="replace").strip()
                status = r.status
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - a failed request is a sample, not a crash
                status, body = 0, f"{type(e).__name__}: {e}"
                if conn is not None:
                    conn.close()
                conn = None
            with self.lock:
                self.samples.append((t0, time.time() - t0, status, body))
            time.sleep(max(0.0, nxt - time.time()))

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()
        return self.samples


def p99(xs):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--release", action="store_true")
    a = ap.parse_args()
    revisor, upstream = build(a.release)
    work = tempfile.mkdtemp(prefix="revisor-soak-")
    server = Server(revisor, work)
    faulty = set()
    try:
        server.apply("v1.yaml", service(upstream, "soak", 1))
        server.apply("rollout.yaml", ROLLOUT)
        server.cli("apply", "-f", os.path.join(work, "v1.yaml"), "--wait", "--timeout", "60s")
        time.sleep(2)
        load = Load(server.gateway, a.rate)
        start = time.time()
        resources = [(0.0, *server.resources(), server.objects())]
        minute = 0
        version = 1
        end = start + a.minutes * 60
        next_sample = start + 10
        while time.time() < end:
            now = time.time()
            if now >= start + minute * 60:
                minute += 1
                version += 1
                bad = version % 2 == 1
                server.apply(f"v{version}.yaml", service(upstream, "soak", version, 50 if bad else 0))
                if bad:
                    faulty.add(f"soak-{version:05d}")
                name = f"tmp{minute}"
                server.apply(f"{name}.yaml", service(upstream, name, 1))
                if minute > 1:
                    server.cli("delete", "service", f"tmp{minute - 1}", check=False)
            if now >= next_sample:
                resources.append((now - start, *server.resources(), server.objects()))
                next_sample += 10
            time.sleep(0.2)
        samples = load.finish()
        resources.append((time.time() - start, *server.resources(), server.objects()))
        rollouts = server.cli("get", "rollouts", "-o", "json", check=False)
    finally:
        server.stop()

    failed = [s for s in samples if s[2] != 200]
    explained = [s for s in failed if s[2] == 500 and s[3] in faulty]
    unexplained = [s for s in failed if s not in explained]
    print(f"soak: {a.minutes:g} min at {a.rate:g} req/s, {len(samples)} requests, "
          f"{len(failed)} failed ({len(explained)} answered 500 by a faulty canary, {len(unexplained)} otherwise)")
    for s in unexplained[:10]:
        print(f"  unexplained: status {s[2]} after {s[1]*1000:.0f} ms: {s[3][:200]}")
    print("minute | requests | failed | p99 ms")
    for m in range(int(a.minutes + 0.999)):
        win = [s for s in samples if start + 60 * m <= s[0] < start + 60 * (m + 1)]
        print(f"{m + 1:6d} | {len(win):8d} | {sum(1 for s in win if s[2] != 200):6d} | {p99([s[1] for s in win]) * 1000:6.1f}")
    print("seconds | RSS MiB | fds | stored objects")
    for t, rss, fds, objs in resources:
        print(f"{t:7.0f} | {rss:7d} | {fds:3d} | {objs}")
    try:
        phases = [r["status"].get("phase") for r in json.loads(rollouts).get("items", [])]
        print(f"rollout phase at the end: {phases}")
    except ValueError:
        pass
    # Growth once the stored object count is flat: from the first sample after the first two
    # minutes (every object kind has reached its steady count) to the end.
    steady = [r for r in resources if r[0] >= 120] or resources
    first, last = steady[0], resources[-1]
    rss_growth = (last[1] - first[1]) / max(first[1], 1)
    fd_growth = (last[2] - first[2]) / max(first[2], 1)
    print(f"growth from {first[0]:.0f}s to the end: RSS {rss_growth:+.1%}, fds {fd_growth:+.1%}; "
          f"stored objects {first[3]} -> {last[3]}")
    ok = not unexplained and rss_growth < 0.10 and fd_growth < 0.10
    print("soak: " + ("passed" if ok else "FAILED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
