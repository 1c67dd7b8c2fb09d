#!/usr/bin/env bash
# Entrypoint of the testbed's postgres stand-in. Written for the testbed (not
# copied from the official image) to honour the official image's documented
# contract:
#   POSTGRES_PASSWORD    superuser password; required on first start unless
#                        POSTGRES_HOST_AUTH_METHOD=trust
#   POSTGRES_USER        superuser name (default postgres)
#   POSTGRES_DB          database created on first start (default $POSTGRES_USER)
#   POSTGRES_INITDB_ARGS extra initdb arguments (split on spaces)
#   POSTGRES_HOST_AUTH_METHOD  pg_hba method for TCP clients (default scram-sha-256)
#   <NAME>_FILE          read POSTGRES_PASSWORD/USER/DB from a file instead
#   PGDATA               data directory (default /var/lib/postgresql/data)
#   /docker-entrypoint-initdb.d/*.sh|*.sql|*.sql.gz  run once after initdb
# As root it prepares the directories and re-runs itself as `postgres`
# (uid 70); as any other uid (Kubernetes runAsUser) it writes only to
# $PGDATA, /var/run/postgresql and /tmp, so a read-only root filesystem works.
set -Eeuo pipefail

say() { printf '%s [stand-in entrypoint] %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$*" >&2; }

# file_env VAR DEFAULT: VAR from $VAR or from the file named by $VAR_FILE.
file_env() {
  local var="$1" def="${2:-}" fvar="${1}_FILE"
  if [[ -n "${!var:-}" && -n "${!fvar:-}" ]]; then
    say "error: both $var and $fvar are set (they are exclusive)"
    exit 1
  fi
  local val="$def"
  if [[ -n "${!var:-}" ]]; then
    val="${!var}"
  elif [[ -n "${!fvar:-}" ]]; then
    val="$(<"${!fvar}")"
  fi
  export "$var"="$val"
  unset "$fvar"
}

# psql as the superuser over the Unix socket of the temporary server.
init_psql() {
  PGHOST=/var/run/postgresql PGPASSWORD="$POSTGRES_PASSWORD" \
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "$@"
}

init_database() {
  if [[ -z "$POSTGRES_PASSWORD" && "$POSTGRES_HOST_AUTH_METHOD" != trust ]]; then
    say "error: the database is uninitialised and no superuser password is set."
    say "Set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE), or POSTGRES_HOST_AUTH_METHOD=trust."
    exit 1
  fi
  say "initialising $PGDATA for superuser '$POSTGRES_USER'"
  # initdb looks its own uid up; an arbitrary uid (Kubernetes runAsUser, the chart's 10001) has
  # no passwd entry. The official image fakes one with nss_wrapper for initdb only: so here.
  if ! getent passwd "$(id -u)" >/dev/null 2>&1; then
    local wrapper
    wrapper="$(find /usr/lib -name libnss_wrapper.so -print -quit 2>/dev/null)"
    if [[ -n "$wrapper" ]]; then
      NSS_WRAPPER_PASSWD="$(mktemp)"
      NSS_WRAPPER_GROUP="$(mktemp)"
      printf 'postgres:x:%s:%s:PostgreSQL:%s:/bin/false\n' "$(id -u)" "$(id -g)" "$PGDATA" >"$NSS_WRAPPER_PASSWD"
      printf 'postgres:x:%s:\n' "$(id -g)" >"$NSS_WRAPPER_GROUP"
      export LD_PRELOAD="$wrapper" NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
    fi
  fi
  local extra=()
  # Word splitting is the documented meaning of POSTGRES_INITDB_ARGS.
  # shellcheck disable=SC2206
  [[ -n "${POSTGRES_INITDB_ARGS:-}" ]] && extra=($POSTGRES_INITDB_ARGS)
  # initdb's default rules (trust on the socket and loopback, as in the
  # official image), then password authentication for every other client.
  # The password reaches initdb through a pipe, never argv or a file.
  if [[ -n "$POSTGRES_PASSWORD" ]]; then
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") "${extra[@]}"
  else
    initdb --username="$POSTGRES_USER" "${extra[@]}"
  fi
  printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"

  # A server on the Unix socket only, for the set-up below.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
  if [[ "$POSTGRES_DB" != postgres ]]; then
    init_psql --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
  fi
  local f
  for f in /docker-entrypoint-initdb.d/*; do
    [[ -e "$f" ]] || continue
    case "$f" in
      *.sh)
        say "running $f"
        if [[ -x "$f" ]]; then "$f"; else . "$f"; fi
        ;;
      *.sql)
        say "running $f"
        init_psql --dbname "$POSTGRES_DB" -f "$f"
        ;;
      *.sql.gz)
        say "running $f"
        gzip -dc "$f" | init_psql --dbname "$POSTGRES_DB"
        ;;
      *) say "ignoring $f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop
  say "PostgreSQL init process complete; ready for start up."
}

main() {
  # `docker run IMAGE -c shared_buffers=...` means postgres with those flags.
  if [[ "${1:-}" == -* ]]; then
    set -- postgres "$@"
  fi
  if [[ "${1:-}" != postgres ]]; then
    exec "$@"
  fi
  export PGDATA="${PGDATA:-/var/lib/postgresql/data}"

  if [[ "$(id -u)" == 0 ]]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    mkdir -p /var/run/postgresql
    chown postgres:postgres /var/run/postgresql
    chmod 3777 /var/run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
  fi

  # As a non-root uid: PGDATA may be a fresh subdirectory of a claimed
  # volume (the chart's PGDATA=<mount>/pgdata); initdb wants it 0700.
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA" 2>/dev/null || :

  file_env POSTGRES_PASSWORD
  file_env POSTGRES_USER postgres
  file_env POSTGRES_DB "$POSTGRES_USER"
  export POSTGRES_HOST_AUTH_METHOD="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"

  if [[ -s "$PGDATA/PG_VERSION" ]]; then
    say "$PGDATA already holds a database (PostgreSQL $(<"$PGDATA/PG_VERSION")); skipping initialisation"
  else
    init_database
  fi
  # The password is not needed by the server: keep it out of its environment; nor is the
  # passwd entry faked for initdb.
  unset POSTGRES_PASSWORD
  if [[ -n "${NSS_WRAPPER_PASSWD:-}" ]]; then
    rm -f "$NSS_WRAPPER_PASSWD" "$NSS_WRAPPER_GROUP"
    unset LD_PRELOAD NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
  fi
  exec "$@"
}

main "$@"
