#!/usr/bin/env python3
"""Real-node figures (issue 22): the shipped todo-chatbot (`desired/dev`, the chart, `apps/`) driven
by the real `converge run` daemon on the testbed's **real node**, the way a user drives it — git
commits and one `kubectl scale` by hand — with the images built by converge's own builder.

    tests/testbed/up && . /tmp/converge-testbed/env
    cargo build --release --bin converge && python3 benches/realnode.py

Figures (seconds from the moment `git commit` / `kubectl scale` is started; median, min, max):
  a) a one-line `replicas` commit (backend 2 -> 3, and 3 -> 2): -> the Deployment applied (the
     daemon's "applied" line), -> healthy (the daemon's report line, ReconciliationSucceeded; and
     the cluster's own view: the Deployment's available replicas, from a watch);
  b) a commit under `apps/backend` -> serving (the new image rolled out, the report line, then
     the frontend's NodePort answering /api/tasks through backend and database), build included;
  c) `git revert` of it -> serving, with the number of image builds (should be zero);
  d) a hand `kubectl scale` of the backend -> undone (spec.replicas back, seen by a watch);
  e) where the seconds go, from the daemon's JSON log (`--log-format json`) and Pod watches:
     queue (commit -> "reconcile started": ref watch + debounce), prepare (read, validate,
     build, render; build separately), pre-hooks ("apply started" -> the last hook ended),
     apply -> report (apply, rollout, probes, waves), and for the Pods converge's apply created:
     created -> container running -> startup probe passed -> Ready, and the migration Job's Pod.
Also counted per commit: hooks run, drift events logged (converge's own actions should be none),
health waits preempted.

Runs in a namespace of its own (`bench-real-<pid>`, labelled converge.bench=true, deleted at
the end); the first converge builds both images if the bed's engine does not hold them yet (cold:
many minutes; later runs reuse the engine's layers and tags). Everything after the first converge
is bounded by a few minutes. Prints the figures and writes them as JSON to
target/realnode-bench[-LABEL].json, with the daemon's log beside it (.log).

Environment: CONVERGE_BIN (target/release/converge), BENCH_LABEL (e.g. before/after: names the
output files), BENCH_REV (HEAD: the commit of this checkout whose apps/, chart and desired/dev
are deployed), BENCH_REPLICAS (3 up-and-down pairs), BENCH_BUILDS (2 backend commits, each
reverted), BENCH_DRIFTS (5), BENCH_DRIFT_GAP_S (8: drifts of one object closer than the daemon's
fight window are slowed down on purpose).
"""

import datetime
import json
import os
import re
import shutil
import signal
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
KUBECTL = bed.KUBECTL
HELM = os.environ.get("CONVERGE_TESTBED_HELM", "helm")
REV = os.environ.get("BENCH_REV", "HEAD")
LABEL = os.environ.get("BENCH_LABEL", "")
REPLICAS_REPS = int(os.environ.get("BENCH_REPLICAS", "3"))
BUILDS = int(os.environ.get("BENCH_BUILDS", "2"))
DRIFTS = int(os.environ.get("BENCH_DRIFTS", "5"))
DRIFT_GAP_S = float(os.environ.get("BENCH_DRIFT_GAP_S", "8"))
FIRST_TIMEOUT = float(os.environ.get("BENCH_FIRST_TIMEOUT_S", "2400"))
RELEASE = "todo-chatbot"
BACKEND = f"{RELEASE}-backend"
REPORT = re.compile(r"^\d+ applied, \d+ unchanged, \d+ pruned")


def sh(*args, cwd=None, check=True, input=None):
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, input=input)
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: exit {r.returncode}\n{r.stderr.strip()}")
    return r.stdout.strip()


def git(repo, *args):
    return sh("git", "-c", "user.name=bench", "-c", "user.email=bench@converge.invalid",
              "-c", "commit.gpgsign=false", *args, cwd=repo)


def parse_ts(s):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?$", s or "")
    if not m:
        return None
    tz = m.group(3) or "Z"
    base = datetime.datetime.fromisoformat(m.group(1) + ("+00:00" if tz == "Z" else tz))
    return base.timestamp() + (float("0" + m.group(2)) if m.group(2) else 0.0)


