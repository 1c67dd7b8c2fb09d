#!/usr/bin/env python3
"""converge in the cluster at scale (issue 24): one installation of charts/converge following
N stacks (default 100) from the bed's git server, all changed by one `git push`.

    tests/testbed/up && . /tmp/converge-testbed/env
    python3 benches/incluster.py            # builds converge's image with scripts/converge-image
    CONVERGE_IMAGE=<ref> python3 benches/incluster.py   # or reuses one already pushed

Node: the stacks' namespaces select the **kwok** node (fake Pods, Ready at once), so these are
figures of converge's control loop against the API server (fetch, render, diff, apply, health,
status for N stacks), not of apps starting. converge itself runs on the bed's real node, as a
Deployment of charts/converge with its defaults (2 replicas, leader election on the stacks'
Leases), fetching over SSH. Each stack is the todo-chatbot chart with one backend component on
an image reference (no builds).

Prints, and writes as JSON to target/incluster-bench.json:
  - first sync: install ready -> every stack Ready at the first commit,
  - one push changing every stack -> every stack Ready at it (git push started -> the last
    status record), with the poll interval the bench sets (BENCH_POLL, 2s) so the wait for the
    next fetch is small beside the work,
  - the leader's memory: VmRSS and VmHWM (peak) of its converge process (the real node runs on
    this machine, so /proc has it),
  - idle: API requests per minute (converge_api_requests_total on /metrics) and VmRSS after
    BENCH_IDLE_S (60) seconds with nothing to do.
Environment: BENCH_STACKS (100), BENCH_POLL (2s), BENCH_IDLE_S (60), CONVERGE_IMAGE.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import bed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUBECTL = os.environ.get("CONVERGE_TESTBED_KUBECTL", "kubectl")
HELM = os.environ.get("CONVERGE_TESTBED_HELM", "helm")
N = int(os.environ.get("BENCH_STACKS", "100"))
POLL = os.environ.get("BENCH_POLL", "2s")
IDLE_S = int(os.environ.get("BENCH_IDLE_S", "60"))
TAG = "bic%d" % os.getpid()
INSTALL_NS = TAG + "-converge"


def sh(*args, cwd=None, env=None, input=None):
    r = subprocess.run(args, cwd=cwd, env=env, input=input, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout.strip()


def need(var):
    v = os.environ.get(var)
    if not v:
        raise SystemExit(f"{var} is not set: tests/testbed/up && . /tmp/converge-testbed/env")
    return v


def stack_ns(i):
    return "%s-s%03d" % (TAG, i)


def write_stacks(repo, version):
    for i in range(N):
        d = os.path.join(repo, "desired", "s%03d" % i)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "stack.yaml"), "w") as f:
            f.write("apiVersion: converge.dev/v1alpha1\nkind: Stack\nname: s%03d\nnamespace: %s\n"
                    "values:\n  migrations:\n    enabled: false\n" % (i, stack_ns(i)))
        with open(os.path.join(d, "backend.yaml"), "w") as f:
            f.write("apiVersion: converge.dev/v1alpha1\nkind: Component\nname: backend\nimage:\n"
                    "  ref: todo-backend:test\nreplicas: 1\nenv:\n  VERSION: \"%s\"\n" % version)


def records():
    """stack -> (ready, lastAppliedCommit) from every status record of the bench's stacks."""
    out = sh(KUBECTL, "get", "configmaps", "-A", "-l", "converge.dev/stack", "-o", "json")
    got = {}
    for cm in json.loads(out)["items"]:
        ns = cm["metadata"]["namespace"]
        if not ns.startswith(TAG + "-s") or not cm["metadata"]["name"].endswith("-status"):
            continue
        try:
            s = json.loads(cm.get("data", {}).get("status.json", "{}"))
        except ValueError:
            continue
        got[ns] = (s.get("ready") is True, s.get("lastAppliedCommit"))
    return got


