#!/usr/bin/env python3
"""Sends a battery of malformed inputs to a fresh `revisor serve`, by class (manifests, API requests,
CLI flags, gateway requests), and prints each answer as a Markdown table: what was sent, the status
or exit code, the first line of the message, and whether the stored objects stayed as they were.
Exits non-zero if any input crashed the server, got a 5xx or an empty answer, or changed anything.

Usage: scripts/reliability/malformed.py
Builds the debug binaries. Standard library only (TLS through Python's ssl with the server's CA).
"""

import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOOD = """apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: good
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "1"
    spec:
      containers:
        - image: x
          command: [UPSTREAM]
"""

MANIFESTS = [
    ("empty name", GOOD.replace("name: good", 'name: ""')),
    ("name with a path", GOOD.replace("name: good", "name: ../services/good")),
    ("unknown field", GOOD.replace("  template:", "  templat: {}\n  template:")),
    ("wrong kind", GOOD.replace("kind: Service", "kind: Deployment")),
    ("YAML syntax", "apiVersion: [unclosed\n"),
    ("not UTF-8", b"\xff\xfe\x00apiVersion".decode("latin-1")),
    ("BOM, otherwise valid (accepted)", "\ufeff" + GOOD.replace("name: good", "name: bom")),
    ("huge Go duration in an annotation",
     GOOD.replace('min-scale: "1"', 'min-scale: "1"\n        autoscaling.knative.dev/window: 99999999999999999999h')),
    ("probe period beyond int32",
     GOOD.replace("command: [UPSTREAM]", "command: [UPSTREAM]\n          readinessProbe: {periodSeconds: 9223372036854775807, tcpSocket: {port: 8080}}")),
    ("cpu 1e400", GOOD.replace("command: [UPSTREAM]", "command: [UPSTREAM]\n          resources: {limits: {cpu: \"1e400\"}}")),
    ("negative percent", GOOD + "  traffic:\n    - latestRevision: true\n      percent: -5\n"),
    ("percents summing to 99", GOOD + "  traffic:\n    - latestRevision: true\n      percent: 99\n"),
    ("Rollout: huge progressDeadline",
     "apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: r\nspec:\n  serviceRef: {name: good}\n"
     "  progressDeadline: 99999999999999999999h\n  strategy:\n    canary:\n      steps: [{setWeight: 10}]\n"),
    ("Rollout: huge pause", "apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: r\nspec:\n"
     "  serviceRef: {name: good}\n  strategy:\n    canary:\n      steps: [{pause: {duration: 3000000h}}]\n"),
    ("Rollout: weight 101", "apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: r\nspec:\n"
     "  serviceRef: {name: good}\n  strategy:\n    canary:\n      steps: [{setWeight: 101}]\n"),
]


