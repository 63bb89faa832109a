#!/usr/bin/env bash
# Make a local stand-in for the official python:3.11-slim image, so the unmodified Dockerfile
# builds with `podman build --pull=never` on a machine that reaches no container registry.
#
# The image is Debian bookworm from debootstrap (the mirror is read from this machine's apt
# sources at run time) with Debian's python3 (3.11), python3-venv and python3-pip, `python` and
# `pip` on PATH as in the official image, and this machine's CA bundle, so pip inside a build can
# verify its registry through whatever TLS-inspecting egress this machine sits behind.
#
# The root filesystem is cached as a tarball in $SENSOR_HUB_CACHE/base/; podman's own storage
# holds the imported image. Either one missing is restored from the other or rebuilt.
#
# Usage: scripts/container/base-image.sh [--force]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/container/env.sh
. "$here/env.sh"

force=0
[ "${1:-}" = "--force" ] && force=1

base_dir="$SENSOR_HUB_CACHE/base"
tarball="$base_dir/python-3.11-slim-bookworm-r$BASE_RECIPE.tar"
label="sensor-hub.base-recipe"

# with_progress LOG WHAT COMMAND...: run COMMAND with its output in LOG and, every 15 s while it
# runs, say how long it has been going and what it is doing (the log's last line): a silent
# minute or two looks like a hang.
with_progress() {
    local log=$1 what=$2 pid started last=0 status=0
    shift 2
    "$@" >"$log" 2>&1 &
    pid=$!
    started=$SECONDS
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        if [ $((SECONDS - started)) -ge $((last + 15)) ]; then
            last=$((SECONDS - started))
            echo "base-image: $what: ${last} s, $(tail -n 1 "$log" 2>/dev/null | cut -c1-100)" >&2
        fi
    done
    wait "$pid" || status=$?
    return "$status"
}

image_is_current() {
    [ "$(podman image inspect --format "{{ index .Labels \"$label\" }}" "$BASE_IMAGE" 2>/dev/null)" \
        = "$BASE_RECIPE" ]
}

build_rootfs() {
    local mirror rootfs ca_bundle
    mirror=$(python3 "$here/debian_mirror.py" bookworm)
    ca_bundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
    [ -f "$ca_bundle" ] || { echo "base-image: no CA bundle at $ca_bundle" >&2; exit 1; }

    mkdir -p "$base_dir"
    rootfs=$(mktemp -d "$base_dir/rootfs.XXXXXX")
    # shellcheck disable=SC2064  # expand now: the trap must remove this very directory
    trap "$SUDO rm -rf '$rootfs'" EXIT

    echo "base-image: debootstrap bookworm into $rootfs (about 2 minutes, once per machine)" >&2
    # minbase + the three Python packages; debootstrap never installs Recommends, so no compiler
    # comes in with python3-pip.
    [ -z "$SUDO" ] || sudo -v  # a password prompt now, not in the middle of the progress lines
    with_progress "$base_dir/debootstrap.log" debootstrap \
        $SUDO debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$rootfs" "$mirror" || {
        tail -n 30 "$base_dir/debootstrap.log" >&2
        exit 1
    }

    $SUDO install -m 0644 "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    # As in the official image: `python` and `pip` on PATH, and pip may install outside a venv.
    $SUDO ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
    $SUDO ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/pip"
    $SUDO rm -f "$rootfs/usr/lib/python3.11/EXTERNALLY-MANAGED"
    # build.sh bind-mounts this machine's pip settings into every RUN step; a mount point the
    # base lacks would be left behind, empty, in the sensor-hub image's layers.
    local pip_scratch source target
    pip_scratch=$(mktemp -d)
    python3 "$here/pip_config.py" "$pip_scratch" | sed -n 's/^--volume=\([^:]*\):\([^:]*\):ro$/\1 \2/p' |
        while read -r source target; do
            if [ -d "$source" ]; then
                $SUDO mkdir -p "$rootfs$target"
            else
                $SUDO mkdir -p "$(dirname "$rootfs$target")"
                [ -e "$rootfs$target" ] || $SUDO touch "$rootfs$target"
            fi
        done
    rm -rf "$pip_scratch"
    # Slim: no package caches, lists or docs.
    $SUDO chroot "$rootfs" apt-get clean
    $SUDO rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
        "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old

    $SUDO tar --numeric-owner -C "$rootfs" -cf "$tarball.part" .
    $SUDO chown "$(id -u):$(id -g)" "$tarball.part"
    mv "$tarball.part" "$tarball"
    find "$base_dir" -maxdepth 1 -name 'python-3.11-slim-bookworm-r*.tar' ! -path "$tarball" -delete
    $SUDO rm -rf "$rootfs"
    trap - EXIT
}

import_image() {
    echo "base-image: importing $tarball as $BASE_IMAGE" >&2
    podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --change "LABEL $label=$BASE_RECIPE" \
        "$tarball" "$BASE_IMAGE" >/dev/null
    local alias
    for alias in $BASE_IMAGE_ALIASES; do
        podman tag "$BASE_IMAGE" "$alias"
    done
}

if [ "$force" -eq 0 ] && image_is_current; then
    exit 0
fi
if [ "$force" -eq 1 ] || [ ! -s "$tarball" ]; then
    start=$(date +%s)
    build_rootfs
    echo "base-image: root filesystem built in $(($(date +%s) - start)) s" >&2
fi
import_image