def wait_all(commit, timeout):
    t0 = time.time()
    while True:
        r = records()
        done = sum(1 for ready, c in r.values() if ready and c == commit)
        if done == N:
            return time.time()
        if time.time() - t0 > timeout:
            raise SystemExit(f"{done}/{N} stacks Ready at {commit[:7]} after {timeout}s:\n" + logs())
        time.sleep(0.5)


def logs():
    return subprocess.run([KUBECTL, "-n", INSTALL_NS, "logs", "-l", "app.kubernetes.io/name=converge",
                           "--tail=30", "--prefix"], capture_output=True, text=True).stdout


def leader_pid():
    """The host PID of the converge process holding the first stack's Lease."""
    holder = sh(KUBECTL, "-n", stack_ns(0), "get", "lease", "converge-s000", "-o",
                "jsonpath={.spec.holderIdentity}")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"run" in cmd and cmd[0].endswith(b"converge") and \
                any(e == b"POD_NAME=" + holder.split("/")[0].encode() for e in env):
            return int(pid), holder
    raise SystemExit(f"no converge process of the leader {holder} in /proc")


def mem(pid):
    st = open(f"/proc/{pid}/status").read()
    kib = lambda k: int(re.search(rf"{k}:\s+(\d+)", st).group(1))
    return {"rss_mib": round(kib("VmRSS") / 1024, 1), "peak_rss_mib": round(kib("VmHWM") / 1024, 1)}


def metric(addr, name):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name))


def apiserver_requests():
    """(all requests, Lease writes) the API server has served, from its own /metrics: counts
    what converge's own counter does not (its Lease renewals and watches)."""
    text = sh(KUBECTL, "get", "--raw", "/metrics")
    total = leases = 0.0
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        v = float(line.rsplit(" ", 1)[1])
        total += v
        if 'resource="leases"' in line and ('verb="PUT"' in line or 'verb="PATCH"' in line):
            leases += v
    return total, leases


