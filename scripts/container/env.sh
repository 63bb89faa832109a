# shellcheck shell=bash disable=SC2034  # sourced: the variables are used by the sourcing scripts
# Shared settings for the podman-based container scripts; sourced, never run.
#
# Everything machine-specific (the Debian mirror, pip's indexes, the CA bundle) is read from the
# host at run time; nothing here names a host.

# Where the debootstrapped base image, the generated containers.conf and build scratch live
# between runs. tests/container/podman.py computes the same default.
SENSOR_HUB_CACHE=${SENSOR_HUB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sensor-hub}
export SENSOR_HUB_CACHE

# podman reads its engine settings (runtime, cgroup manager, ulimits) from this file, which
# setup.sh writes: this machine's hard limits are below podman's defaults.
CONTAINERS_CONF=${CONTAINERS_CONF:-$SENSOR_HUB_CACHE/containers.conf}
export CONTAINERS_CONF

# The local stand-in for the official image; the Dockerfile's FROM line resolves to it with
# --pull=never. Bump BASE_RECIPE when base-image.sh changes what goes into the image.
BASE_IMAGE=localhost/python:3.11-slim
BASE_IMAGE_ALIASES="docker.io/library/python:3.11-slim"
BASE_RECIPE=2

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
