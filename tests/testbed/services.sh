# shellcheck shell=bash
# Variables here are also read by the scripts that source this file.
# shellcheck disable=SC2034
# The bed's network services for the registry builder and pull mode: an OCI
# registry (distribution, TLS from the bed's CA, htpasswd auth), BuildKit
# (buildkitd with the OCI worker on Debian's runc) and a git server over SSH
# (a private sshd). Sourced by `up` (after lib.sh and node.sh) and by
# `registry` (stop/start of the registry alone).
#
# All of them listen on SVC_IP: the real node's address, where the host and
# the real node's Pods reach them (127.0.0.1 on a bed without a real node).
# Their ports are chosen once per bed and kept in $SVC_DIR/ports, so the
# registry restarts on the same address.

REGISTRY_DIR="$BED_DIR/registry"
BUILDKIT_DIR="$BED_DIR/buildkit"
GIT_DIR_BED="$BED_DIR/git"
SVC_PORTS="$BED_DIR/service-ports"
# The registry's one user; the password is generated per bed.
REGISTRY_USER=converge
# The docker config directory (config.json with the registry's auths) for
# DOCKER_CONFIG, buildctl, skopeo and `kubectl create secret docker-registry`.
DOCKER_CONFIG_DIR="$BED_DIR/docker-config"
# The git server's base path in URLs: ssh://root@IP:PORT/git/<name>.git.
GIT_BASE=/git
# The stand-in base images pushed at up, as "engine ref|registry path" (the
# registry path is the name a Dockerfile's FROM resolves to through BuildKit's
# docker.io mirror: library/<name>).
STANDIN_PUSHES=(
  "python:3.12-slim-bookworm|library/python:3.12-slim-bookworm"
  "node:20-bookworm-slim|library/node:20-bookworm-slim"
  "postgres:16-alpine|library/postgres:16-alpine"
  "converge-testbed/debian:bookworm-slim|library/debian:bookworm-slim"
  "converge-base:bookworm|library/converge-base:bookworm"
)
# Cached copies of a registry holding exactly the pushed stand-ins, keyed by
# their image IDs: a new bed hard-links the blobs instead of pushing again.
REGISTRY_SEED_CACHE="$CACHE_ROOT/registry-seed"
# BuildKit's build containers' cgroup parent, in every hierarchy; `down` removes it.
BUILDKIT_CGROUP=converge-testbed-buildkit

# svc_ports: SVC_IP and the ports of this bed's services, chosen on first
# call and read back afterwards.
svc_ports() {
  if [[ -s "$SVC_PORTS" ]]; then
    # shellcheck disable=SC1090
    . "$SVC_PORTS"
    return 0
  fi
  SVC_IP="${NODE_IP:-127.0.0.1}"
  REGISTRY_PORT="$(free_port)"
  BUILDKIT_PORT="$(free_port)"
  GIT_PORT="$(free_port)"
  printf 'SVC_IP=%s\nREGISTRY_PORT=%s\nBUILDKIT_PORT=%s\nGIT_PORT=%s\n' \
    "$SVC_IP" "$REGISTRY_PORT" "$BUILDKIT_PORT" "$GIT_PORT" >"$SVC_PORTS.tmp"
  mv "$SVC_PORTS.tmp" "$SVC_PORTS"
}

registry_host() { echo "$SVC_IP:$REGISTRY_PORT"; }

# --- the registry -----------------------------------------------------------------

# Certificate, credentials, config and the docker config directory; once per bed.
setup_registry() {
  local d="$REGISTRY_DIR" host
  host="$(registry_host)"
  mkdir -p "$d/data" "$d/certs" "$DOCKER_CONFIG_DIR"
  need htpasswd "apt-get install -y apache2-utils (the registry's bcrypt credentials)"
  # A directory holding only the CA, in the layout skopeo's --dest-cert-dir
  # and docker's certs.d read.
  cp "$PKI/ca.crt" "$d/certs/ca.crt"
  local password
  password="$(openssl rand -hex 16)"
  htpasswd -Bbn "$REGISTRY_USER" "$password" >"$d/htpasswd" 2>/dev/null
  umask_write "$d/password" "$password"
  local auth
  auth="$(printf '%s:%s' "$REGISTRY_USER" "$password" | base64 -w0)"
  local auths
  auths="$(printf '"%s":{"auth":"%s"}' "$host" "$auth")"
  [[ "$SVC_IP" == 127.0.0.1 ]] || auths+="$(printf ',"127.0.0.1:%s":{"auth":"%s"}' "$REGISTRY_PORT" "$auth")"
  umask_write "$DOCKER_CONFIG_DIR/config.json" "{\"auths\":{$auths}}"
  cat >"$d/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $d/data
  delete:
    enabled: true
  # Uploads are not purged behind a test's back.
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 0.0.0.0:$REGISTRY_PORT
  secret: $(openssl rand -hex 16)
  tls:
    certificate: $PKI/registry.crt
    key: $PKI/registry.key
auth:
  htpasswd:
    realm: converge-testbed-registry
    path: $d/htpasswd
EOF
  write_containerd_hosts
}

