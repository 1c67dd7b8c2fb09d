# shellcheck shell=bash
# Variables here are also read by the scripts that source this file.
# shellcheck disable=SC2034
# The testbed's real node: containerd's CRI plugin, CNI, kubelet, kube-proxy
# and CoreDNS. Sourced by `up` (after lib.sh and its own helpers: start,
# wait_until, log_tail, free_port, kubectl_bed) and by `down` (cleanup only).
#
# A real node changes the host, so there is one per machine: `up` claims it
# in $NODE_CLAIM (owner bed directory, original sysctl values) and `down`,
# or the next `up` after a crash, puts the host back from that record.
#
# Host changes made here and undone by node_host_cleanup:
#   sysctls           kubelet: kernel.panic, kernel.panic_on_oops,
#                     vm.overcommit_memory, ...; kube-proxy: route_localnet;
#                     CNI bridge: ip_forward (originals recorded at claim)
#   iptables          KUBE-* chains (kube-proxy, kubelet), CNI-* chains of
#                     the bed's network (bridge ipMasq, portmap)
#   network           bridge $NODE_BRIDGE (the Pods' veths die with their
#                     netns, which live under containerd's state dir)
#   cgroups           $NODE_CGROUP_ROOT in every hierarchy (kubepods below)
#   /var/log/containers  kubelet's symlinks into the bed's pod log dir
# Everything else (kubelet root dir and its mounts, pod logs, CNI IPAM
# state, volumes, containerd's root and state) lives under the bed dir.

NODE_CLAIM="${CONVERGE_TESTBED_NODE_CLAIM:-/run/converge-testbed-node}"
REAL_NODE=converge-node
NODE_DIR="$BED_DIR/node"
NODE_BRIDGE=converge0
NODE_CGROUP_ROOT=converge-testbed
# Name of the CNI network: every iptables rule the CNI plugins add for a
# Pod carries it in a comment, which is how cleanup finds them.
NODE_NETWORK=converge-testbed
KUBELET_PORT=10250
# kwok's fake Pod IPs and the real node's Pod subnet do not overlap, so an
# address always says which node a Pod is on.
CLUSTER_POD_CIDR=10.244.0.0/16
NODE_POD_SUBNET=10.244.0.0/24
KWOK_POD_CIDR=10.244.128.0/17
CLUSTER_DNS_IP=10.96.0.10
# Images the bed makes for the node; names under converge.test/ say they are
# local stand-ins, never pulled.
PAUSE_IMAGE=converge.test/pause:3.10.1
COREDNS_IMAGE="converge.test/coredns:$COREDNS_VERSION"
# Sysctls the node's components may change (kubelet's kernel tunables,
# kube-proxy's route_localnet, the CNI bridge's forwarding); recorded at
# claim time, restored by cleanup when they differ.
NODE_SYSCTLS=(
  kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes
  net.ipv4.conf.all.route_localnet net.ipv4.ip_forward net.ipv6.conf.all.forwarding
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait
)

ctr_node() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# --- ownership of the machine's one real node ------------------------------------

# pidfile_alive FILE: the "PID EXE" record names a live process running EXE.
pidfile_alive() {
  local pid exe
  [[ -s "$1" ]] || return 1
  read -r pid exe <"$1"
  [[ -e "/proc/$pid" && "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$exe" ]]
}

# node_owner_alive DIR: the bed in DIR still runs (or is starting or
# stopping) its node, so its host changes are not ours to undo.
node_owner_alive() {
  local owner="$1" n
  [[ -d "$owner" ]] || return 1
  # up/down hold the bed's lock while they run.
  if [[ -e "$owner.lock" ]] && ! flock -n "$owner.lock" true 2>/dev/null; then
    return 0
  fi
  for n in kubelet kube-proxy containerd; do
    pidfile_alive "$owner/pids/$n.pid" && return 0
  done
  return 1
}