def main():
    bed.require_bed()
    git_base = need("CONVERGE_TESTBED_GIT")
    ssh = need("CONVERGE_TESTBED_GIT_SSH_COMMAND")
    env = dict(os.environ, GIT_SSH_COMMAND=ssh)
    image = os.environ.get("CONVERGE_IMAGE")
    if not image:
        image = sh(os.path.join(ROOT, "scripts/converge-image"), "--registry",
                   need("CONVERGE_TESTBED_REGISTRY") + "/converge", "--buildkit-addr",
                   need("CONVERGE_TESTBED_BUILDKIT"),
                   env=dict(os.environ, DOCKER_CONFIG=need("CONVERGE_TESTBED_DOCKER_CONFIG")))
    repo = tempfile.mkdtemp(prefix="converge-bench-ic-")
    remote = f"{git_base}/{TAG}.git"
    out = {"stacks": N, "poll": POLL, "image": image}
    try:
        for i in range(N):
            bed.create_namespace(stack_ns(i), "kwok")
        out["node_of_stacks"] = "kwok (fake Pods: Ready at once, nothing runs)"
        sh("git", "init", "-q", "-b", "main", cwd=repo)
        sh("git", "config", "user.email", "bench@converge.invalid", cwd=repo)
        sh("git", "config", "user.name", "bench", cwd=repo)
        shutil.copytree(os.path.join(ROOT, "charts/todo-chatbot"), os.path.join(repo, "charts/todo-chatbot"))
        write_stacks(repo, "v0")
        sh("git", "add", "-A", cwd=repo)
        sh("git", "commit", "-qm", "stacks", cwd=repo)
        sh("git", "push", "-q", remote, "HEAD:refs/heads/main", cwd=repo, env=env)
        c0 = sh("git", "rev-parse", "HEAD", cwd=repo)

        sh(KUBECTL, "create", "namespace", INSTALL_NS)
        sh(KUBECTL, "-n", INSTALL_NS, "create", "secret", "generic", "git-deploy-key",
           "--from-file=ssh-privatekey=" + need("CONVERGE_TESTBED_GIT_KEY"),
           "--from-file=known_hosts=" + need("CONVERGE_TESTBED_GIT_KNOWN_HOSTS"))
        sh(KUBECTL, "-n", INSTALL_NS, "create", "secret", "docker-registry", "registry-pull",
           "--from-file=.dockerconfigjson=" + need("CONVERGE_TESTBED_DOCKER_CONFIG") + "/config.json")
        values = {"stacks": [{"name": "s%03d" % i, "namespace": stack_ns(i)} for i in range(N)],
                  "git": {"remote": remote, "poll": POLL},
                  "builder": {"kind": "none"},
                  "imagePullSecrets": ["registry-pull"],
                  "image": {"repository": image.rsplit(":", 1)[0], "tag": image.rsplit(":", 1)[1]}}
        vf = os.path.join(repo, "values.json")
        json.dump(values, open(vf, "w"))
        t_install = time.time()
        sh(HELM, "install", "converge", os.path.join(ROOT, "charts/converge"), "-n", INSTALL_NS,
           "-f", vf)
        sh(KUBECTL, "-n", INSTALL_NS, "rollout", "status", "deployment/converge", "--timeout=300s")
        t_ready = time.time()
        out["install_to_ready_s"] = round(t_ready - t_install, 1)
        done = wait_all(c0, 900)
        out["first_sync_s"] = round(done - t_ready, 1)
        print(json.dumps(out), flush=True)

        pid, holder = leader_pid()
        out["leader"] = holder
        write_stacks(repo, "v1")
        sh("git", "add", "-A", cwd=repo)
        sh("git", "commit", "-qm", "every stack", cwd=repo)
        c1 = sh("git", "rev-parse", "HEAD", cwd=repo)
        t_push = time.time()
        sh("git", "push", "-q", remote, "HEAD:refs/heads/main", cwd=repo, env=env)
        done = wait_all(c1, 900)
        out["push_to_all_applied_s"] = round(done - t_push, 1)
        out["memory_after_push"] = mem(pid)
        print(json.dumps(out), flush=True)

        pod = holder.split("/")[0]
        ip = sh(KUBECTL, "-n", INSTALL_NS, "get", "pod", pod, "-o", "jsonpath={.status.podIP}")
        addr = f"{ip}:8080"
        time.sleep(5)
        r0, t0 = metric(addr, "converge_api_requests_total"), time.time()
        a0, l0 = apiserver_requests()
        time.sleep(IDLE_S)
        r1, t1 = metric(addr, "converge_api_requests_total"), time.time()
        a1, l1 = apiserver_requests()
        per_min = lambda a, b: round((b - a) * 60 / (t1 - t0), 1)
        # converge_api_requests_total counts the reconciles' requests; the API server's own
        # count adds Lease renewals, watches and every other client of the bed (its control
        # plane and the node's kubelet renew their own Leases too).
        out["idle"] = {"converge_reconcile_requests_per_min": per_min(r0, r1),
                       "apiserver_requests_per_min_all_clients": per_min(a0, a1),
                       "apiserver_lease_writes_per_min_all_clients": per_min(l0, l1),
                       "over_s": round(t1 - t0, 1), **mem(pid)}
        print(json.dumps(out), flush=True)
    finally:
        subprocess.run([HELM, "uninstall", "converge", "-n", INSTALL_NS, "--wait"], capture_output=True)
        subprocess.run([KUBECTL, "delete", "namespace", INSTALL_NS, "--wait=false"], capture_output=True)
        for i in range(N):
            subprocess.run([KUBECTL, "delete", "namespace", stack_ns(i), "--wait=false"], capture_output=True)
        shutil.rmtree(repo, ignore_errors=True)
    os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
    json.dump(out, open(os.path.join(ROOT, "target/incluster-bench.json"), "w"), indent=2)


if __name__ == "__main__":
    sys.exit(main())