# umask_write FILE CONTENT: a file only root reads (it holds a secret).
umask_write() {
  (umask 077 && printf '%s\n' "$2" >"$1.tmp")
  mv "$1.tmp" "$1"
}

# The real node's containerd trusts the bed's CA for the registry (its CRI
# plugin reads $CONTAINERD_DIR/certs.d, see cri_config); pull credentials
# come from the Pods' imagePullSecrets.
write_containerd_hosts() {
  local h
  for h in $(printf '%s\n' "$SVC_IP:$REGISTRY_PORT" "127.0.0.1:$REGISTRY_PORT" | sort -u); do
    mkdir -p "$CONTAINERD_DIR/certs.d/$h"
    cat >"$CONTAINERD_DIR/certs.d/$h/hosts.toml" <<EOF
server = "https://$h"

[host."https://$h"]
  capabilities = ["pull", "resolve", "push"]
  ca = "$PKI/ca.crt"
EOF
  done
}

registry_ready() {
  # 401 without credentials: the registry answers and checks auth.
  [[ "$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$PKI/ca.crt" "https://$(registry_host)/v2/")" == 401 ]]
}

start_registry() {
  [[ -s "$REGISTRY_DIR/config.yml" ]] || die "registry: $REGISTRY_DIR/config.yml is missing: run tests/testbed/up"
  # distribution v3 exports traces over OTLP unless told not to.
  OTEL_TRACES_EXPORTER=none OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
    start registry "$BIN_REGISTRY/registry" serve "$REGISTRY_DIR/config.yml"
  wait_until registry 30 registry_ready
}

# Stops the registry alone (tests simulate "registry down"); its data stays.
stop_registry() {
  local f="$PIDS/registry.pid" pid exe
  [[ -s "$f" ]] || return 0
  read -r pid exe <"$f"
  if pid_alive registry; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do pid_alive registry || break; sleep 0.1; done
    pid_alive registry && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$f"
}

# --- the stand-ins in the registry ------------------------------------------------

skopeo_dest() {
  echo --dest-cert-dir="$REGISTRY_DIR/certs" --dest-authfile="$DOCKER_CONFIG_DIR/config.json"
}

# Key of the set of stand-ins the engine has now; empty if one is missing.
standins_key() {
  local p ref id out=""
  for p in "${STANDIN_PUSHES[@]}"; do
    ref="${p%%|*}"
    id="$(DOCKER_HOST="unix://$BED_DIR/docker.sock" docker image inspect -f '{{.Id}}' "$ref" 2>/dev/null)" || return 0
    out+="$p $id"$'\n'
  done
  printf '%s%s\n' "$out" "$DISTRIBUTION_VERSION" | sha256sum | cut -c1-16
}

# Pushes the stand-ins (tests/testbed/images) into the registry, from a
# cached seed when this set was pushed before: blobs are hard-linked (they
# are content-addressed and never rewritten), the small link files copied.
push_standins() {
  # Two beds (a developer's and CI's) may seed or read the cache at once.
  mkdir -p "$CACHE_ROOT"
  (
    flock 7
    push_standins_locked
  ) 7>"$CACHE_ROOT/registry-seed.lock"
}

push_standins_locked() {
  local key seed data="$REGISTRY_DIR/data"
  key="$(standins_key)"
  [[ -n "$key" ]] || die "registry: a stand-in image is missing from the bed's engine ($(printf '%s ' "${STANDIN_PUSHES[@]%%|*}")); tests/testbed/images/build makes them"
  seed="$REGISTRY_SEED_CACHE/$key"
  if [[ -d "$seed/docker/registry/v2" ]]; then
    mkdir -p "$data/docker/registry/v2"
    cp -al "$seed/docker/registry/v2/blobs" "$data/docker/registry/v2/" 2>/dev/null ||
      cp -a "$seed/docker/registry/v2/blobs" "$data/docker/registry/v2/"
    cp -a "$seed/docker/registry/v2/repositories" "$data/docker/registry/v2/"
    log "registry: stand-ins $key from the cache"
    return 0
  fi
  need skopeo "apt-get install -y skopeo (pushes the stand-in base images into the bed's registry)"
  local p start=$SECONDS
  for p in "${STANDIN_PUSHES[@]}"; do
    log "registry: pushing ${p%%|*} as $(registry_host)/${p#*|}"
    skopeo copy --quiet --src-daemon-host "unix://$BED_DIR/docker.sock" $(skopeo_dest) \
      "docker-daemon:${p%%|*}" "docker://$(registry_host)/${p#*|}" >>"$LOGS/push-standins.log" 2>&1 || {
      log_tail push-standins
      die "registry: pushing ${p%%|*} failed (log: $LOGS/push-standins.log)"
    }
  done
  # The seed: a copy made now, while the registry holds only the stand-ins.
  rm -rf "$REGISTRY_SEED_CACHE" && mkdir -p "$seed.tmp/docker/registry/v2"
  cp -al "$data/docker/registry/v2/blobs" "$seed.tmp/docker/registry/v2/"
  cp -a "$data/docker/registry/v2/repositories" "$seed.tmp/docker/registry/v2/"
  mv "$seed.tmp" "$seed"
  log "registry: stand-ins pushed in $((SECONDS - start))s (cached as $seed)"
}

# --- BuildKit ------------------------------------------------------------------------

buildkit_sock() { echo "unix://$BUILDKIT_DIR/buildkitd.sock"; }

buildkit_ready() { "$BIN_BUILDKIT/buildctl" --addr "$(buildkit_sock)" debug workers; }

start_buildkitd() {
  need runc "apt-get install -y runc (BuildKit's OCI worker runs build steps with it)"
  mkdir -p "$BUILDKIT_DIR/root"
  local host
  host="$(registry_host)"
  # The OCI worker only (no containerd worker: the node's containerd is the
  # node's), host network for RUN steps (as the bed's `docker build --network
  # host`), its cgroups under a parent of the bed's own that `down` removes.
  # docker.io is mirrored by the bed's registry, so FROM python:... resolves
  # to the stand-ins pushed by push_standins.
  cat >"$BUILDKIT_DIR/buildkitd.toml" <<EOF
root = "$BUILDKIT_DIR/root"

[log]
  format = "text"

[grpc]
  address = ["$(buildkit_sock)", "tcp://$SVC_IP:$BUILDKIT_PORT"]

[worker.oci]
  enabled = true
  binary = "$(command -v runc)"
  networkMode = "host"
  defaultCgroupParent = "$BUILDKIT_CGROUP"
  gc = true
  gckeepstorage = "5GB"

[worker.containerd]
  enabled = false

[registry."docker.io"]
  mirrors = ["$host"]

# http = false: BuildKit speaks plain HTTP to a loopback registry unless told otherwise
# (util/resolver: MatchLocalhost when "http" is unset).
[registry."$host"]
  http = false
  ca = ["$PKI/ca.crt"]
EOF
  if [[ "$SVC_IP" != 127.0.0.1 ]]; then
    printf '\n[registry."127.0.0.1:%s"]\n  http = false\n  ca = ["%s"]\n' "$REGISTRY_PORT" "$PKI/ca.crt" >>"$BUILDKIT_DIR/buildkitd.toml"
  fi
  start buildkitd "$BIN_BUILDKIT/buildkitd" --config "$BUILDKIT_DIR/buildkitd.toml"
  wait_until buildkitd 60 buildkit_ready
}

# --- the git server over SSH -------------------------------------------------------

# Keys, known_hosts, authorized_keys, sshd_config and the command every
# session runs (git-serve); once per bed.
setup_git() {
  local d="$GIT_DIR_BED"
  need /usr/sbin/sshd "apt-get install -y openssh-server (the bed's git server runs its own sshd)"
  need git "apt-get install -y git"
  mkdir -p "$d/repos"
  chmod 700 "$d"
  ssh-keygen -q -t ed25519 -N '' -C converge-testbed-git-host -f "$d/ssh_host_ed25519_key"
  ssh-keygen -q -t ed25519 -N '' -C converge-testbed-git-client -f "$d/id_ed25519"
  {
    printf '[%s]:%s %s\n' "$SVC_IP" "$GIT_PORT" "$(cut -d' ' -f1,2 "$d/ssh_host_ed25519_key.pub")"
    [[ "$SVC_IP" == 127.0.0.1 ]] ||
      printf '[127.0.0.1]:%s %s\n' "$GIT_PORT" "$(cut -d' ' -f1,2 "$d/ssh_host_ed25519_key.pub")"
  } >"$d/known_hosts"
  install -m 0755 "$TESTBED_SRC/git-serve" "$d/git-serve"
  # restrict: no forwarding, pty or rc; the key runs git-serve only.
  printf 'restrict,command="%s %s" %s\n' "$d/git-serve" "$d/repos" "$(cat "$d/id_ed25519.pub")" >"$d/authorized_keys"
  chmod 600 "$d/authorized_keys"
  cat >"$d/sshd_config" <<EOF
# The bed's git server: root, with the bed's client key only, running git-serve.
Port $GIT_PORT
ListenAddress $SVC_IP
$([[ "$SVC_IP" == 127.0.0.1 ]] || echo "ListenAddress 127.0.0.1")
HostKey $d/ssh_host_ed25519_key
PidFile none
AuthorizedKeysFile $d/authorized_keys
AuthorizedPrincipalsFile none
# The bed dir is under /tmp (world-writable): sshd's path checks would refuse the keys file.
StrictModes no
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
PermitRootLogin prohibit-password
AllowUsers root
UsePAM no
PermitTTY no
DisableForwarding yes
PermitUserRC no
PermitUserEnvironment no
# git sends GIT_PROTOCOL=version=2 this way (protocol v2 over SSH).
AcceptEnv GIT_PROTOCOL
ForceCommand $d/git-serve $d/repos
Subsystem sftp /bin/false
LogLevel VERBOSE
EOF
}

git_ssh_command() {
  echo "ssh -i $GIT_DIR_BED/id_ed25519 -o IdentitiesOnly=yes -o UserKnownHostsFile=$GIT_DIR_BED/known_hosts -o StrictHostKeyChecking=yes"
}

git_ready() {
  # An unknown command is refused by git-serve, after a full SSH handshake.
  local out
  # shellcheck disable=SC2046
  out="$($(git_ssh_command) -o BatchMode=yes -p "$GIT_PORT" "root@$SVC_IP" ping 2>&1)" || true
  [[ "$out" == *"converge testbed git server"* ]]
}

start_git() {
  # sshd refuses to start without its privilege separation directory (Debian's
  # systemd unit makes it; nothing does here).
  mkdir -p /run/sshd
  chmod 755 /run/sshd
  start git-sshd /usr/sbin/sshd -D -e -f "$GIT_DIR_BED/sshd_config"
  wait_until git-sshd 30 git_ready
}

git_url() { echo "ssh://root@$SVC_IP:$GIT_PORT$GIT_BASE"; }

# --- all of them --------------------------------------------------------------------

# Called by up before containerd starts (its CRI config names certs.d).
prepare_services() {
  svc_ports
  setup_registry
  setup_git
}

start_services() {
  start_registry
  start_buildkitd
  start_git
}

# The services' part of the env file.
services_env() {
  echo "export CONVERGE_TESTBED_REGISTRY='$(registry_host)'"
  echo "export CONVERGE_TESTBED_REGISTRY_CA='$PKI/ca.crt'"
  echo "export CONVERGE_TESTBED_DOCKER_CONFIG='$DOCKER_CONFIG_DIR'"
  echo "export CONVERGE_TESTBED_BUILDKIT='tcp://$SVC_IP:$BUILDKIT_PORT'"
  echo "export CONVERGE_TESTBED_BUILDKIT_SOCKET='$(buildkit_sock)'"
  # buildctl's own default address (like DOCKER_HOST for docker).
  echo "export BUILDKIT_HOST='tcp://$SVC_IP:$BUILDKIT_PORT'"
  echo "export CONVERGE_TESTBED_BUILDKIT_VERSION='$BUILDKIT_VERSION'"
  echo "export CONVERGE_TESTBED_GIT='$(git_url)'"
  echo "export CONVERGE_TESTBED_GIT_KEY='$GIT_DIR_BED/id_ed25519'"
  echo "export CONVERGE_TESTBED_GIT_KNOWN_HOSTS='$GIT_DIR_BED/known_hosts'"
  echo "export CONVERGE_TESTBED_GIT_SSH_COMMAND='$(git_ssh_command)'"
}
