# shellcheck shell=bash
# The variables below are used by the scripts that source this file.
# shellcheck disable=SC2034
# Shared definitions for the testbed scripts. Sourced, never executed.

TESTBED_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/testbed/versions
. "$TESTBED_SRC/versions"

# Staging modules (k8s.io/api, k8s.io/client-go, ...) are tagged
# v0.<minor>.<patch> for Kubernetes v1.<minor>.<patch>.
K8S_STAGING_VERSION="v0.${K8S_VERSION#v1.}"

CACHE_ROOT="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/converge-testbed"
BIN_K8S="$CACHE_ROOT/bin/k8s-$K8S_VERSION"
BIN_ETCD="$CACHE_ROOT/bin/etcd-$ETCD_VERSION"
BIN_KWOK="$CACHE_ROOT/bin/kwok-$KWOK_VERSION"
BIN_HELM="$CACHE_ROOT/bin/helm-$HELM_VERSION"
BIN_COREDNS="$CACHE_ROOT/bin/coredns-$COREDNS_VERSION"
BIN_REGISTRY="$CACHE_ROOT/bin/registry-$DISTRIBUTION_VERSION"
BIN_BUILDKIT="$CACHE_ROOT/bin/buildkit-$BUILDKIT_VERSION"
# The bed's own programs are keyed by a hash of their source (and, for the
# provisioner, of the client-go version it is built against), so an edit
# rebuilds them and nothing else.
src_hash() { cat "$@" | sha256sum | cut -c1-12; }
BIN_PROVISIONER="$CACHE_ROOT/bin/provisioner-$(printf '%s\n' "$K8S_VERSION" | cat - "$TESTBED_SRC/node/provisioner/main.go" | sha256sum | cut -c1-12)"
BIN_PAUSE="$CACHE_ROOT/bin/pause-$(src_hash "$TESTBED_SRC/node/pause.c")"
# Images `up` makes for the real node (OCI archives of pause and CoreDNS),
# keyed by their binary; apart from images/build's cache in images/.
IMAGE_CACHE="$CACHE_ROOT/node-images"
# One directory the env file puts first on PATH: symlinks into the
# version-keyed directories above, rewritten by every `up`.
BIN_CURRENT="$CACHE_ROOT/bin/current"

# The bed's runtime state: processes' data, logs, certificates, pid files.
BED_DIR="${CONVERGE_TESTBED_DIR:-/tmp/converge-testbed}"

# Go builds must use the installed toolchain (no toolchain downloads are
# possible here) and produce static binaries.
export GOTOOLCHAIN=local CGO_ENABLED=0

log() { printf '[testbed] %s\n' "$*" >&2; }
die() { printf '[testbed] ERROR: %s\n' "$*" >&2; exit 1; }

need() {
  # need TOOL HINT: fail with an actionable message when TOOL is missing.
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH: $2"
}

# Serialise up/down on one bed: two test processes may call `up` at once.
# The lock is held until the calling script exits; nested calls (up running
# down) see CONVERGE_TESTBED_LOCKED and skip it.
lock_bed() {
  [[ "${CONVERGE_TESTBED_LOCKED:-}" == "$BED_DIR" ]] && return 0
  need flock "apt-get install -y util-linux"
  mkdir -p "$(dirname "$BED_DIR")"
  exec 9>"$BED_DIR.lock"
  if ! flock -n 9; then
    log "waiting for another up/down on $BED_DIR to finish"
    flock 9
  fi
  export CONVERGE_TESTBED_LOCKED="$BED_DIR"
}

# Names of the Docker engine's bridge network, derived from the bed directory (see
# setup_docker_bridge in up; removed by down).
bed_net_names() {
  local h
  h="$(printf '%s' "$BED_DIR" | sha256sum | cut -c1-6)"
  DOCKER_BRIDGE="cvg$h"
  DOCKER_SUBNET="172.30.$((16#${h:0:2})).0/24"
  DOCKER_GW="${DOCKER_SUBNET%.0/24}.1"
  NET_TAG="converge-testbed:$BED_DIR"
}

# Where up (and the scripts that start or stop one component) record processes and logs.
PIDS="$BED_DIR/pids"
LOGS="$BED_DIR/logs"
# What to do when a component does not start, beyond reading its log tail (filled by up).
declare -A HINT=()

# --- process bookkeeping -----------------------------------------------------

# pid_alive NAME: the recorded process still runs, and is still ours (the
# PID was not reused by an unrelated process).
pid_alive() {
  local f="$PIDS/$1.pid" pid exe
  [[ -s "$f" ]] || return 1
  read -r pid exe <"$f"
  [[ -e "/proc/$pid" ]] || return 1
  [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$exe" ]]
}

log_tail() {
  local name="$1"
  printf '[testbed] ---- last lines of %s ----\n' "$LOGS/$name.log" >&2
  tail -n 40 "$LOGS/$name.log" >&2 2>/dev/null || true
  printf '[testbed] ---- end of %s ----\n' "$name" >&2
}

# start NAME BINARY ARGS...: run detached in its own session (so it outlives
# this script and the CI step's process group), log to logs/NAME.log and
# record "PID BINARY".
start() {
  local name="$1" bin="$2"
  shift 2
  [[ -x "$bin" ]] || die "$bin is missing: run tests/testbed/build"
  # 9>&-: the bed lock (lib.sh) must not be inherited by long-lived daemons.
  setsid "$bin" "$@" </dev/null >"$LOGS/$name.log" 2>&1 9>&- &
  local pid=$! exe
  exe="$(readlink -f "$bin")"
  echo "$pid $exe" >"$PIDS/$name.pid"
  # Until setsid has exec'd the binary, /proc/PID/exe is setsid's: wait for
  # the switch so pid_alive does not take the start-up for a crash.
  for _ in $(seq 1 100); do
    [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$exe" ]] && return 0
    [[ -e "/proc/$pid" ]] || return 0
    sleep 0.02
  done
}

# wait_until NAME TIMEOUT_S CMD...: poll CMD until it succeeds; fail with the
# component's log tail (and what to do) if it exits or the timeout passes.
wait_until() {
  local name="$1" timeout="$2"
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [[ -f "$PIDS/$name.pid" ]] && ! pid_alive "$name"; then
      log_tail "$name"
      die "$name exited during start-up (log: $LOGS/$name.log)${HINT[$name]:+
  ${HINT[$name]}}"
    fi
    if ((SECONDS >= deadline)); then
      log_tail "$name"
      die "$name not ready after ${timeout}s (log: $LOGS/$name.log)${HINT[$name]:+
  ${HINT[$name]}}"
    fi
    sleep 0.2
  done
}
