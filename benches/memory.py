#!/usr/bin/env python3
"""Memory figures (issue 15): peak RSS of `converge validate`, and the daemon's resident memory
after the first reconcile of the shipped stack and after hours' worth of resyncs, drift and commits.

    cargo build --release --bin converge && python3 benches/memory.py            # validate only
    tests/testbed/up && . /tmp/converge-testbed/env && python3 benches/memory.py --daemon   # plus the daemon

Prints one JSON line per figure as it is measured, then the whole set; also written to
target/memory-bench.json.

validate: peak RSS (GNU time's %M, maximum resident set size) of `converge validate` on
  - an empty repository (one commit, no desired/): the process's floor,
  - this checkout's shipped desired/ at HEAD (two stacks, six components),
  - a generated 500-component stack (the same documents as benches/desired.rs).
daemon (testbed, **kwok node**): `converge run` on a local clone of this checkout whose desired/dev
  targets a fresh namespace that selects the bed's kwok node (fake Pods: the daemon's own memory
  is measured, not the app's), `--builder none` (nothing is built; tags are computed),
  `--resync 1s --full-resync 5s`. VmRSS is sampled after the first successful reconcile (t0), then
  after each round of churn: every round waits for a forced full resync (the default is one an
  hour) amid cheap resyncs, scales a Deployment by hand (drift, undone by the daemon) and commits
  a one-field change (a new apply), so BENCH_ROUNDS rounds (default 30) stand in for a day or more
  of a developer's daemon. A last sample follows BENCH_IDLE_S (60) seconds of plain idling.
Environment: BENCH_ROUNDS (30), BENCH_IDLE_S (60), BENCH_REPEAT (3 runs of each validate, the median is printed),
BENCH_LOG (a file for the daemon's log), CONVERGE_BIN.
"""

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