class Event:
    """One JSON log line of the daemon."""

    def __init__(self, raw, arrived):
        self.raw = raw
        try:
            j = json.loads(raw)
        except ValueError:
            j = {}
        self.fields = j.get("fields", {}) if isinstance(j, dict) else {}
        self.msg = self.fields.get("message", "")
        self.level = j.get("level", "") if isinstance(j, dict) else ""
        self.t = parse_ts(j.get("timestamp") if isinstance(j, dict) else None) or arrived
        span = {}
        for s in (j.get("spans") or []) if isinstance(j, dict) else []:
            span.update(s)
        if isinstance(j, dict) and isinstance(j.get("span"), dict):
            span.update(j["span"])
        self.commit = span.get("commit")
        self.trigger = span.get("trigger")

    def is_report(self):
        return bool(REPORT.match(self.msg))

    def ok(self):
        return self.is_report() and self.fields.get("reason") == "ReconciliationSucceeded" \
            and "preempted" not in self.msg


class Daemon:
    def __init__(self, repo, ctx):
        env = dict(os.environ, CONVERGE_HELM=HELM)
        bed_dir = os.environ.get("CONVERGE_TESTBED_DIR")
        if bed_dir:  # as tests/integration/realnode.rs: the bed's helm home
            for k, sub in [("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")]:
                env[k] = os.path.join(bed_dir, "helm", sub)
        for k in ["NOTIFY_SOCKET", "CONVERGE_LOG", "CONVERGE_CONTEXT"]:
            env.pop(k, None)
        self.p = subprocess.Popen(
            [BIN, "run", "--repo", repo, "--stack", "dev", "--context", ctx, "--log-format", "json",
             "--log", "info", "--resync", "1h"],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.events = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stderr:
            e = Event(line.rstrip("\n"), time.time())
            with self.lock:
                self.events.append(e)

    def mark(self):
        with self.lock:
            return len(self.events)

    def since(self, i):
        with self.lock:
            return list(self.events[i:])

    def find(self, pred, since=0, timeout=120, what="a log line"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                for i in range(since, len(self.events)):
                    if pred(self.events[i]):
                        return i, self.events[i]
            if self.p.poll() is not None:
                raise SystemExit("the daemon exited:\n" + self.tail())
            time.sleep(0.02)
        raise SystemExit(f"no {what} within {timeout:.0f}s; the daemon's last lines:\n" + self.tail())

    def quiet(self, for_s=3.0, at_most=60.0):
        """Waits until the daemon logged nothing for `for_s` (follow-up reconciles done)."""
        end = time.time() + at_most
        while time.time() < end:
            with self.lock:
                last = self.events[-1].t if self.events else 0
            if time.time() - max(last, 0) >= for_s:
                return
            time.sleep(0.2)

    def tail(self, n=30):
        with self.lock:
            return "\n".join(e.raw for e in self.events[-n:])

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()


class Watch:
    """`kubectl get KIND -w -o json`: every version of every object, with its arrival time."""

    def __init__(self, ns, kind):
        self.ns, self.kind = ns, kind
        self.events = []  # (arrival, type, object)
        self.lock = threading.Lock()
        self.stopped = False
        self.p = None
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stopped:
            self.p = subprocess.Popen(
                [KUBECTL, "-n", self.ns, "get", self.kind, "-w", "--output-watch-events", "-o", "json"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            buf = []
            for line in self.p.stdout:
                # One event per line (kubectl 1.35); older kubectl pretty-prints, ending each
                # event with a "}" line.
                t = time.time()
                buf.append(line)
                try:
                    ev = json.loads("".join(buf))
                except ValueError:
                    if line.rstrip("\n") == "}" or len(buf) > 100_000:
                        buf = []
                    continue
                buf = []
                if isinstance(ev, dict) and "object" in ev:
                    with self.lock:
                        self.events.append((t, ev.get("type"), ev["object"]))
            self.p.wait()
            time.sleep(0.5)

    def mark(self):
        with self.lock:
            return len(self.events)

    def since(self, i=0):
        with self.lock:
            return list(self.events[i:])

    def first(self, pred, since=0, timeout=120, what="a watch event"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                for i in range(since, len(self.events)):
                    if pred(self.events[i][2]):
                        return i, self.events[i][0]
            time.sleep(0.02)
        raise SystemExit(f"no {what} within {timeout:.0f}s")

    def latest(self, name, pred, timeout=120, what="a state"):
        """Waits until the newest version of object `name` satisfies `pred`."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                o = next((o for _, _, o in reversed(self.events) if o.get("metadata", {}).get("name") == name), None)
            if o is not None and pred(o):
                return time.time()
            time.sleep(0.05)
        raise SystemExit(f"no {what} within {timeout:.0f}s")

    def stop(self):
        self.stopped = True
        if self.p and self.p.poll() is None:
            self.p.kill()


def deploy_settled(o, name, replicas, image=None):
    """The Deployment `name` rolled out: `replicas` updated, ready and available, no old Pods."""
    if o.get("metadata", {}).get("name") != name:
        return False
    sp, st = o.get("spec", {}), o.get("status", {})
    if st.get("observedGeneration", 0) < o["metadata"].get("generation", 0):
        return False
    if sp.get("replicas") != replicas:
        return False
    if image and sp["template"]["spec"]["containers"][0]["image"] != image:
        return False
    return all(st.get(k, 0) == replicas for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas"))


def pod_timelines(watch, t0, prefix):
    """For each Pod named `prefix…` first seen after t0: when it was created, its container
    running, started (startup probe passed), Ready, Succeeded; from watch arrival times."""
    pods = {}
    for t, typ, o in watch.since(0):
        name = o.get("metadata", {}).get("name", "")
        if not name.startswith(prefix):
            continue
        created = parse_ts(o["metadata"].get("creationTimestamp"))
        if created is not None and created < t0 - 1:
            continue
        p = pods.setdefault(name, {"seen": t})
        st = o.get("status", {})
        cs = (st.get("containerStatuses") or [{}])[0]
        if "running" in (cs.get("state") or {}) and "running" not in p:
            p["running"] = t
        if cs.get("started") and "started" not in p:
            p["started"] = t
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
        if ready and "ready" not in p:
            p["ready"] = t
        if st.get("phase") == "Succeeded" and "succeeded" not in p:
            p["succeeded"] = t
        if (typ == "DELETED" or o["metadata"].get("deletionTimestamp")) and "deleted" not in p:
            p["deleted"] = t
    return pods


def is_job_hook_start(e):
    """A hook Job started (the migration): ServiceAccount hooks are not counted."""
    return e.msg == "hook started" and e.fields.get("hook", "").startswith("Job/")


def reconcile_timeline(events, t0, commit):
    """Phases of the first reconcile of `commit` among `events`, in seconds after t0."""
    starts = [i for i, e in enumerate(events) if e.msg == "reconcile started"]
    mine = [i for i in starts if events[i].commit and commit.startswith(events[i].commit)]
    if not mine:
        return {}
    a = mine[0]
    b = next((i for i in starts if i > a), len(events))
    run = events[a:b]
    rel = lambda e: round(e.t - t0, 3)
    tl = {"trigger": run[0].trigger, "reconcile_started": rel(run[0])}
    new = [e for e in events[:a] if e.msg == "new commit"]
    if new:
        tl["new_commit_seen"] = rel(new[-1])
    builds = [e for e in run if e.fields.get("step") == "build.done"]
    tl["builds"] = [{"component": e.fields.get("component"), "action": e.fields.get("action"),
                     "s": round(int(e.fields.get("elapsed_ms", 0)) / 1000, 3)} for e in builds]
    tl["built"] = sum(1 for e in run if e.msg == "building image")
    for e in run:
        if e.msg == "apply started":
            tl["apply_started"] = rel(e)
            break
    hooks = []
    for e in run:
        if e.msg.startswith("hook ") and "hook" in e.fields:
            hooks.append({"hook": e.fields["hook"].split(" (")[0], "what": e.msg, "at": rel(e)})
    tl["hooks"] = hooks
    tl["jobs_run"] = sum(1 for h in hooks if h["what"] == "hook started" and h["hook"].startswith("Job/"))
    applied = [(e.fields.get("object", "").split(" (")[0], rel(e)) for e in run if e.msg == "applied"]
    tl["applied"] = applied
    if applied:
        tl["first_applied"] = applied[0][1]
        tl["last_applied"] = applied[-1][1]
        pre = [h["at"] for h in hooks if h["at"] <= applied[0][1] and h["what"] != "hook started"]
        if pre:
            tl["pre_hooks_done"] = max(pre)
    rep = [e for e in run if e.is_report()]
    if rep:
        tl["report"] = rel(rep[0])
        tl["report_line"] = rep[0].msg
        tl["reason"] = rep[0].fields.get("reason")
    tl["preempted"] = any("preempted" in e.msg for e in run)
    return tl


def phases(tl):
    """queue / prepare (build) / pre-hooks / apply->report, in seconds."""
    out = {}
    if "reconcile_started" in tl:
        out["queue"] = tl["reconcile_started"]
    if "apply_started" in tl:
        out["prepare"] = round(tl["apply_started"] - tl["reconcile_started"], 3)
        out["build"] = round(sum(b["s"] for b in tl.get("builds", [])), 3)
        hooks_end = tl.get("pre_hooks_done", tl["apply_started"])
        out["pre_hooks"] = round(hooks_end - tl["apply_started"], 3)
        if "report" in tl:
            out["apply_to_report"] = round(tl["report"] - hooks_end, 3)
    return out


def stats(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"n": len(xs), "median": round(statistics.median(xs), 3), "min": round(min(xs), 3),
            "max": round(max(xs), 3)}


def http_ok(port, path, timeout=2):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - any failure is "not serving yet"
        return False


class Bench:
    def __init__(self):
        self.ns = "bench-real-%d" % os.getpid()
        self.repo = tempfile.mkdtemp(prefix="converge-realnode-")
        self.out = {"binary": BIN, "label": LABEL, "rev": REV, "namespace": self.ns, "runs": {}}
        self.d = None
        self.pods = None
        self.deploys = None

    def user_repo(self):
        """What a user has: the shipped apps, chart and desired/dev at REV; only the namespace is
        the bench's own and the NodePort left to the apiserver (30080 may be a demo's)."""
        archive = subprocess.run(["git", "archive", REV, "apps/backend", "apps/frontend",
                                  "charts/todo-chatbot", "desired/dev"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", self.repo], input=archive.stdout, check=True)
        git(self.repo, "init", "-q", "-b", "main")
        stack = os.path.join(self.repo, "desired/dev/stack.yaml")
        text = open(stack).read().replace("namespace: todo-chatbot", f"namespace: {self.ns}")
        text += "values:\n  frontend:\n    service:\n      nodePort: null\n"
        open(stack, "w").write(text)
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-qm", "the todo-chatbot stack")

    def secret(self):
        pw = os.urandom(9).hex()
        sh(KUBECTL, "-n", self.ns, "create", "secret", "generic", "todo-chatbot-secrets",
           f"--from-literal=postgres-password={pw}",
           f"--from-literal=database-url=postgresql+psycopg://todo:{pw}@{RELEASE}-postgres:5432/todo",
           f"--from-literal=jwt-secret={os.urandom(16).hex()}")

    def commit(self, message):
        """Commits what is staged; returns (t0, full sha). t0: just before `git commit` starts."""
        t0 = time.time()
        git(self.repo, "commit", "-qam", message)
        return t0, git(self.repo, "rev-parse", "HEAD")

    def wait_ok(self, sha, since, timeout):
        return self.d.find(lambda e: e.ok() and e.commit and sha.startswith(e.commit), since=since,
                           timeout=timeout, what=f"ReconciliationSucceeded for {sha[:7]}")

    def after(self, m, t0, sha, extra):
        """The follow-up of one commit: timeline, phases, what else the daemon did after it."""
        self.d.quiet()
        evs = self.d.since(m)
        tl = reconcile_timeline(evs, t0, sha)
        extra.update({
            "timeline": tl, "phases": phases(tl),
            "drift_events": sum(1 for e in evs if e.msg.startswith("drift:")),
            "drift_objects": sorted({e.fields.get("object", "").split(" (")[0] for e in evs if e.msg.startswith("drift:")}),
            "reconciles": sum(1 for e in evs if e.msg == "reconcile started"),
            "migration_runs": sum(1 for e in evs if is_job_hook_start(e)),
            "hooks_skipped": sum(1 for e in evs if e.msg.startswith("hook ") and "skipped" in e.msg),
            "preempted": any("preempted" in e.msg for e in evs),
        })
        return extra

    def deploy_image(self, name):
        return sh(KUBECTL, "-n", self.ns, "get", "deployment", name, "-o",
                  "jsonpath={.spec.template.spec.containers[0].image}")

    def replicas_commit(self, n):
        f = os.path.join(self.repo, "desired/dev/backend.yaml")
        text = re.sub(r"^replicas: \d+", f"replicas: {n}", open(f).read(), flags=re.M)
        open(f, "w").write(text)
        m, w, pw = self.d.mark(), self.deploys.mark(), self.pods.mark()
        t0, sha = self.commit(f"backend: {n} replicas")
        _, applied = self.d.find(lambda e: e.msg == "applied" and f"Deployment/{BACKEND} " in e.fields.get("object", "") + " "
                                 and e.commit and sha.startswith(e.commit), since=m, timeout=120,
                                 what="the backend Deployment applied")
        _, ok = self.wait_ok(sha, m, 300)
        _, t_spec = self.deploys.first(lambda o: o["metadata"]["name"] == BACKEND and o["spec"].get("replicas") == n,
                                       since=w, what="spec.replicas in the cluster")
        _, t_settled = self.deploys.first(lambda o: deploy_settled(o, BACKEND, n), since=w, timeout=300,
                                          what=f"{BACKEND} settled at {n}")
        r = {"replicas": n, "commit": sha[:7],
             "to_applied": round(applied.t - t0, 3), "to_spec_in_cluster": round(t_spec - t0, 3),
             "to_healthy_report": round(ok.t - t0, 3), "to_settled_in_cluster": round(t_settled - t0, 3)}
        self.after(m, t0, sha, r)
        pods = pod_timelines(self.pods, t0, BACKEND)
        r["new_pods"] = {k: {x: round(v - t0, 3) for x, v in p.items()} for k, p in pods.items()}
        r["hook_pods"] = {k: {x: round(v - t0, 3) for x, v in p.items()}
                          for k, p in pod_timelines(self.pods, t0, f"{RELEASE}-migrations").items()}
        return r

    def build_commit(self, i, port):
        note = os.path.join(self.repo, "apps/backend/app/build_note.py")
        open(note, "w").write(f'"""Changed by benches/realnode.py ({os.getpid()}-{i}-{time.time_ns()}): a new input to the backend image only."""\n')
        git(self.repo, "add", "-A")
        before = self.deploy_image(BACKEND)
        m, w = self.d.mark(), self.deploys.mark()
        t0, sha = self.commit("backend: a new module")
        r = self.serving(m, w, t0, sha, port, before, expect_change=True)
        r["what"] = "commit under apps/backend"
        return r, before

    def revert_commit(self, port, want_image):
        m, w = self.d.mark(), self.deploys.mark()
        t0 = time.time()
        git(self.repo, "revert", "--no-edit", "HEAD")
        sha = git(self.repo, "rev-parse", "HEAD")
        r = self.serving(m, w, t0, sha, port, want_image, expect_change=False)
        r["what"] = "git revert"
        r["back_to_previous_image"] = self.deploy_image(BACKEND) == want_image
        return r

    def serving(self, m, w, t0, sha, port, image_before, expect_change):
        _, ok = self.wait_ok(sha, m, 1200)
        image = self.deploy_image(BACKEND)
        replicas = int(sh(KUBECTL, "-n", self.ns, "get", "deployment", BACKEND, "-o", "jsonpath={.spec.replicas}"))
        _, t_settled = self.deploys.first(lambda o: deploy_settled(o, BACKEND, replicas, image), since=w,
                                          timeout=300, what="the backend rolled out")
        while not http_ok(port, "/api/tasks"):
            if time.time() - t0 > 1500:
                raise SystemExit("the app does not answer /api/tasks")
            time.sleep(0.1)
        t_http = time.time()
        r = {"commit": sha[:7], "image": image, "image_changed": image != image_before,
             "to_healthy_report": round(ok.t - t0, 3), "to_rolled_out_in_cluster": round(t_settled - t0, 3),
             "to_serving": round(max(t_http, ok.t) - t0, 3)}
        self.after(m, t0, sha, r)
        r["image_builds"] = sum(1 for e in self.d.since(m) if e.msg == "building image")
        applied = [e for e in self.d.since(m) if e.msg == "applied" and f"Deployment/{BACKEND} " in e.fields.get("object", "") + " "]
        if applied:
            r["to_applied"] = round(applied[0].t - t0, 3)
        pods = pod_timelines(self.pods, t0, BACKEND)
        r["new_pods"] = {k: {x: round(v - t0, 3) for x, v in p.items()} for k, p in pods.items()}
        r["hook_pods"] = {k: {x: round(v - t0, 3) for x, v in p.items()}
                          for k, p in pod_timelines(self.pods, t0, f"{RELEASE}-migrations").items()}
        return r

    def drift(self, replicas):
        m, w = self.d.mark(), self.deploys.mark()
        t0 = time.time()
        sh(KUBECTL, "-n", self.ns, "scale", f"deployment/{BACKEND}", f"--replicas={replicas + 1}")
        i, t_scaled = self.deploys.first(lambda o: o["metadata"]["name"] == BACKEND and o["spec"].get("replicas") == replicas + 1,
                                         since=w, timeout=30, what="the hand scale in the cluster")
        _, t_back = self.deploys.first(lambda o: o["metadata"]["name"] == BACKEND and o["spec"].get("replicas") == replicas,
                                       since=i + 1, timeout=90, what="spec.replicas back")
        r = {"kubectl_to_undone": round(t_back - t0, 3), "scaled_to_undone": round(t_back - t_scaled, 3)}
        _, ev = self.d.find(lambda e: e.msg.startswith("drift: changed") and f"Deployment/{BACKEND} " in e.fields.get("object", "") + " ",
                            since=m, timeout=30, what="the drift event")
        _, ap = self.d.find(lambda e: e.msg == "applied" and f"Deployment/{BACKEND} " in e.fields.get("object", "") + " ",
                            since=m, timeout=60, what="the drifted Deployment applied")
        r["event_to_applied"] = round(ap.t - ev.t, 3)
        r["scaled_to_event"] = round(ev.t - t_scaled, 3)
        self.d.quiet()
        evs = self.d.since(m)
        r["migration_runs"] = sum(1 for e in evs if is_job_hook_start(e))
        r["reconciles"] = sum(1 for e in evs if e.msg == "reconcile started")
        r["preempted"] = any("preempted" in e.msg for e in evs)
        return r

    def run(self):
        if not os.path.exists(BIN):
            raise SystemExit(f"{BIN} missing: cargo build --release --bin converge (or set CONVERGE_BIN)")
        bed.require_bed()
        for k in ["DOCKER_HOST", "CONTAINERD_ADDRESS"]:
            if not os.environ.get(k):
                raise SystemExit(f"{k} unset: . /tmp/converge-testbed/env (converge builds with the bed's "
                                 "engine and loads into the real node's containerd)")
        ctx = sh(KUBECTL, "config", "current-context")
        self.out["converge_version"] = sh(BIN, "--version", check=False)
        self.user_repo()
        bed.create_namespace(self.ns, "real")
        self.secret()
        self.pods = Watch(self.ns, "pods")
        self.deploys = Watch(self.ns, "deployments")
        time.sleep(1)
        head = git(self.repo, "rev-parse", "HEAD")

        # The first converge: both images built (or found), every Pod Ready.
        print(f"realnode bench{' (' + LABEL + ')' if LABEL else ''}: {BIN}; namespace {self.ns}; "
              "first converge (builds both images unless the bed's engine has them)", flush=True)
        t0 = time.time()
        self.d = Daemon(self.repo, ctx)
        self.wait_ok(head, 0, FIRST_TIMEOUT)
        first = {"to_healthy_report": round(time.time() - t0, 1),
                 "builds": [{"component": e.fields.get("component"), "action": e.fields.get("action"),
                             "s": round(int(e.fields.get("elapsed_ms", 0)) / 1000, 1)}
                            for e in self.d.since(0) if e.fields.get("step") == "build.done"]}
        self.out["first_converge"] = first
        print(json.dumps({"first_converge": first}), flush=True)
        self.out["node"] = bed.announce(self.ns, "realnode bench")
        if self.out["node"]["node_kind"] != "real":
            raise SystemExit("the stack's Pods are not on the real node: these would not be real-node figures")
        port = int(sh(KUBECTL, "-n", self.ns, "get", "service", f"{RELEASE}-frontend", "-o",
                      "jsonpath={.spec.ports[0].nodePort}"))
        while not http_ok(port, "/api/tasks"):
            if time.time() - t0 > FIRST_TIMEOUT:
                raise SystemExit("the app never answered /api/tasks")
            time.sleep(0.5)
        self.d.quiet(for_s=5)
        started = time.time()

        # a) replicas-only commits: up (a new Pod must start and pass its probes), then down.
        runs = self.out["runs"]
        runs["replicas_up"], runs["replicas_down"] = [], []
        for _ in range(REPLICAS_REPS):
            for n, key in [(3, "replicas_up"), (2, "replicas_down")]:
                r = self.replicas_commit(n)
                runs[key].append(r)
                print(json.dumps({key: {k: v for k, v in r.items() if k.startswith("to_") or k in ("phases", "migration_runs", "drift_events", "preempted")}}), flush=True)

        # d) a hand scale, undone.
        runs["drift"] = []
        for _ in range(DRIFTS):
            time.sleep(DRIFT_GAP_S)
            r = self.drift(2)
            runs["drift"].append(r)
            print(json.dumps({"drift": r}), flush=True)
        self.deploys.latest(BACKEND, lambda o: deploy_settled(o, BACKEND, 2), what="the backend settled at 2")
        self.d.quiet(for_s=3)

        # b) a commit under apps/backend (build included), c) its revert (no build).
        runs["backend_commit"], runs["revert"] = [], []
        for i in range(BUILDS):
            r, before = self.build_commit(i, port)
            runs["backend_commit"].append(r)
            print(json.dumps({"backend_commit": {k: v for k, v in r.items() if k.startswith("to_") or k in ("phases", "image_builds", "migration_runs", "drift_events", "preempted")}}), flush=True)
            r = self.revert_commit(port, before)
            runs["revert"].append(r)
            print(json.dumps({"revert": {k: v for k, v in r.items() if k.startswith("to_") or k in ("phases", "image_builds", "migration_runs", "drift_events", "preempted", "back_to_previous_image")}}), flush=True)
        self.out["seconds_after_first_converge"] = round(time.time() - started, 1)
        self.summarise()

    def summarise(self):
        runs = self.out["runs"]
        s = {}

        def col(key, field):
            return [r.get(field) for r in runs.get(key, [])]

        def pcol(key, field):
            return [r.get("phases", {}).get(field) for r in runs.get(key, [])]

        def podcol(key, a, b, hook=False):
            xs = []
            for r in runs.get(key, []):
                for p in (r.get("hook_pods") if hook else r.get("new_pods", {})).values():
                    if a in p and b in p:
                        xs.append(p[b] - p[a])
            return xs

        for key, fields in [("replicas_up", ["to_applied", "to_spec_in_cluster", "to_healthy_report", "to_settled_in_cluster"]),
                            ("replicas_down", ["to_applied", "to_spec_in_cluster", "to_healthy_report", "to_settled_in_cluster"]),
                            ("backend_commit", ["to_applied", "to_healthy_report", "to_rolled_out_in_cluster", "to_serving"]),
                            ("revert", ["to_applied", "to_healthy_report", "to_rolled_out_in_cluster", "to_serving"]),
                            ("drift", ["kubectl_to_undone", "scaled_to_undone", "scaled_to_event", "event_to_applied"])]:
            s[key] = {f: stats(col(key, f)) for f in fields}
            if key != "drift":
                s[key]["phases"] = {f: stats(pcol(key, f)) for f in ["queue", "prepare", "build", "pre_hooks"]}
                # After the pre-hooks: the waves up to the backend Deployment's apply (postgres
                # checked first), then the backend's rollout and probes up to the healthy report
                # (follow-up reconciles of the same commit included).
                s[key]["phases"]["hooks_to_backend_applied"] = stats(
                    [r["to_applied"] - r["timeline"].get("pre_hooks_done", r["timeline"].get("apply_started", 0))
                     for r in runs.get(key, []) if "to_applied" in r and r.get("timeline")])
                s[key]["phases"]["backend_applied_to_healthy"] = stats(
                    [r["to_healthy_report"] - r["to_applied"] for r in runs.get(key, []) if "to_applied" in r])
                s[key]["pods"] = {"created_to_running": stats(podcol(key, "seen", "running")),
                                  "running_to_started": stats(podcol(key, "running", "started")),
                                  "started_to_ready": stats(podcol(key, "started", "ready")),
                                  "created_to_ready": stats(podcol(key, "seen", "ready")),
                                  "hook_pod_created_to_succeeded": stats(podcol(key, "seen", "succeeded", hook=True))}
                s[key]["migration_runs_per_commit"] = col(key, "migration_runs")
                s[key]["drift_events_per_commit"] = col(key, "drift_events")
                s[key]["preempted"] = sum(1 for r in runs.get(key, []) if r.get("preempted"))
                if key in ("backend_commit", "revert"):
                    s[key]["image_builds"] = col(key, "image_builds")
            else:
                s[key]["migration_runs_per_drift"] = col(key, "migration_runs")
        self.out["summary"] = s

    def print_tables(self):
        s = self.out.get("summary")
        if not s:
            return
        node = self.out.get("node", {})
        print(f"\nrealnode bench{' (' + LABEL + ')' if LABEL else ''} — node: "
              + ", ".join(bed.describe(n) for n in node.get("nodes", {})) + f"; binary {BIN}")
        print(f"{'figure (seconds)':58} {'n':>2} {'median':>7} {'min':>7} {'max':>7}")

        def row(name, st):
            if st:
                print(f"{name:58} {st['n']:>2} {st['median']:>7.2f} {st['min']:>7.2f} {st['max']:>7.2f}")
        rows = [
            ("replicas 2->3 commit -> Deployment applied", s["replicas_up"]["to_applied"]),
            ("replicas 2->3 commit -> healthy (daemon report)", s["replicas_up"]["to_healthy_report"]),
            ("replicas 2->3 commit -> 3 available (cluster)", s["replicas_up"]["to_settled_in_cluster"]),
            ("replicas 3->2 commit -> Deployment applied", s["replicas_down"]["to_applied"]),
            ("replicas 3->2 commit -> healthy (daemon report)", s["replicas_down"]["to_healthy_report"]),
            ("apps/backend commit -> serving (build included)", s["backend_commit"]["to_serving"]),
            ("git revert -> serving (no build)", s["revert"]["to_serving"]),
            ("kubectl scale -> spec.replicas back", s["drift"]["kubectl_to_undone"]),
            ("  scale seen in cluster -> back", s["drift"]["scaled_to_undone"]),
            ("  daemon: drift event -> Deployment applied", s["drift"]["event_to_applied"]),
        ]
        for name, st in rows:
            row(name, st)
        print("\nwhere the seconds go (median s): queue = commit -> reconcile started; prepare = read,\n"
              "validate, build, render (build: of which); hooks = pre-upgrade hooks; waves = hooks done ->\n"
              "backend Deployment applied; rollout = backend applied -> healthy report (Pods start, probes)")
        print(f"{'':24} {'queue':>7} {'prepare':>7} {'build':>7} {'hooks':>7} {'waves':>7} {'rollout':>7}")
        for key in ["replicas_up", "replicas_down", "backend_commit", "revert"]:
            ph = s[key]["phases"]
            cells = [(ph.get(f) or {}).get("median") for f in ["queue", "prepare", "build", "pre_hooks", "hooks_to_backend_applied", "backend_applied_to_healthy"]]
            print(f"{key:24} " + " ".join(f"{c:>7.2f}" if c is not None else f"{'-':>7}" for c in cells))
        print(f"\nnew Pods (median s){'':33} {'create→run':>10} {'run→start':>10} {'start→ready':>11} {'hook pod':>9}")
        for key in ["replicas_up", "backend_commit", "revert"]:
            p = s[key]["pods"]
            cells = [(p[f] or {}).get("median") for f in ["created_to_running", "running_to_started", "started_to_ready", "hook_pod_created_to_succeeded"]]
            print(f"{key:52} " + " ".join(f"{c:>10.2f}" if c is not None else f"{'-':>10}" for c in cells))
        print("\nper commit: migration Jobs run / drift events logged / health waits preempted")
        for key in ["replicas_up", "replicas_down", "backend_commit", "revert"]:
            print(f"  {key:20} migration Jobs {s[key]['migration_runs_per_commit']}  drift events {s[key]['drift_events_per_commit']}  preempted {s[key]['preempted']}"
                  + (f"  image builds {s[key]['image_builds']}" if "image_builds" in s[key] else ""))
        print(f"  {'drift':20} migration Jobs {s['drift']['migration_runs_per_drift']}")

    def cleanup(self):
        for w in (self.pods, self.deploys):
            if w:
                w.stop()
        if self.d:
            self.d.stop()
        subprocess.run([KUBECTL, "delete", "namespace", self.ns, "--wait=false", "--ignore-not-found"],
                       capture_output=True)
        shutil.rmtree(self.repo, ignore_errors=True)

    def save(self):
        os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
        base = os.path.join(ROOT, "target", "realnode-bench" + (f"-{LABEL}" if LABEL else ""))
        with open(base + ".json", "w") as f:
            json.dump(self.out, f, indent=2)
        if self.d:
            with open(base + ".log", "w") as f:
                f.write("\n".join(e.raw for e in self.d.since(0)) + "\n")
        print(f"\nwritten: {base}.json (and .log, the daemon's)")


def main():
    if sys.argv[1:2] == ["--from-json"]:  # print the tables of an earlier run again
        b = Bench.__new__(Bench)
        b.out = json.load(open(sys.argv[2]))
        b.summarise()
        b.print_tables()
        return 0
    b = Bench()
    try:
        b.run()
    finally:
        b.cleanup()
        b.save()
    b.print_tables()


if __name__ == "__main__":
    sys.exit(main())