def main():
    subprocess.run(["cargo", "build", "-q", "-p", "revisor", "-p", "revisor-testapp"], cwd=ROOT, check=True)
    revisor = os.path.join(ROOT, "target/debug/revisor")
    upstream = os.path.join(ROOT, "target/debug/revisor-test-upstream")
    global GOOD, MANIFESTS
    GOOD = GOOD.replace("UPSTREAM", upstream)
    MANIFESTS = [(w, t.replace("UPSTREAM", upstream)) for w, t in MANIFESTS]
    work = tempfile.mkdtemp(prefix="revisor-malformed-")
    data = os.path.join(work, "data")
    log = os.path.join(work, "server.log")
    proc = subprocess.Popen([revisor, "serve", "--data-dir", data, "--admin-addr", "127.0.0.1:0",
                             "--gateway-addr", "127.0.0.1:0"], stderr=open(log, "w"), stdout=subprocess.DEVNULL)
    admin = gateway = None
    for _ in range(300):
        text = open(log).read()
        m = re.search(r"admin API listening on https://(\S+)", text)
        g = re.search(r"gateway listening on http://(\S+)", text)
        admin, gateway = m and m.group(1), g and g.group(1)
        if admin and gateway:
            break
        time.sleep(0.05)
    token = open(os.path.join(data, "admin-token")).read().strip()
    tls = ssl.create_default_context(cafile=os.path.join(data, "tls", "ca.crt"))
    rows = []
    bad = []

    def cli(*args, stdin=None):
        r = subprocess.run([revisor, *args], capture_output=True, text=True, input=stdin,
                           env={**os.environ, "REVISOR_SERVER": f"https://{admin}"})
        lines = [l.strip() for l in (r.stderr or r.stdout).strip().splitlines()]
        lines = [re.sub(r"/tmp/revisor-malformed-[^/]+/", "", l) for l in lines]
        # A refused manifest's first line says that nothing was applied; the last says why.
        if len(lines) > 1:
            lines = [lines[0] + " ... " + lines[-1]]
        return r.returncode, lines[:1]

    def stored():
        """Every stored object by kind, namespace, name and generation (status moves on by itself)."""
        out = set()
        for kind in ("services", "revisions", "rollouts"):
            r = subprocess.run([revisor, "get", kind, "-A", "-o", "json"], capture_output=True, text=True,
                               env={**os.environ, "REVISOR_SERVER": f"https://{admin}"})
            for o in json.loads(r.stdout or "{}").get("items", []):
                m = o.get("metadata", {})
                out.add((kind, m.get("namespace"), m.get("name"), m.get("generation")))
        return out

    def raw(host, port, payload, wrap=False):
        s = socket.create_connection((host, int(port)), timeout=10)
        if wrap:
            s = tls.wrap_socket(s, server_hostname="127.0.0.1")
        s.sendall(payload)
        chunks = []
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    break
                chunks.append(c)
        except (socket.timeout, ConnectionResetError, ssl.SSLError):
            pass
        s.close()
        return b"".join(chunks).decode(errors="replace")

    # A baseline object, so "changed nothing" has something to keep.
    path = os.path.join(work, "good.yaml")
    open(path, "w").write(GOOD)
    cli("apply", "-f", path)

    for what, text in MANIFESTS:
        before = stored()
        p = os.path.join(work, "m.yaml")
        with open(p, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        code, msg = cli("apply", "-f", p)
        after = stored()
        accepted = "accepted" in what
        changed = before != after
        verdict = ("created, as it should" if changed else "NO") if accepted else ("yes" if not changed else "NO")
        rows.append(("manifest", what, f"exit {code}", msg[0] if msg else "", verdict))
        if (code == 0) != accepted or (changed and not accepted):
            bad.append(what)

    host, port = admin.rsplit(":", 1)
    svc = "/apis/serving.knative.dev/v1/namespaces/default/services"
    auth = f"Authorization: Bearer {token}\r\n"
    body = json.dumps({"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "evil"},
                       "spec": {"template": {"spec": {"containers": [{"image": "x", "command": ["/bin/true"]}]}}}})
    requests = [
        ("no token", f"POST {svc} HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\n"),
        ("wrong token", f"POST {svc} HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {'0' * 64}\r\nContent-Type: application/json\r\n"),
        ("another site's Origin", f"POST {svc} HTTP/1.1\r\nHost: {admin}\r\n{auth}Origin: http://evil.example\r\nContent-Type: application/json\r\n"),
        ("DNS rebinding Host", f"POST {svc} HTTP/1.1\r\nHost: evil.example:{port}\r\n{auth}Content-Type: application/json\r\n"),
        ("two Host headers", f"POST {svc} HTTP/1.1\r\nHost: {admin}\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"),
        ("no Content-Type", f"POST {svc} HTTP/1.1\r\nHost: {admin}\r\n{auth}"),
        ("text/plain body", f"POST {svc} HTTP/1.1\r\nHost: {admin}\r\n{auth}Content-Type: text/plain\r\n"),
        ("path traversal in the log path",
         f"GET /apis/serving.knative.dev/v1/namespaces/..%2F..%2F..%2Fetc/revisions/x/log HTTP/1.1\r\nHost: {admin}\r\n{auth}"),
        ("body over 3 MiB", f"POST {svc} HTTP/1.1\r\nHost: {admin}\r\n{auth}Content-Type: application/json\r\n", "x" * (4 << 20)),
        ("truncated JSON", f"POST {svc} HTTP/1.1\r\nHost: {admin}\r\n{auth}Content-Type: application/json\r\n", body[:40]),
        ("undo to a revision that does not exist",
         f"POST /apis/revisor.dev/v1alpha1/namespaces/default/rollouts/none/undo HTTP/1.1\r\nHost: {admin}\r\n{auth}Content-Type: application/json\r\n",
         '{"toRevision": "nope-00009"}'),
    ]
    for item in requests:
        what, head = item[0], item[1]
        payload = item[2] if len(item) > 2 else body
        before = stored()
        out = raw(host, port, (head + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n" + payload).encode(), wrap=True)
        after = stored()
        status = out.split(" ", 2)[1] if out.startswith("HTTP/") else "no answer"
        m = re.search(r'"message":"((?:[^"\\]|\\.)*)"', out)
        msg = m.group(1).replace('\\"', '"') if m else ""
        rows.append(("admin API", what, status, msg, "yes" if before == after else "NO"))
        if before != after or not status.isdigit() or status.startswith("5") or status.startswith("2"):
            bad.append(what)
    # Plain HTTP to the HTTPS port.
    out = raw(host, port, f"GET {svc} HTTP/1.1\r\nHost: {admin}\r\n{auth}\r\n".encode())
    rows.append(("admin API", "plain HTTP", "no answer" if not out.startswith("HTTP/") else out[:12], "", "yes"))

    flags = [
        ("name with a path", ["delete", "revision", "../services/good"]),
        ("namespace not a DNS label", ["get", "services", "-n", "Bad_NS"]),
        ("traffic percent not a number", ["traffic", "good", "--traffic", "@latest=abc"]),
        ("traffic over 100", ["traffic", "good", "--traffic", "@latest=101"]),
        ("wait timeout beyond any clock", ["apply", "-f", path, "--wait", "--timeout", "99999999999999999999h"]),
        ("server not a URL", ["get", "services", "--server", "127.0.0.1:7070"]),
        ("unknown command", ["frobnicate"]),
        ("model-server batch delay beyond any clock", ["model-server", "--model", "/nonexistent.onnx", "--port", "0", "--max-batch-size", "4", "--max-batch-delay", "99999999999999999999h"]),
    ]
    for what, args in flags:
        before = stored()
        code, msg = cli(*args)
        after = stored()
        rows.append(("CLI flag", what, f"exit {code}", msg[0] if msg else "", "yes" if before == after else "NO"))
        if code == 0 or code == 101 or before != after:
            bad.append(what)

    ghost, gport = gateway.rsplit(":", 1)
    gw = [
        ("no Host", b"GET / HTTP/1.1\r\n\r\n"),
        ("two Host headers", b"GET / HTTP/1.1\r\nHost: good.default.localhost\r\nHost: x\r\n\r\n"),
        ("header over the limit", b"GET / HTTP/1.1\r\nHost: good.default.localhost\r\nX: " + b"a" * 70000 + b"\r\n\r\n"),
        ("unknown host", b"GET / HTTP/1.1\r\nHost: nothing.default.localhost\r\n\r\n"),
        ("garbage", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64),
        ("chunked body with a bad chunk size", b"POST / HTTP/1.1\r\nHost: good.default.localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
    ]
    for what, payload in gw:
        out = raw(ghost, gport, payload + b"")
        status = out.split(" ", 2)[1] if out.startswith("HTTP/") else "connection closed"
        body_line = out.split("\r\n\r\n", 1)[1].strip().splitlines()[0] if "\r\n\r\n" in out and out.split("\r\n\r\n", 1)[1].strip() else ""
        rows.append(("gateway", what, status, body_line, "yes"))
        if status.startswith("5") and what != "unknown host":
            bad.append(what)

    alive = proc.poll() is None
    proc.terminate()
    proc.wait(timeout=60)
    print("| class | input | answer | message (first line) | nothing changed |")
    print("|---|---|---|---|---|")
    for cls, what, answer, msg, unchanged in rows:
        msg = msg.replace("|", "\\|")[:220]
        print(f"| {cls} | {what} | {answer} | {msg} | {unchanged} |")
    print(f"\n{len(rows)} inputs; the server {'stayed up' if alive else 'CRASHED'}; unexpected answers: {bad or 'none'}")
    sys.exit(0 if alive and not bad else 1)


if __name__ == "__main__":
    main()