import bed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("CONVERGE_BIN", os.path.join(ROOT, "target/release/converge"))
KUBECTL = os.environ.get("CONVERGE_TESTBED_KUBECTL", "kubectl")
HELM = os.environ.get("CONVERGE_TESTBED_HELM", "helm")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "30"))
IDLE_S = int(os.environ.get("BENCH_IDLE_S", "60"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
TIME = os.environ.get("BENCH_TIME", "/usr/bin/time")


def sh(*args, cwd=None, check=True):
    return subprocess.run(args, cwd=cwd, check=check, capture_output=True, text=True).stdout.strip()


def git(repo, *args):
    return sh("git", "-c", "user.name=bench", "-c", "user.email=bench@converge.invalid",
              "-c", "commit.gpgsign=false", *args, cwd=repo)


def peak_rss_mib(args, cwd):
    """Runs `args` under GNU time and returns (exit code, peak resident set size in MiB).

    Not wait4's ru_maxrss of a child of this script: Python starts children with vfork, and exec
    records the parent's own high-water mark (this interpreter's ~13 MiB) as the child's floor.
    GNU time forks from a process of about a megabyte, well under anything measured here."""
    with tempfile.NamedTemporaryFile("r") as f:
        r = subprocess.run([TIME, "-f", "%M", "-o", f.name, *args], cwd=cwd,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return r.returncode, int(f.read().split()[-1]) / 1024  # KiB


def generated_repo(n):
    """The 500-component tree of benches/desired.rs."""
    d = tempfile.mkdtemp(prefix="converge-mem-gen-")
    git(d, "init", "-q", "-b", "main")
    os.makedirs(os.path.join(d, "desired"))
    os.makedirs(os.path.join(d, "charts/app"))
    open(os.path.join(d, "charts/app/Chart.yaml"), "w").write("apiVersion: v2\nname: app\nversion: 0.1.0\n")
    open(os.path.join(d, "desired/stack.yaml"), "w").write(
        "apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: big\nnamespace: big\nchart: charts/app\n")
    for i in range(n):
        dep = f"dependsOn: [c{i - 1}]\n" if i > 0 else ""
        open(os.path.join(d, f"desired/c{i}.yaml"), "w").write(
            f"apiVersion: converge.dev/v1alpha1\nkind: Component\nname: c{i}\nimage:\n  ref: nginx:1.27\n"
            "replicas: 2\nresources:\n  requests: {cpu: 100m, memory: 128Mi}\n  limits: {cpu: 500m, memory: 256Mi}\n"
            "ports:\n  - {name: http, containerPort: 8080}\nenv:\n  LOG_LEVEL: info\n"
            f"secretEnv:\n  - {{name: DB_URL, secret: s, key: url}}\n{dep}")
    git(d, "add", "-A")
    git(d, "commit", "-qm", "gen")
    return d


def validate_figures(out):
    print("memory bench (validate): no cluster, no node: `converge validate` reads git only", flush=True)
    empty = tempfile.mkdtemp(prefix="converge-mem-empty-")
    big = None
    try:
        git(empty, "init", "-q", "-b", "main")
        git(empty, "commit", "-q", "--allow-empty", "-m", "empty")
        big = generated_repo(500)
        for name, repo, want in [("empty_repo", empty, 1), ("shipped", ROOT, 0), ("components_500", big, 0)]:
            runs = []
            for _ in range(REPEAT):
                code, mib = peak_rss_mib([BIN, "validate", "--repo", repo], cwd=repo)
                if code != want:
                    raise SystemExit(f"validate {name}: exit {code}, expected {want}")
                runs.append(mib)
            out.setdefault("validate_peak_rss_mib", {})[name] = round(statistics.median(runs), 1)
            print(json.dumps({f"validate_peak_rss_mib.{name}": round(statistics.median(runs), 1)}), flush=True)
    finally:
        shutil.rmtree(empty, ignore_errors=True)
        if big:
            shutil.rmtree(big, ignore_errors=True)


class Daemon:
    def __init__(self, repo, ctx):
        env = dict(os.environ, CONVERGE_HELM=HELM)
        env.pop("NOTIFY_SOCKET", None)
        self.p = subprocess.Popen(
            [BIN, "run", "--repo", repo, "--stack", "dev", "--context", ctx, "--builder", "none",
             "--log-format", "json", "--log", "converge=info", "--resync", "1s", "--full-resync", "5s",
             "--timeout", "120s"],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.lines = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stderr:
            with self.lock:
                self.lines.append(line.rstrip("\n"))

    def mark(self):
        with self.lock:
            return len(self.lines)

    def find(self, *parts, since=0, timeout=180):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                for i, l in enumerate(self.lines[since:], since):
                    if all(p in l for p in parts):
                        return i, l
            if self.p.poll() is not None:
                raise SystemExit("the daemon exited:\n" + "\n".join(self.lines[-20:]))
            time.sleep(0.05)
        raise SystemExit(f"no log line with {parts} within {timeout}s; last lines:\n" + "\n".join(self.lines[-20:]))

    def count(self, *parts, since=0):
        with self.lock:
            return sum(1 for l in self.lines[since:] if all(p in l for p in parts))

    def memory(self):
        """VmRSS, and its anonymous (heap, stacks) and file-backed (the binary's pages) parts."""
        status = open(f"/proc/{self.p.pid}/status").read()

        def field(name):
            return int(re.search(name + r":\s+(\d+)", status).group(1))
        stat = open(f"/proc/{self.p.pid}/stat").read().rsplit(")", 1)[1].split()
        cpu_s = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        return {"rss_mib": round(field("VmRSS") / 1024, 1), "anon_mib": round(field("RssAnon") / 1024, 1),
                "file_mib": round(field("RssFile") / 1024, 1), "threads": field("Threads"),
                "cpu_s": round(cpu_s, 2)}


def daemon_figures(out):
    ctx = sh(KUBECTL, "config", "current-context")
    ns = "bench-mem-%d" % os.getpid()
    repo = tempfile.mkdtemp(prefix="converge-mem-daemon-")
    d = None
    try:
        # A local clone of this checkout: the shipped chart, apps and desired/, committed history.
        sh("git", "clone", "-q", "--local", "--no-hardlinks", ROOT, repo)
        sh("git", "checkout", "-q", "-B", "main", cwd=repo)
        stack = os.path.join(repo, "desired/dev/stack.yaml")
        text = open(stack).read().replace("namespace: todo-chatbot", f"namespace: {ns}")
        # The NodePort left to the apiserver: 30080 may be a demo's on the same bed. kwok never
        # pulls, so the images' pullPolicy is IfNotPresent: with values-dev's Never, converge
        # refuses (rightly) to apply an image the `none` builder cannot show is on a node.
        text += ("values:\n  frontend:\n    service:\n      nodePort: null\n    image:\n      pullPolicy: IfNotPresent\n"
                 "  backend:\n    image:\n      pullPolicy: IfNotPresent\n")
        open(stack, "w").write(text)
        git(repo, "commit", "-qam", "bench namespace")
        # The kwok node: with a real node on the bed an unannotated namespace lands there, where
        # images converge did not build (`--builder none`) cannot start.
        bed.require_bed()
        bed.create_namespace(ns, "kwok")
        sh(KUBECTL, "-n", ns, "create", "secret", "generic", "todo-chatbot-secrets",
           "--from-literal=postgres-password=bench", "--from-literal=database-url=postgresql://bench",
           "--from-literal=jwt-secret=bench")
        d = Daemon(repo, ctx)
        d.find("ReconciliationSucceeded", timeout=300)
        out["node"] = bed.announce(ns, "memory bench (daemon)")
        time.sleep(3)
        samples = [{"round": 0, **d.memory()}]
        print(json.dumps({"daemon": samples[-1]}), flush=True)
        backend = "deployment/todo-chatbot-backend"
        backend_yaml = os.path.join(repo, "desired/dev/backend.yaml")
        replicas = re.search(r"^replicas: (\d+)", open(backend_yaml).read(), re.M).group(1)
        started = time.time()
        for r in range(1, ROUNDS + 1):
            m = d.mark()
            # Forced full resyncs (every 5 s) and cheap resyncs (every 1 s).
            d.find("ReconciliationSucceeded", '"trigger":"full-resync"', since=m, timeout=60)
            # Drift: a hand-made scale, undone by the daemon (by its drift watch, or by a full
            # resync that was already under way).
            sh(KUBECTL, "-n", ns, "scale", backend, "--replicas=3")
            deadline = time.time() + 60
            while sh(KUBECTL, "-n", ns, "get", backend, "-o", "jsonpath={.spec.replicas}") != replicas:
                if time.time() > deadline:
                    raise SystemExit("drift not corrected within 60 s")
                time.sleep(0.2)
            # A commit: one field changes, the stack is applied again and waited for.
            body = re.sub(r"LOG_LEVEL: \S+", f"LOG_LEVEL: round{r}", open(backend_yaml).read())
            open(backend_yaml, "w").write(body)
            m = d.mark()
            git(repo, "commit", "-qam", f"round {r}")
            short = git(repo, "rev-parse", "--short=7", "HEAD")
            d.find("ReconciliationSucceeded", short, since=m, timeout=180)
            time.sleep(2)
            samples.append({"round": r, **d.memory(), "elapsed_s": round(time.time() - started, 1)})
            print(json.dumps({"daemon": samples[-1]}), flush=True)
        # Then idle: cheap resyncs every second, Lease renewals, watches kept open.
        time.sleep(IDLE_S)
        samples.append({"round": "idle", **d.memory(), "elapsed_s": round(time.time() - started, 1)})
        print(json.dumps({"daemon": samples[-1]}), flush=True)
        out["daemon"] = {
            "rss_after_first_reconcile_mib": samples[0]["rss_mib"],
            "rss_after_rounds_mib": samples[-2]["rss_mib"],
            "rss_after_idle_mib": samples[-1]["rss_mib"],
            "idle_s": IDLE_S,
            "rss_max_mib": max(s["rss_mib"] for s in samples),
            "rounds": ROUNDS,
            "reconciles": d.count("ReconciliationSucceeded"),
            "full_resyncs": d.count("ReconciliationSucceeded", '"trigger":"full-resync"'),
            "drift_corrections_logged": d.count("drift corrected"),
            # CPU the daemon spent per reconcile during the rounds (user + system, from /proc).
            "cpu_ms_per_reconcile": round(1000 * (samples[-2]["cpu_s"] - samples[0]["cpu_s"])
                                          / max(1, d.count("ReconciliationSucceeded") - 1), 1),
            "samples": samples,
        }
    finally:
        if d:
            d.p.terminate()
            try:
                d.p.wait(15)
            except subprocess.TimeoutExpired:
                d.p.kill()
            if os.environ.get("BENCH_LOG"):
                with open(os.environ["BENCH_LOG"], "w") as f:
                    f.write("\n".join(d.lines) + "\n")
        subprocess.run([KUBECTL, "delete", "namespace", ns, "--wait=false"], capture_output=True)
        shutil.rmtree(repo, ignore_errors=True)


def main():
    if not os.path.exists(BIN):
        raise SystemExit(f"{BIN} missing: cargo build --release --bin converge")
    if not os.path.exists(TIME):
        raise SystemExit(f"{TIME} missing: apt-get install time (GNU time measures the peak RSS)")
    out = {"binary": BIN}
    validate_figures(out)
    if "--daemon" in sys.argv[1:]:
        daemon_figures(out)
    print(json.dumps(out, indent=2))
    os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
    with open(os.path.join(ROOT, "target/memory-bench.json"), "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
