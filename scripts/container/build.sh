#!/usr/bin/env bash
# Build the repository's Dockerfile, unmodified, with podman on a machine without a Docker
# daemon or registry access: FROM resolves to the local base image (--pull=never), the docker
# image format keeps the HEALTHCHECK (OCI has none), host networking spares the build a bridge,
# and pip inside the build gets this machine's pip settings (see pip_config.py).
#
# Usage: scripts/container/build.sh [TAG] [extra podman build args...]
#   TAG defaults to localhost/sensor-hub:dev. Run setup.sh once first.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=scripts/container/env.sh
. "$here/env.sh"

tag=${1:-localhost/sensor-hub:dev}
shift || true

mkdir -p "$SENSOR_HUB_CACHE"
scratch=$(mktemp -d "$SENSOR_HUB_CACHE/build.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
mapfile -t pip_mounts < <(python3 "$here/pip_config.py" "$scratch")

podman build --pull=never --format docker --network=host \
    "${pip_mounts[@]}" --tag "$tag" --file "$repo/Dockerfile" "$@" "$repo"
