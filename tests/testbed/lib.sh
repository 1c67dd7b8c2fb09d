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