# What holds TCP port $1 on this machine, for error messages.
port_holder() {
  local line pid
  line="$(ss -Hltnp "sport = :$1" 2>/dev/null | head -n 1)"
  [[ -n "$line" ]] || return 1
  pid="$(sed -n 's/.*pid=\([0-9]*\).*/\1/p' <<<"$line")"
  if [[ -n "$pid" ]]; then
    printf 'pid %s: %s' "$pid" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-300)"
  else
    printf '%s' "$line"
  fi
}

# Claims the machine's real node for this bed, or refuses naming the bed
# that has it. A claim left by a bed that no longer runs is cleaned up
# (its host changes undone) and taken over.
claim_node() {
  mkdir -p "$(dirname "$NODE_CLAIM")"
  local owner="" tries
  for tries in 1 2 3; do
    if mkdir "$NODE_CLAIM" 2>/dev/null; then
      echo "$BED_DIR" >"$NODE_CLAIM/owner"
      record_sysctls
      # containerd's CNI library caches results in /var/lib/cni/results (not
      # configurable in containerd 1.6); cleanup removes the directory only
      # if the node made it.
      [[ -e /var/lib/cni ]] || : >"$NODE_CLAIM/var-lib-cni.created"
      break
    fi
    owner="$(cat "$NODE_CLAIM/owner" 2>/dev/null || true)"
    if [[ -z "$owner" ]]; then
      # Another up is between its mkdir and writing the owner.
      sleep 1
      owner="$(cat "$NODE_CLAIM/owner" 2>/dev/null || true)"
    fi
    if [[ "$owner" == "$BED_DIR" ]]; then
      log "real node: cleaning up after this bed's previous node"
      node_host_cleanup
      continue
    fi
    if [[ -n "$owner" ]] && node_owner_alive "$owner"; then
      die "another testbed runs this machine's real node: $owner
  (one real node per machine: kubelet's port $KUBELET_PORT, its iptables chains, cgroups and sysctls are
  machine-wide). Stop it with:
    CONVERGE_TESTBED_DIR=$owner $TESTBED_SRC/down
  or start this bed without a real node (kwok only): CONVERGE_TESTBED_NO_REAL_NODE=1"
    fi
    log "real node: the bed ${owner:-(unknown)} that claimed it no longer runs; undoing its host changes"
    node_host_cleanup
  done
  [[ "$(cat "$NODE_CLAIM/owner" 2>/dev/null)" == "$BED_DIR" ]] ||
    die "could not claim the real node in $NODE_CLAIM (owner: $(cat "$NODE_CLAIM/owner" 2>/dev/null))"
  local holder
  if holder="$(port_holder "$KUBELET_PORT")"; then
    die "port $KUBELET_PORT (kubelet) is in use by $holder
  The real node's kubelet needs it: stop that process, or start this bed without a real node:
  CONVERGE_TESTBED_NO_REAL_NODE=1"
  fi
  return 0
}

sysctl_path() { echo "/proc/sys/${1//.//}"; }

record_sysctls() {
  local s p
  for s in "${NODE_SYSCTLS[@]}"; do
    p="$(sysctl_path "$s")"
    [[ -r "$p" ]] && printf '%s %s\n' "$s" "$(tr '\t' ' ' <"$p")"
  done >"$NODE_CLAIM/sysctl.orig"
}

# --- preflight ------------------------------------------------------------------------

