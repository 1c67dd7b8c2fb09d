"""Shared by the benches that run on the testbed (`tests/testbed/up`, then
`. /tmp/converge-testbed/env`): which node a namespace's Pods go to, and saying so.

The bed has two nodes (tests/testbed/README.md, "Nodes and where Pods go"): a real node
(`CONVERGE_TESTBED_REAL_NODE`, kubelet + containerd, runs what converge built) and a kwok node
(`CONVERGE_TESTBED_KWOK_NODE`, fake Pods that become Ready at once and run nothing). Pods go to
the real node unless their namespace selects kwok with two annotations; every figure a bench
prints depends on which, so each bench picks one on purpose and prints it.
"""

import json
import os
import subprocess

KUBECTL = os.environ.get("CONVERGE_TESTBED_KUBECTL", "kubectl")
REAL_NODE = os.environ.get("CONVERGE_TESTBED_REAL_NODE")
KWOK_NODE = os.environ.get("CONVERGE_TESTBED_KWOK_NODE") or os.environ.get("CONVERGE_TESTBED_NODE")

# The annotations of tests/support's TestNamespace::new: PodNodeSelector and
# PodTolerationRestriction admission put the kwok node's selector and toleration on every Pod.
KWOK_ANNOTATIONS = {
    "scheduler.alpha.kubernetes.io/node-selector": "type=kwok",
    "scheduler.alpha.kubernetes.io/defaultTolerations":
        '[{"key":"converge.test/kwok","operator":"Exists","effect":"NoSchedule"}]',
}
# Benches' namespaces carry this label (not the tests' `converge.test/namespace`), so a leftover
# is easy to find: kubectl get ns -l converge.bench=true
BENCH_LABEL = "converge.bench=true"


def _kubectl(*args):
    return subprocess.run([KUBECTL, *args], check=True, capture_output=True, text=True).stdout


def require_bed():
    if not os.environ.get("CONVERGE_TESTBED_DIR") and not os.environ.get("KUBECONFIG"):
        raise SystemExit("no testbed in the environment: tests/testbed/up && . /tmp/converge-testbed/env")


def create_namespace(ns, node):
    """Creates `ns` whose Pods go to `node` ("kwok" or "real"), labelled as a bench's."""
    if node == "real" and not REAL_NODE:
        raise SystemExit("the bed has no real node (CONVERGE_TESTBED_REAL_NODE unset): "
                         "tests/testbed/down && tests/testbed/up, then . /tmp/converge-testbed/env")
    meta = {"name": ns, "labels": {BENCH_LABEL.split("=")[0]: "true"}}
    if node == "kwok":
        meta["annotations"] = KWOK_ANNOTATIONS
    doc = json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    subprocess.run([KUBECTL, "create", "-f", "-"], input=doc, check=True, capture_output=True, text=True)


def describe(node_name):
    if node_name and node_name == REAL_NODE:
        return f"real node {node_name} (kubelet + containerd: the app really runs)"
    if node_name and (node_name == KWOK_NODE or node_name.startswith("kwok")):
        return f"kwok node {node_name} (fake Pods: Ready at once, nothing runs)"
    return f"node {node_name or '?'}"


def nodes_of(ns):
    """{node name: Pod count} of the namespace's scheduled Pods."""
    out = json.loads(_kubectl("-n", ns, "get", "pods", "-o", "json"))
    counts = {}
    for p in out.get("items", []):
        n = p.get("spec", {}).get("nodeName")
        if n:
            counts[n] = counts.get(n, 0) + 1
    return counts


def announce(ns, bench):
    """Prints (and returns) which node the figures of `bench` come from, read from the Pods."""
    counts = nodes_of(ns)
    where = "; ".join(f"{describe(n)}: {c} Pods" for n, c in sorted(counts.items())) or "no Pods scheduled"
    print(f"{bench}: figures from namespace {ns} on {where}", flush=True)
    return {"namespace": ns, "nodes": counts,
            "node_kind": "real" if REAL_NODE in counts else ("kwok" if counts else "none")}
