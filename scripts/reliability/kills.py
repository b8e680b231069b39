#!/usr/bin/env python3
"""kill -9 of `revisor serve` at random moments while clients apply services, ROUNDS times; after
every restart, each change the API acknowledged must be there whole (the service, its revision),
and no replica process or port of a killed run may be left behind once the next run has started.

Usage: scripts/reliability/kills.py [--rounds 30] [--seed 1]
Builds the debug binaries. Standard library only.
"""

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start(revisor, data, log):
    # Services may start at zero replicas (Knative's allow-zero-initial-scale).
    config = data + ".toml"
    with open(config, "w") as f:
        f.write("[autoscaler]\nallow-zero-initial-scale = true\n")
    proc = subprocess.Popen(
        [revisor, "serve", "--config", config, "--data-dir", data, "--admin-addr", "127.0.0.1:0",
         "--gateway-addr", "127.0.0.1:0"],
        stderr=open(log, "w"), stdout=subprocess.DEVNULL, env={**os.environ, "REVISOR_LOG": "warn"})
    deadline = time.time() + 30
    while time.time() < deadline:
        m = re.search(r"admin API listening on (\S+)", open(log).read())
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            sys.exit("revisor serve exited:\n" + open(log).read())
        time.sleep(0.05)
    sys.exit("revisor serve did not start:\n" + open(log).read())


def manifest(upstream, name, running):
    """A service whose replica starts a helper process; `running` False: it starts at zero replicas."""
    scale = "" if running else (
        "    metadata:\n      annotations:\n        autoscaling.knative.dev/initial-scale: \"0\"\n")
    return (f"apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n"
            f"{scale}    spec:\n      containers:\n        - image: k\n"
            f"          command: [sh, -c, 'sleep 86398.{os.getpid()} & exec {upstream}']\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    subprocess.run(["cargo", "build", "-q", "-p", "revisor", "-p", "revisor-testapp"], cwd=ROOT, check=True)
    revisor = os.path.join(ROOT, "target/debug/revisor")
    upstream = os.path.join(ROOT, "target/debug/revisor-test-upstream")
    work = tempfile.mkdtemp(prefix="revisor-kills-")
    data = os.path.join(work, "data")
    acked = []
    deleted = []
    lock = threading.Lock()
    counter = [0]
    orphans_after_restart = 0
    for rnd in range(a.rounds):
        proc, admin = start(revisor, data, os.path.join(work, f"server-{rnd}.log"))
        # What the previous run left: ended by this start, before it serves.
        time.sleep(0.3)
        if rnd > 0:
            orphans_after_restart = max(orphans_after_restart, leftovers(proc))
        # Every acknowledged change so far is there.
        listed = subprocess.run([revisor, "get", "services", "-o", "json", "--server", admin],
                                capture_output=True, text=True, check=True).stdout
        for name in acked:
            if f'"name": "{name}"' not in listed and f'"name":"{name}"' not in listed:
                sys.exit(f"round {rnd}: acknowledged service {name} is lost")
        # The controller makes each service's revision (as Knative's does, after the service is
        # stored): a service acknowledged just before the kill gets it after the restart.
        deadline = time.time() + 20
        while True:
            revisions = subprocess.run([revisor, "get", "revisions", "-o", "json", "--server", admin],
                                       capture_output=True, text=True, check=True).stdout
            missing = [n for n in acked if f'"{n}-00001"' not in revisions]
            if not missing:
                break
            if time.time() > deadline:
                sys.exit(f"round {rnd}: no revision for acknowledged services {missing} 20 s after the restart")
            time.sleep(0.2)
        # Acknowledged deletes stay deleted; then keep the live services (and their processes) few.
        for name in deleted:
            if f'"name": "{name}"' in listed or f'"name":"{name}"' in listed:
                sys.exit(f"round {rnd}: deleted service {name} came back")
        while len(acked) > 8:
            name = acked.pop(0)
            subprocess.run([revisor, "delete", "service", name, "--server", admin], capture_output=True, check=True)
            deleted.append(name)
        # Clients apply services until the kill, at a random moment.
        stop = threading.Event()

        def client():
            while not stop.is_set():
                with lock:
                    counter[0] += 1
                    name = f"k{counter[0]}"
                path = os.path.join(work, f"{name}.yaml")
                with open(path, "w") as f:
                    # One in five runs a replica (and its helper); the rest start at zero, so the
                    # clients can write as fast as they like without flooding the machine.
                    f.write(manifest(upstream, name, counter[0] % 5 == 1))
                r = subprocess.run([revisor, "apply", "-f", path, "--server", admin], capture_output=True, text=True)
                if r.returncode == 0 and "created" in r.stdout:
                    with lock:
                        acked.append(name)
        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.3, 3.0))
        proc.kill()
        proc.wait()
        stop.set()
        for t in threads:
            t.join()
    proc, admin = start(revisor, data, os.path.join(work, "server-final.log"))
    time.sleep(0.5)
    orphans_after_restart = max(orphans_after_restart, leftovers(proc))
    listed = subprocess.run([revisor, "get", "services", "-o", "json", "--server", admin],
                            capture_output=True, text=True, check=True).stdout
    lost = [n for n in acked if f'"{n}"' not in listed]
    back = [n for n in deleted if f'"{n}"' in listed]
    proc.terminate()
    proc.wait(timeout=60)
    time.sleep(0.5)
    left = leftovers()
    print(f"kills: {a.rounds} kill -9s (seed {a.seed}); {counter[0]} applies sent, {len(acked) + len(deleted)} "
          f"acknowledged, {len(lost)} lost; {len(deleted)} acknowledged deletes, {len(back)} came back; "
          f"most helper processes of killed runs still running after a restart: {orphans_after_restart}; "
          f"helper processes after the final graceful stop: {left}")
    sys.exit(0 if not lost and not back and orphans_after_restart == 0 and left == 0 else 1)


def leftovers(proc=None):
    """Helper processes alive, except those in `proc`'s process tree (a new run's replicas start their
    own)."""
    marker = f"86398.{os.getpid()}"
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if marker not in open(f"/proc/{pid}/cmdline").read().replace("\0", " "):
                continue
            # Walk up the parents: a helper of the new run descends from the new server.
            p, ours = pid, False
            while proc is not None and p not in ("0", "1"):
                if p == str(proc.pid):
                    ours = True
                    break
                stat = open(f"/proc/{p}/stat").read()
                p = stat[stat.rfind(")") + 2:].split()[1]
            if not ours:
                n += 1
        except OSError:
            pass
    return n


if __name__ == "__main__":
    main()
