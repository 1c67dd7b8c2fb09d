# shellcheck shell=bash
# shellcheck disable=SC2034
# Shared definitions of the minikube bed's scripts (up, down). Sourced, never executed.

MK_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/testbed/lib.sh
. "$MK_SRC/../lib.sh"

# The testbed's env file points ctr at the bed's own containerd; inside minikube's namespaces
# every ctr and crictl must reach minikube's (/run/containerd/containerd.sock there).
unset CONTAINERD_ADDRESS CONTAINERD_NAMESPACE CONTAINERD_SNAPSHOTTER

STATE="${CONVERGE_MINIKUBE_DIR:-/tmp/converge-minikube}"
NS_DIR="$STATE/ns"
LOGS="$STATE/logs"
MINIKUBE_HOME="$STATE/home"
KUBECONFIG_FILE="$STATE/kubeconfig"
# The veth pair between the host and the namespace (TEST-NET-2, never routed anywhere).
HOST_VETH=mk-host0
HOST_IP=198.51.100.1
MINIKUBE_IP=198.51.100.2
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1
# One minikube bed per machine (its kubelet owns the /kubepods cgroups, the veth its name): the
# bed that holds the machine writes its directory here.
CLAIM=/run/converge-minikube.claim

# The flags `minikube start` gets here, and the quickstart's only substitution. --force: v1.38.1
# knows Kubernetes up to v1.35.1 and would ask GitHub about v1.35.8. SystemVerification: kubeadm's
# check refuses this kernel's cgroup v1 set-up, which the kubelet accepts (failCgroupV1=false).
START_FLAGS=(
  --driver=none
  --container-runtime=containerd
  --kubernetes-version="$K8S_VERSION"
  --force
  --extra-config=kubeadm.ignore-preflight-errors=SystemVerification
)

log() { printf '[minikube-bed] %s\n' "$*" >&2; }
die() {
  printf '[minikube-bed] ERROR: %s\n' "$*" >&2
  exit 1
}
step() { printf '[minikube-bed] [%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
log_tail() {
  printf '[minikube-bed] ---- last lines of %s ----\n' "$LOGS/$1.log" >&2
  tail -n 40 "$LOGS/$1.log" >&2 2>/dev/null || true
  printf '[minikube-bed] ---- end of %s ----\n' "$1" >&2
}

# Runs a command in the bed's network and mount namespaces.
in_ns() { nsenter --net="$NS_DIR/net" --mount="$NS_DIR/mnt" -- "$@"; }

# A failed `up` leaves nothing running: everything it made is undone by `down`.
UP_DONE=0
on_exit() {
  local rc=$?
  ((UP_DONE)) && return 0
  log "up failed (exit $rc); undoing what it started (tests/testbed/minikube/down)"
  "$MK_SRC/down" >&2 || log "down failed too: see above"
  exit "$rc"
}
