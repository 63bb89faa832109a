# sensor-hub: one container per instance. supervisord runs the five programs (serial-handler,
# http-poller, state-aggregator, web, mqtt-bridge; see shared/processes.py); the instance is chosen
# by INSTANCE_NAME from the JSON files in /app/instances. See docs/docker.md.
FROM python:3.11-slim

LABEL org.opencontainers.image.title="sensor-hub" \
      org.opencontainers.image.description="IoT2mqtt connector: serial, HTTP and ESP32 probe sensors onto MQTT" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# The runtime user; dialout so that a serial port passed with --device is readable.
RUN python -m venv /opt/venv \
    && groupadd --gid 10001 hub \
    && useradd --uid 10001 --gid hub --groups dialout \
        --home-dir /app --no-create-home --shell /usr/sbin/nologin hub

WORKDIR /app

# Dependencies in their own layer, rebuilt only when pyproject.toml changes: the list is read from
# the [project] table (plus the build backend, so the code layer below needs no index at all).
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(p['build-system']['requires'] + p['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code. Installed as a package so every program imports it from anywhere; /app keeps the
# supervisord.conf, the default instance files and the sources (root-owned, read-only to hub).
COPY . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && rm -rf build ./*.egg-info \
    && install -d -o hub -g hub -m 0750 /app/data \
    && install -d -o hub -g hub -m 0700 /tmp/sensor-hub

ENV INSTANCES_DIR=/app/instances \
    DATA_DIR=/app/data \
    HUB_RUN_DIR=/tmp/sensor-hub \
    INSTANCE_NAME=demo \
    MQTT_HOST=mosquitto \
    PORT=8088

# Per-instance state (device registry, probe CSV log; later the durable MQTT outbox) survives
# container replacement.
VOLUME ["/app/data"]

# The web program: the LAN-facing API for ESP32 probes; the internal REST ports stay on 127.0.0.1.
EXPOSE 8088

# By name, not number: only a named user gets its supplementary groups (dialout) from runc.
# The image also runs with a read-only root filesystem (docker run --read-only --tmpfs /tmp,
# compose's read_only: true): it writes only to /app/data and to /tmp (HUB_RUN_DIR with the
# supervisord socket and the internal secret, gunicorn's worker heartbeat files).
# hadolint ignore=DL3066
USER hub

# Healthy only when all five programs are RUNNING in supervisord and the MQTT bridge is
# connected to the broker.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "shared.healthcheck"]

# Checks the configuration (python -m shared.instance), then execs supervisord as PID 1.
ENTRYPOINT ["/app/scripts/container/entrypoint.sh"]