# The node's host requirements, each failing with what to do.
node_preflight() {
  local no_node="or start the bed without a real node: CONVERGE_TESTBED_NO_REAL_NODE=1"
  need ctr "install Debian's containerd (apt-get install -y containerd), $no_node"
  need runc "install Debian's runc (apt-get install -y runc), $no_node"
  need iptables "install Debian's iptables (apt-get install -y iptables), $no_node"
  need ip "install Debian's iproute2 (apt-get install -y iproute2), $no_node"
  need ss "install Debian's iproute2 (apt-get install -y iproute2), $no_node"
  local p
  for p in bridge host-local loopback portmap; do
    [[ -x "/usr/lib/cni/$p" ]] ||
      die "CNI plugin /usr/lib/cni/$p is missing: apt-get install -y containernetworking-plugins, $no_node"
  done
  iptables -w -t nat -S >/dev/null 2>"$LOGS/preflight.log" || {
    log_tail preflight
    die "real node: iptables cannot read the nat table (the node needs netfilter and CAP_NET_ADMIN), $no_node"
  }
  if [[ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
    modprobe br_netfilter 2>/dev/null || true
    [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] ||
      die "real node: the kernel lacks br_netfilter (Services between Pods of one node need it): modprobe br_netfilter, $no_node"
  fi
  grep -qE ' cgroup2? ' /proc/mounts ||
    die "real node: no cgroup filesystem is mounted (kubelet needs cgroups), $no_node"
  if [[ ! -e /sys/fs/cgroup/cgroup.controllers ]]; then
    local c
    for c in cpu cpuacct cpuset memory pids; do
      awk -v c="$c" '$3 == "cgroup" && ("," $4 ",") ~ ("," c ",") { found = 1 } END { exit !found }' /proc/mounts ||
        die "real node: the cgroup v1 controller '$c' is not mounted (kubelet needs it), $no_node"
    done
  fi
  NODE_IP="${CONVERGE_TESTBED_NODE_IP:-}"
  if [[ -z "$NODE_IP" ]]; then
    # The address the host uses to leave: Pods reach the apiserver there.
    NODE_IP="$(ip -4 -o route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')"
  fi
  if [[ -z "$NODE_IP" ]]; then
    NODE_IP="$(ip -4 -o addr show scope global 2>/dev/null | awk '{ sub("/.*", "", $4); print $4; exit }')"
  fi
  [[ "$NODE_IP" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
    die "real node: no IPv4 address other than loopback found (Pods reach the API server through the node's address):
  set CONVERGE_TESTBED_NODE_IP to one of this machine's addresses, $no_node"
  ip -4 -o addr show | awk '{ sub("/.*", "", $4); print $4 }' | grep -qxF "$NODE_IP" ||
    die "real node: $NODE_IP${CONVERGE_TESTBED_NODE_IP:+ (CONVERGE_TESTBED_NODE_IP)} is not an address of this machine; its addresses: $(ip -4 -o addr show | awk '{ sub("/.*", "", $4); printf "%s ", $4 }')"
  SNAPSHOTTER=overlayfs
  grep -qw overlay /proc/filesystems || SNAPSHOTTER=native
}

# --- containerd's CRI configuration -----------------------------------------------

# The CRI plugin's part of containerd.toml (appended by start_containerd).
cri_config() {
  cat <<EOF
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This sandbox withholds CAP_SYS_RESOURCE: without it runc fails every Pod
  # sandbox ("failed to update /proc/self/oom_score_adj: Permission denied").
  restrict_oom_score_adj = true
  # Pod network namespaces under the bed, not /var/run/netns.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "$SNAPSHOTTER"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc's state under the bed, not /run/containerd/runc.
        Root = "$CONTAINERD_DIR/runc"
  # Per-registry hosts.toml (the bed's registry, trusting the bed's CA; services.sh).
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$CONTAINERD_DIR/certs.d"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni/net.d"
    max_conf_num = 1
EOF
}

write_cni_config() {
  mkdir -p "$NODE_DIR/cni/net.d" "$NODE_DIR/cni/ipam"
  cat >"$NODE_DIR/cni/net.d/10-$NODE_NETWORK.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$NODE_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_DIR/cni/ipam",
        "ranges": [[{ "subnet": "$NODE_POD_SUBNET" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
}

# --- images made here ---------------------------------------------------------------

oci_arch() {
  case "$(uname -m)" in
    x86_64) echo amd64 ;;
    aarch64) echo arm64 ;;
    *) uname -m ;;
  esac
}

# make_oci_image OUT REF ROOTFS ENTRYPOINT_JSON: an OCI image archive of one
# uncompressed layer (ROOTFS), byte-for-byte the same for the same input.
make_oci_image() {
  local out="$1" ref="$2" rootfs="$3" entrypoint="$4"
  local t sha size cfg_sha cfg_size man_sha man_size
  t="$(mktemp -d "${TMPDIR:-/tmp}/converge-testbed-image.XXXXXX")"
  mkdir -p "$t/blobs/sha256"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$t/layer" .
  sha="$(sha256sum "$t/layer" | cut -d' ' -f1)"
  size="$(stat -c %s "$t/layer")"
  mv "$t/layer" "$t/blobs/sha256/$sha"
  printf '{"architecture":"%s","os":"linux","config":{"Entrypoint":%s,"Env":["PATH=/"],"Labels":{"org.opencontainers.image.description":"converge testbed stand-in, built by tests/testbed/up"}},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$(oci_arch)" "$entrypoint" "$sha" >"$t/config"
  cfg_sha="$(sha256sum "$t/config" | cut -d' ' -f1)"
  cfg_size="$(stat -c %s "$t/config")"
  mv "$t/config" "$t/blobs/sha256/$cfg_sha"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$cfg_sha" "$cfg_size" "$sha" "$size" >"$t/manifest"
  man_sha="$(sha256sum "$t/manifest" | cut -d' ' -f1)"
  man_size="$(stat -c %s "$t/manifest")"
  mv "$t/manifest" "$t/blobs/sha256/$man_sha"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$man_sha" "$man_size" "$ref" "${ref##*:}" >"$t/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$t/oci-layout"
  mkdir -p "$(dirname "$out")"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$t" -cf "$out.tmp" oci-layout index.json blobs
  mv "$out.tmp" "$out"
  rm -rf "$t"
}

# node_image NAME REF BINARY ENTRYPOINT_JSON: path of the cached archive of
# an image holding only BINARY at /NAME; made on first use.
node_image() {
  local name="$1" ref="$2" bin="$3" entrypoint="$4" out key
  key="$(sha256sum "$bin" | cut -c1-12)"
  out="$IMAGE_CACHE/$name-$key.tar"
  if [[ ! -s "$out" ]]; then
    local root
    root="$(mktemp -d "${TMPDIR:-/tmp}/converge-testbed-rootfs.XXXXXX")"
    install -m 0755 "$bin" "$root/$name"
    make_oci_image "$out" "$ref" "$root" "$entrypoint"
    rm -rf "$root"
  fi
  echo "$out"
}

# import_image ARCHIVE: into the node's containerd (the k8s.io namespace the
# CRI plugin reads); fails naming the archive and ctr's error.
import_image() {
  ctr_node images import "$1" >"$LOGS/ctr-import.log" 2>&1 || {
    log_tail ctr-import
    die "real node: importing $1 into containerd failed"
  }
}

# --- base images (tests/testbed/images, written separately) -----------------------

# Hook for the stand-in base images (python, node, postgres) built by
# tests/testbed/images/build into the bed's dockerd. Contract: `build` runs
# with the bed's env (DOCKER_HOST, CONVERGE_TESTBED_DIR) exported, exits
# non-zero on failure, and prints on stdout the paths of image archives
# (`docker save` or OCI format), one per line, that the real node's
# containerd must have; each is imported into the k8s.io namespace.
#
# start_base_images runs it in the background as soon as dockerd answers
# (loading the stand-ins takes about as long as starting the node);
# finish_base_images waits for it, showing its progress, and imports.
BASE_IMAGES_PID=""
start_base_images() {
  local build="$TESTBED_SRC/images/build"
  [[ -x "$build" ]] || return 0
  if ((!WITH_DOCKER)); then
    log "real node: no base images (they are built on the bed's dockerd, off with CONVERGE_TESTBED_NO_DOCKER=1)"
    return 0
  fi
  log "real node: base images ($build), in the background"
  # Its own session, so that a failed `up` can stop it and all its children.
  DOCKER_HOST="unix://$BED_DIR/docker.sock" DOCKER_BUILDKIT=0 CONVERGE_TESTBED_DIR="$BED_DIR" \
    setsid "$build" </dev/null >"$BED_DIR/base-images.list" 2>"$LOGS/base-images.log" 9>&- &
  BASE_IMAGES_PID=$!
}

finish_base_images() {
  [[ -n "$BASE_IMAGES_PID" ]] || return 0
  local pid="$BASE_IMAGES_PID" rc=0
  # Its progress so far, then live until it ends.
  tail -n +1 --pid="$pid" -f "$LOGS/base-images.log" >&2
  wait "$pid" || rc=$?
  BASE_IMAGES_PID=""
  ((rc == 0)) || die "building the base images failed (exit $rc; the output of $TESTBED_SRC/images/build is above and in $LOGS/base-images.log)"
  local archive
  while IFS= read -r archive; do
    [[ -n "$archive" ]] || continue
    [[ -s "$archive" ]] || die "$TESTBED_SRC/images/build listed $archive, which does not exist"
    import_image "$archive"
  done <"$BED_DIR/base-images.list"
}

# Stops a background base-image build (a failed `up`).
stop_base_images() {
  [[ -n "$BASE_IMAGES_PID" ]] || return 0
  # `|| true`: this runs in up's EXIT trap under set -e, where a failing wait (the build was
  # killed) would end the trap before `down` runs.
  kill -TERM -- "-$BASE_IMAGES_PID" 2>/dev/null || true
  wait "$BASE_IMAGES_PID" 2>/dev/null || true
  BASE_IMAGES_PID=""
  return 0
}

# --- kubelet, kube-proxy, CoreDNS ---------------------------------------------------

# The cgroup under which kubelet puts kubepods, in every hierarchy, so that
# cleanup removes exactly it.
make_cgroup_root() {
  local mnt
  while read -r mnt; do
    mkdir -p "$mnt/$NODE_CGROUP_ROOT"
    # A new cpuset cgroup starts with no CPUs and no memory nodes.
    if [[ -e "$mnt/cpuset.cpus" && -e "$mnt/$NODE_CGROUP_ROOT/cpuset.cpus" ]]; then
      [[ -n "$(cat "$mnt/$NODE_CGROUP_ROOT/cpuset.cpus")" ]] || cat "$mnt/cpuset.cpus" >"$mnt/$NODE_CGROUP_ROOT/cpuset.cpus"
      [[ -n "$(cat "$mnt/$NODE_CGROUP_ROOT/cpuset.mems")" ]] || cat "$mnt/cpuset.mems" >"$mnt/$NODE_CGROUP_ROOT/cpuset.mems"
    fi
  done < <(cgroup_mounts)
}

# Every cgroup hierarchy: the v1 ones and, on a hybrid host, the v2 one
# beside them (runc creates the Pods' cgroups there too).
cgroup_mounts() {
  awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/mounts
}

write_node_configs() {
  mkdir -p "$NODE_DIR/kubelet" "$NODE_DIR/pod-logs" "$BED_DIR/volumes"
  write_kubeconfig "$NODE_DIR/kubelet.kubeconfig" node
  write_kubeconfig "$NODE_DIR/kube-proxy.kubeconfig" kube-proxy
  KUBELET_HEALTHZ_PORT="$(free_port)"
  PROXY_HEALTHZ_PORT="$(free_port)"
  PROXY_METRICS_PORT="$(free_port)"
  cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/node.crt
tlsPrivateKeyFile: $PKI/node.key
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
# cgroup v1 on these machines: Kubernetes 1.35 refuses it unless told not to.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$NODE_CGROUP_ROOT
failSwapOn: false
# Lowering its own oom_score_adj needs CAP_SYS_RESOURCE, withheld here.
oomScoreAdj: 0
clusterDNS: [$CLUSTER_DNS_IP]
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
podLogsDir: $NODE_DIR/pod-logs
# Report every image in the Node's status, not the 50 largest: converge reads the list to tell
# that an image a Pod never pulls is on no node (the "none" builder), and a test run loads more
# than 50. It reads this limit back through /configz.
nodeStatusMaxImages: -1
# Images are loaded, never pulled: garbage-collecting them would lose them,
# and a developer's fuller disk must not evict the bed's Pods.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
serializeImagePulls: false
maxPods: 110
EOF
  cat >"$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: $REAL_NODE
bindAddress: 0.0.0.0
clientConnection:
  kubeconfig: $NODE_DIR/kube-proxy.kubeconfig
clusterCIDR: $CLUSTER_POD_CIDR
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
oomScoreAdj: 0
# Zeros: leave the host's conntrack table size and timeouts alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  # NodePorts answer on 127.0.0.1 (sets route_localnet, restored by down).
  localhostNodePorts: true
EOF
}

real_node_ready() {
  [[ "$(kubectl_bed get node "$REAL_NODE" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

start_kubelet() {
  start kubelet "$BIN_K8S/kubelet" \
    --config="$NODE_DIR/kubelet.yaml" \
    --kubeconfig="$NODE_DIR/kubelet.kubeconfig" \
    --root-dir="$NODE_DIR/kubelet" --cert-dir="$NODE_DIR/kubelet/pki" \
    --hostname-override="$REAL_NODE" --node-ip="$NODE_IP" \
    --node-labels="type=real"
  wait_until kubelet 90 real_node_ready
}

start_kube_proxy() {
  start kube-proxy "$BIN_K8S/kube-proxy" --config="$NODE_DIR/kube-proxy.yaml"
  wait_until kube-proxy 60 curl -fsS "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"
}

coredns_available() {
  [[ "$(kubectl_bed -n kube-system get deployment coredns \
    -o jsonpath='{.status.availableReplicas}')" == 1 ]]
}

start_coredns() {
  import_image "$(node_image coredns "$COREDNS_IMAGE" "$BIN_COREDNS/coredns" '["/coredns"]')"
  sed -e "s|@COREDNS_IMAGE@|$COREDNS_IMAGE|g" -e "s|@CLUSTER_DNS_IP@|$CLUSTER_DNS_IP|g" \
    "$TESTBED_SRC/node/coredns.yaml" | kubectl_bed apply -f - >/dev/null
  local deadline=$((SECONDS + 90))
  until coredns_available; do
    if ((SECONDS >= deadline)); then
      kubectl_bed -n kube-system get pods -l k8s-app=kube-dns -o wide >&2 || true
      kubectl_bed -n kube-system describe pods -l k8s-app=kube-dns 2>&1 | tail -n 25 >&2 || true
      log_tail kubelet
      die "CoreDNS did not become available on the real node within 90s (kubelet log: $LOGS/kubelet.log)"
    fi
    pid_alive kubelet || { log_tail kubelet; die "kubelet exited while CoreDNS was starting (log: $LOGS/kubelet.log)"; }
    sleep 0.3
  done
}

# Starts the node once the control plane and containerd (with CRI) are up.
start_node() {
  make_cgroup_root
  import_image "$(node_image pause "$PAUSE_IMAGE" "$BIN_PAUSE/pause" '["/pause"]')"
  write_node_configs
  start_kubelet
  start_kube_proxy
  start_coredns
  finish_base_images
}

# --- cleanup (down, or the next up after a crash) ------------------------------------

# ipt_sweep IPT: removes the KUBE-* chains and the CNI chains and rules of
# the bed's network from every table, with the rules that jump to them.
ipt_sweep() {
  local ipt="$1" table rules chains chain line
  command -v "$ipt" >/dev/null || return 0
  # Each Pod's CNI rules carry `name: "<network>"` in their comment, which
  # iptables -S prints with escaped quotes.
  local net="name: \\\"$NODE_NETWORK\\\""
  for table in filter nat mangle raw; do
    rules="$("$ipt" -w -t "$table" -S 2>/dev/null)" || continue
    # Chains of ours: kube-proxy's and kubelet's, and each Pod's CNI chains
    # (targets of the rules that name our network).
    chains="$(NET="$net" awk '
      $1 == "-N" && $2 ~ /^KUBE-/ { print $2 }
      $1 == "-A" && index($0, ENVIRON["NET"]) {
        for (i = 1; i < NF; i++)
          if ($i == "-j" && $(i + 1) ~ /^CNI-/ && $(i + 1) !~ /^CNI-HOSTPORT-/) print $(i + 1)
      }' <<<"$rules" | sort -u)"
    # Rules that name our network or jump to one of our chains.
    while IFS= read -r line; do
      [[ "$line" == "-A "* ]] || continue
      local target=""
      [[ "$line" =~ \ -j\ ([^ ]+) ]] && target="${BASH_REMATCH[1]}"
      if [[ "$line" == *"$net"* ]] || { [[ -n "$target" ]] && grep -qxF -- "$target" <<<"$chains"; }; then
        eval "\"\$ipt\" -w -t \"\$table\" -D ${line#-A }" 2>/dev/null ||
          log "could not delete iptables rule ($table): $line"
      fi
    done <<<"$rules"
    while IFS= read -r chain; do
      [[ -n "$chain" ]] && "$ipt" -w -t "$table" -F "$chain" 2>/dev/null
    done <<<"$chains"
    while IFS= read -r chain; do
      [[ -n "$chain" ]] || continue
      "$ipt" -w -t "$table" -X "$chain" 2>/dev/null || log "could not delete iptables chain $chain ($table)"
    done <<<"$chains"
  done
  # portmap's shared chains, once no network has a port in them any more.
  if "$ipt" -w -t nat -S CNI-HOSTPORT-DNAT >/dev/null 2>&1 &&
    ! "$ipt" -w -t nat -S CNI-HOSTPORT-DNAT | grep -q '^-A'; then
    rules="$("$ipt" -w -t nat -S)"
    while IFS= read -r line; do
      [[ "$line" =~ ^-A\ .*\ -j\ CNI-HOSTPORT- ]] || continue
      eval "\"\$ipt\" -w -t nat -D ${line#-A }" 2>/dev/null || log "could not delete iptables rule (nat): $line"
    done <<<"$rules"
    for chain in CNI-HOSTPORT-DNAT CNI-HOSTPORT-SETMARK CNI-HOSTPORT-MASQ; do
      "$ipt" -w -t nat -F "$chain" 2>/dev/null || continue
      "$ipt" -w -t nat -X "$chain" 2>/dev/null || log "could not delete iptables chain $chain (nat)"
    done
  fi
  return 0
}

restore_sysctls() {
  [[ -s "$NODE_CLAIM/sysctl.orig" ]] || return 0
  local name value p now
  while read -r name value; do
    p="$(sysctl_path "$name")"
    [[ -w "$p" ]] || continue
    now="$(tr '\t' ' ' <"$p")"
    if [[ "$now" != "$value" ]]; then
      echo "$value" >"$p" 2>/dev/null || log "could not restore $name to $value (now $now)"
    fi
  done <"$NODE_CLAIM/sysctl.orig"
}

# Kills what is left of the node's containers: the processes in its cgroups
# and containerd's shims for them (after a crash, or a containerd that died
# before its tasks).
kill_node_processes() {
  local mnt procs
  while read -r mnt; do
    [[ -d "$mnt/$NODE_CGROUP_ROOT" ]] || continue
    # (A cgroup may vanish while find walks the tree.)
    procs="$(find "$mnt/$NODE_CGROUP_ROOT" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)" || true
    [[ -n "$procs" ]] && xargs -r kill -KILL <<<"$procs" 2>/dev/null
  done < <(cgroup_mounts)
  local sock="${1:-}" p
  [[ -n "$sock" ]] || return 0
  # Shims are started by our containerd with its socket as -address.
  for p in /proc/[0-9]*; do
    if tr '\0' '\n' 2>/dev/null <"$p/cmdline" | grep -qxF -- "$sock"; then
      [[ "$(basename "$(readlink "$p/exe" 2>/dev/null)")" == containerd-shim* ]] && kill -KILL "${p#/proc/}" 2>/dev/null
    fi
  done
  return 0
}

remove_cgroup_root() {
  local mnt
  while read -r mnt; do
    [[ -d "$mnt/$NODE_CGROUP_ROOT" ]] || continue
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      find "$mnt/$NODE_CGROUP_ROOT" -depth -type d -exec rmdir {} + 2>/dev/null
      [[ -d "$mnt/$NODE_CGROUP_ROOT" ]] || break
      sleep 0.2
    done
    [[ -d "$mnt/$NODE_CGROUP_ROOT" ]] && log "could not remove cgroup $mnt/$NODE_CGROUP_ROOT (processes still in it?)"
  done < <(cgroup_mounts)
  return 0
}

# Undoes the node's host changes and releases the claim. Processes must be
# stopped first (down does; a crashed bed's are gone or killed here).
node_host_cleanup() {
  local owner
  owner="$(cat "$NODE_CLAIM/owner" 2>/dev/null || echo "$BED_DIR")"
  # Every step runs whatever the previous one did: a half-undone host is
  # worse than a reported failure.
  cleanup_step kill_node_processes "$owner/containerd/containerd.sock"
  cleanup_step kube_proxy_cleanup
  cleanup_step ipt_sweep iptables
  cleanup_step ipt_sweep ip6tables
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    cleanup_step ip link delete "$NODE_BRIDGE"
  fi
  cleanup_step remove_cgroup_root
  # kubelet's legacy symlinks into the bed's pod log directory.
  if [[ -d /var/log/containers ]]; then
    cleanup_step find /var/log/containers -maxdepth 1 -type l -lname "$owner/node/pod-logs/*" -delete
  fi
  cleanup_step remove_cni_cache
  cleanup_step restore_sysctls
  rm -rf "$NODE_CLAIM"
}

# The CNI library's cached results of the bed's network's Pods (and of
# their loopback), which a Pod killed without a CNI DEL leaves behind.
remove_cni_cache() {
  local dir=/var/lib/cni/results f id
  for f in "$dir/$NODE_NETWORK-"*; do
    [[ -e "$f" ]] || continue
    id="${f#"$dir/$NODE_NETWORK-"}"
    id="${id%-*}"
    rm -f "$f" "$dir/cni-loopback-$id-lo"
  done
  if [[ -e "$NODE_CLAIM/var-lib-cni.created" && -d /var/lib/cni ]]; then
    rmdir "$dir" 2>/dev/null
    rmdir /var/lib/cni 2>/dev/null || log "/var/lib/cni is not empty: kept it (another CNI user?)"
  fi
  return 0
}

cleanup_step() {
  "$@" || log "cleanup: '$*' failed (exit $?)"
}

kube_proxy_cleanup() {
  [[ -x "$BIN_K8S/kube-proxy" ]] || return 0
  local logf="${LOGS:-/tmp}/kube-proxy-cleanup.log"
  "$BIN_K8S/kube-proxy" --cleanup >"$logf" 2>&1 ||
    log "kube-proxy --cleanup failed (log: $logf); removing its chains one by one"
}
