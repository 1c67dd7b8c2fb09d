#!/usr/bin/env python3
"""Figures for the daemon (issue 7), measured on the testbed with the real `converge run` process.

    tests/testbed/up && . /tmp/converge-testbed/env
    cargo build --release --bin converge && python3 benches/daemon.py

Node: the **kwok** node. The stack runs the image ref `todo-backend:test`, which exists nowhere:
these are figures of converge's control loop (watches, applies, drift), not of an app starting,
so the bench's namespace selects the kwok node (fake Pods, Ready at once), and says so. On a bed
with a real node an unannotated namespace lands there, where that image cannot start; the
real-node figures (the shipped app, built by converge) are benches/realnode.py's.

Prints, and writes as JSON to target/daemon-bench.json:
  - commit-to-apply-start latency p50/p99 (git commit started -> the daemon's "apply started"
    log line for that commit; builds excluded: the stack uses prebuilt image refs),
  - warm no-op resync: how long the resync decision took and API requests sent (from /metrics),
  - idle resident memory (VmRSS) with the stack managed,
  - idle CPU over 60 s (utime+stime from /proc),
  - commit-to-healthy latency p50/p99 for a one-field change (git commit started -> the
    daemon's report line for that commit, applied and healthy),
  - drift-correction latency p50/p99: the "drift: changed out of band" log line (the watch
    event) -> the "applied" line of the corrected object, and kubectl scale started -> replicas
    back as seen by polling. Drifts are BENCH_DRIFT_GAP_S (6 s) apart: closer drifts of one
    object are a fight with another controller, which the daemon deliberately slows down.
Environment: BENCH_COMMITS (default 20), BENCH_DRIFTS (20), BENCH_DRIFT_GAP_S (6),
BENCH_IDLE_S (60), CONVERGE_BIN.
"""

import datetime
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
import urllib.request

import bed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("CONVERGE_BIN", os.path.join(ROOT, "target/release/converge"))
KUBECTL = os.environ.get("CONVERGE_TESTBED_KUBECTL", "kubectl")
HELM = os.environ.get("CONVERGE_TESTBED_HELM", "helm")
COMMITS = int(os.environ.get("BENCH_COMMITS", "20"))
DRIFTS = int(os.environ.get("BENCH_DRIFTS", "20"))
DRIFT_GAP_S = float(os.environ.get("BENCH_DRIFT_GAP_S", "6"))
IDLE_S = int(os.environ.get("BENCH_IDLE_S", "60"))


def sh(*args, cwd=None, check=True):
    return subprocess.run(args, cwd=cwd, check=check, capture_output=True, text=True).stdout.strip()


def context():
    return sh(KUBECTL, "config", "current-context")


def ts(line):
    t = json.loads(line)["timestamp"]
    return datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()


