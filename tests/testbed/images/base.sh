# shellcheck shell=bash
# The recipe of the stand-ins' base image: a debootstrapped Debian bookworm
# minbase, slimmed like the official debian:bookworm-slim. Sourced by build;
# its content keys the cached root filesystem (base-<key>.tar), so editing
# this file (and only this file, the suite or the CA bundle) redoes the
# debootstrap.
# The variables are used by build, which sources this file.
# shellcheck disable=SC2034

SUITE=bookworm
MIRROR=http://deb.debian.org/debian
BASE_REF=converge-testbed/debian:bookworm-slim

# Unmount anything left mounted under DIR (a debootstrap killed midway keeps
# proc and sys mounted in the target), then delete DIR without crossing into
# another filesystem.
remove_tree() {
  local dir="$1" mnt
  [[ -e "$dir" ]] || return 0
  while read -r mnt; do
    umount -l "$mnt"
  done < <(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r)
  rm -rf --one-file-system "$dir"
}

debootstrap_base() {
  local dir="$1"
  remove_tree "$dir"
  debootstrap --variant=minbase --components=main "$SUITE" "$dir" "$MIRROR"
}

# What the official debian:*-slim images do, written for the testbed: no
# docs/man/locales (also for packages installed later), apt caches cleared
# after every apt run, the updates and security suites, and the host's CA
# bundle (HTTPS from a build goes through an intercepting proxy here).
slim_base() {
  local r="$1"
  cat >"$r/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
# Written by converge's tests/testbed/images/build, as in debian:*-slim.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
  find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  local d
  for d in man groff info lintian linda locale; do
    [[ -d "$r/usr/share/$d" ]] && find "$r/usr/share/$d" -mindepth 1 -delete
  done
  cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
// Written by converge's tests/testbed/images/build: images keep no apt caches.
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
EOF
  rm -f "$r/etc/apt/sources.list"
  cat >"$r/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb
  rm -f "$r"/var/log/bootstrap.log "$r"/var/log/*.log "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old
  # Docker bind-mounts these per container.
  : >"$r/etc/resolv.conf"
  : >"$r/etc/hostname"
  : >"$r/etc/machine-id"
  mkdir -p "$r/etc/ssl/certs" "$r/usr/local/share/ca-certificates"
  # ca-certificates.crt is what the images' ENV points at; the copy in
  # /usr/local/share survives an `update-ca-certificates` run by a later
  # `apt-get install ca-certificates`.
  cp "$CA_BUNDLE" "$r/etc/ssl/certs/ca-certificates.crt"
  cp "$CA_BUNDLE" "$r/usr/local/share/ca-certificates/testbed-host-bundle.crt"
}

import_base() {
  local tar="$1"
  local env_ca=/etc/ssl/certs/ca-certificates.crt
  docker import \
    --change "LABEL $LABEL_STANDIN=true" \
    --change "LABEL $LABEL_BASE_KEY=$BASE_KEY" \
    --change "LABEL dev.converge.testbed.stand-in.for=debian:bookworm-slim" \
    --change 'LABEL org.opencontainers.image.description="STAND-IN base: debootstrap --variant=minbase bookworm, slimmed like debian:bookworm-slim, with the testbed host'"'"'s CA bundle. Built by converge'"'"'s tests/testbed/images/build because no registry is reachable."' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV SSL_CERT_FILE=$env_ca" \
    --change "ENV PIP_CERT=$env_ca" \
    --change "ENV REQUESTS_CA_BUNDLE=$env_ca" \
    --change "ENV NODE_EXTRA_CA_CERTS=$env_ca" \
    --change 'CMD ["bash"]' \
    "$tar" "$BASE_REF"
}
