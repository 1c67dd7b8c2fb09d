#!/usr/bin/env bash
# Figures for the todo-chatbot on a real minikube (tests/testbed/minikube): prints, for the shipped
# desired/dev stack,
#   1. empty namespace -> the app answering, the images already in minikube (zero builds);
#   2. the same with both app images built and loaded (their tags removed from minikube and the
#      Docker engine first; the engine's layer cache stays warm, as on a developer's machine);
#   3. a commit under apps/backend -> the new backend serving, through the daemon.
# Each is one run (this costs minutes); the figures are wall-clock seconds.
#
#   tests/testbed/up && tests/testbed/minikube/up
#   . /tmp/converge-testbed/env && . /tmp/converge-minikube/env
#   cargo build --release && benches/minikube.sh [path/to/converge]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
BIN="${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release/converge}"
die() { printf 'benches/minikube.sh: %s\n' "$*" >&2; exit 1; }
[[ -x "$BIN" ]] || die "no converge at $BIN: cargo build --release, or pass its path"
[[ "$(kubectl config current-context 2>/dev/null)" == minikube ]] ||
  die "the current context is not minikube: . /tmp/converge-minikube/env"
command -v minikube >/dev/null || die "minikube is not on PATH: . /tmp/converge-minikube/env"
[[ -n "${DOCKER_HOST:-}" ]] || die "no DOCKER_HOST (the Docker engine converge builds with): . /tmp/converge-testbed/env first"
unset CONTAINERD_ADDRESS CONTAINERD_NAMESPACE CONVERGE_CONTEXT
export CONVERGE_HELM="$(command -v helm)"
NS=todo-chatbot
URL="http://$(minikube ip):30080"

WORK="$(mktemp -d)"
# The daemon stops (and stops writing to the repository) before the repository is removed.
cleanup() {
  if [[ -n "${DAEMON:-}" ]]; then
    kill -TERM "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
REPO="$WORK/repo"
git init -q -b main "$REPO"
for d in apps/backend apps/frontend charts/todo-chatbot desired/dev; do
  mkdir -p "$REPO/$d"
  git -C "$ROOT" ls-files -z "$d" | (cd "$ROOT" && xargs -0 cp --parents -t "$REPO")
done
git -C "$REPO" add -A
git -C "$REPO" -c user.name=bench -c user.email=bench@localhost commit -qm "the todo-chatbot stack"

fresh_namespace() {
  kubectl delete namespace "$NS" --wait=true --timeout=180s >/dev/null 2>&1 || true
  kubectl create namespace "$NS" >/dev/null
  local pw
  pw="$(openssl rand -hex 16)"
  kubectl -n "$NS" create secret generic todo-chatbot-secrets \
    --from-literal=postgres-password="$pw" --from-literal=jwt-secret="$(openssl rand -hex 32)" \
    --from-literal=database-url="postgresql+psycopg://todo:$pw@todo-chatbot-postgres:5432/todo" >/dev/null
}

# Seconds from $1 until the app answers /api/health and /api/tasks.
until_answering() {
  local t0="$1"
  for _ in $(seq 1 600); do
    if curl -fsS --max-time 2 "$URL/api/health" >/dev/null 2>&1 && curl -fsS --max-time 2 "$URL/api/tasks" >/dev/null 2>&1; then
      echo "$(($(date +%s%N) - t0))" | awk '{ printf "%.1f", $1 / 1e9 }'
      return 0
    fi
    sleep 0.2
  done
  die "the app never answered at $URL"
}

apply_and_time() {
  local t0
  t0="$(date +%s%N)"
  "$BIN" apply --repo "$REPO" --stack dev --log warn >"$WORK/apply.log" 2>&1 || { tail -20 "$WORK/apply.log"; die "converge apply failed"; }
  until_answering "$t0"
}

images() { kubectl -n "$NS" get deploy -o jsonpath='{range .items[*]}{.spec.template.spec.containers[0].image}{"\n"}{end}'; }

fresh_namespace
printf 'empty namespace -> answering, images already in minikube (0 builds): %ss\n' "$(apply_and_time)"

for img in $(images); do
  minikube image rm "$img" >/dev/null 2>&1 || true
  docker rmi -f "$img" >/dev/null 2>&1 || true
done
fresh_namespace
s="$(apply_and_time)"
printf 'empty namespace -> answering, both app images built and loaded (layer cache warm): %ss\n' "$s"

"$BIN" run --repo "$REPO" --stack dev --log-format json --log info >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
sleep 5
before="$(kubectl -n "$NS" get deploy todo-chatbot-backend -o jsonpath='{.spec.template.spec.containers[0].image}')"
printf '\n# converge bench: a change to the backend\n' >>"$REPO/apps/backend/app/__init__.py"
t0="$(date +%s%N)"
git -C "$REPO" -c user.name=bench -c user.email=bench@localhost commit -qam "backend: a change"
for _ in $(seq 1 1200); do
  now="$(kubectl -n "$NS" get deploy todo-chatbot-backend -o jsonpath='{.spec.template.spec.containers[0].image}')"
  [[ "$now" != "$before" ]] && break
  sleep 0.2
done
[[ "$now" != "$before" ]] || die "the daemon never applied the backend change (log: $WORK/daemon.log)"
kubectl -n "$NS" rollout status deploy/todo-chatbot-backend --timeout=300s >/dev/null
printf 'commit under apps/backend -> new backend serving (daemon: build, load, roll out): %ss\n' "$(until_answering "$t0")"
