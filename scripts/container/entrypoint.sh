#!/bin/sh
# The image's entrypoint. It first runs the very check every program makes at start (settings
# from the environment and the instance file, shared/config.py): a configuration error stops the
# container here, with its message once, instead of every program failing under supervisord.
# Then it becomes supervisord (exec: PID 1, so `docker stop` signals it directly).
set -e
python -m shared.instance
# A new secret for the internal REST (0600 in HUB_RUN_DIR, a tmpfs in a read-only container).
python -m shared.internal new
exec supervisord -c /app/supervisord.conf -n "$@"