class Daemon:
    def __init__(self, repo):
        env = dict(os.environ, CONVERGE_HELM=HELM)
        env.pop("NOTIFY_SOCKET", None)
        self.p = subprocess.Popen(
            [BIN, "run", "--repo", repo, "--context", context(), "--log-format", "json",
             "--log", "converge=debug", "--resync", "2s", "--timeout", "60s"],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.lines = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stderr:
            with self.lock:
                self.lines.append(line.rstrip("\n"))

    def find(self, *parts, since=0, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                for i, l in enumerate(self.lines[since:], since):
                    if all(p in l for p in parts):
                        return i, l
            time.sleep(0.01)
        raise SystemExit(f"no log line with {parts} within {timeout}s")

    def mark(self):
        with self.lock:
            return len(self.lines)


def write_stack(repo, ns, version):
    os.makedirs(os.path.join(repo, "desired"), exist_ok=True)
    with open(os.path.join(repo, "desired/stack.yaml"), "w") as f:
        f.write("apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: bench\nnamespace: %s\n"
                "values:\n  migrations:\n    enabled: false\n"
                # The NodePort left to the apiserver: 30080 may be a demo's on the same bed.
                "  frontend:\n    service:\n      nodePort: null\n" % ns)
    with open(os.path.join(repo, "desired/backend.yaml"), "w") as f:
        f.write("apiVersion: converge.dev/v1alpha1\nkind: Component\nname: backend\nimage:\n"
                "  ref: todo-backend:test\nreplicas: 1\nenv:\n  VERSION: \"%s\"\n" % version)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def metric(addr, name):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} missing: cargo build --release --bin converge")
    repo = tempfile.mkdtemp(prefix="converge-bench-")
    ns = "bench-daemon-%d" % os.getpid()
    out = {}
    d = None
    try:
        sh("git", "init", "-q", "-b", "main", cwd=repo)
        sh("git", "config", "user.email", "bench@converge.invalid", cwd=repo)
        sh("git", "config", "user.name", "bench", cwd=repo)
        shutil.copytree(os.path.join(ROOT, "charts/todo-chatbot"), os.path.join(repo, "charts/todo-chatbot"))
        write_stack(repo, ns, "v0")
        sh("git", "add", "-A", cwd=repo)
        sh("git", "commit", "-qm", "stack", cwd=repo)
        bed.require_bed()
        bed.create_namespace(ns, "kwok")
        d = Daemon(repo)
        d.find("ReconciliationSucceeded", timeout=180)
        pid = d.p.pid
        out["node"] = bed.announce(ns, "daemon bench")

        # Commit -> apply start.
        lat, healthy = [], []
        for i in range(1, COMMITS + 1):
            write_stack(repo, ns, f"v{i}")
            sh("git", "add", "-A", cwd=repo)
            m = d.mark()
            t0 = time.time()
            sh("git", "commit", "-qm", f"v{i}", cwd=repo)
            short = sh("git", "rev-parse", "--short=7", "HEAD", cwd=repo)
            _, line = d.find("apply started", short, since=m)
            lat.append((ts(line) - t0) * 1000)
            _, report = d.find("unchanged", short, since=m, timeout=120)
            if "ReconciliationSucceeded" in report:
                healthy.append((ts(report) - t0) * 1000)
        out["commit_to_apply_start_ms"] = {"n": len(lat), "p50": round(statistics.median(lat), 1),
                                           "p99": round(pct(lat, 99), 1), "max": round(max(lat), 1)}
        if healthy:
            out["commit_to_healthy_ms"] = {"n": len(healthy), "p50": round(statistics.median(healthy), 1),
                                           "p99": round(pct(healthy, 99), 1), "max": round(max(healthy), 1)}
        print(json.dumps(out), flush=True)

        # Warm no-op resync: --resync 2s; the watch cache proves nothing changed.
        addr = json.load(open(os.path.join(repo, ".git/converge.lock")))["http"]
        time.sleep(3)
        before = metric(addr, "converge_api_requests_total")
        skipped0 = metric(addr, "converge_resyncs_skipped_total")
        m = d.mark()
        took = []
        for _ in range(3):
            i, line = d.find("resync: nothing changed", since=m, timeout=30)
            took.append(json.loads(line)["fields"].get("took_us", 0))
            m = i + 1
        after = metric(addr, "converge_api_requests_total")
        out["warm_noop_resync"] = {"decision_us": took, "api_requests": after - before,
                                   "skipped": metric(addr, "converge_resyncs_skipped_total") - skipped0}
        print(json.dumps(out), flush=True)

        # Idle memory and CPU.
        tick = os.sysconf("SC_CLK_TCK")

        def cpu():
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / tick

        rss = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))
        c0, w0 = cpu(), time.time()
        time.sleep(IDLE_S)
        c1, w1 = cpu(), time.time()
        out["idle_rss_mib"] = round(rss / 1024, 1)
        out["idle_cpu"] = {"seconds": round(c1 - c0, 3), "over_s": round(w1 - w0, 1),
                           "percent": round(100 * (c1 - c0) / (w1 - w0), 3)}
        print(json.dumps(out), flush=True)

        # Drift correction.
        seen, wall = [], []
        deploy = "deployment/bench-todo-chatbot-backend"
        for _ in range(DRIFTS):
            time.sleep(DRIFT_GAP_S)
            m = d.mark()
            t0 = time.time()
            sh(KUBECTL, "-n", ns, "scale", deploy, "--replicas=3")
            _, ev = d.find("drift: changed out of band", since=m, timeout=30)
            while sh(KUBECTL, "-n", ns, "get", deploy, "-o", "jsonpath={.spec.replicas}") != "1":
                if time.time() - t0 > 30:
                    raise SystemExit("drift not corrected within 30 s")
            wall.append((time.time() - t0) * 1000)
            _, done = d.find('"message":"applied"', "Deployment/bench-todo-chatbot-backend", since=m, timeout=30)
            seen.append((ts(done) - ts(ev)) * 1000)
        out["drift_correction_ms"] = {
            "n": len(seen),
            "event_to_reapplied_p50": round(statistics.median(seen), 1),
            "event_to_reapplied_p99": round(pct(seen, 99), 1),
            "event_to_reapplied_max": round(max(seen), 1),
            "kubectl_to_reverted_p50": round(statistics.median(wall), 1),
            "kubectl_to_reverted_p99": round(pct(wall, 99), 1)}
    finally:
        if d:
            d.p.terminate()
            try:
                d.p.wait(15)
            except subprocess.TimeoutExpired:
                d.p.kill()
        subprocess.run([KUBECTL, "delete", "namespace", ns, "--wait=false"], capture_output=True)
        shutil.rmtree(repo, ignore_errors=True)
    print(json.dumps(out, indent=2))
    os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
    with open(os.path.join(ROOT, "target/daemon-bench.json"), "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
