"""Measure master control under the issue's load (not a test; run by hand):

    python -m tests.services.state_aggregator.master.measure_mqtt [mqtt] [http] [seconds]

Real processes: a mosquitto, the aggregator and the MQTT bridge (``python -m connector``).
``mqtt`` sensors heart-beat every 10 s over MQTT and ``http`` sensors every 10 s over HTTP (the
aggregator's internal REST: the ``web`` program's LAN face only forwards to it), spread evenly.

Over MQTT a heartbeat has no answer of its own, so each one names a config hash the hub does not
have: the bridge then republishes the sensor's config, and the time from the heartbeat's publish to
that config at a subscriber is the heartbeat → status figure (an upper bound: it includes reading
and publishing the config). Over HTTP it is the heartbeat's answer time. RSS of the aggregator's
worker and of the bridge is sampled after a 10 s warm-up and at the end.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import requests
from paho.mqtt.enums import CallbackAPIVersion

from shared.internal import HEADER, new_secret
from tests.helpers import free_port, start_broker, unique_base, wait_for
from tests.services.state_aggregator.master.measure import _rss_kib, _up


def _percentiles(values: list[float]) -> str:
    if len(values) < 2:
        return f"{len(values)} samples"
    q = statistics.quantiles(sorted(values), n=100)
    return f"p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, max {max(values):.1f} ms ({len(values)} samples)"


def main() -> None:
    n_mqtt = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    n_http = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 120.0
    tmp = Path(tempfile.mkdtemp(prefix="master-mqtt-"))
    broker = start_broker(tmp)
    port = free_port()
    base = unique_base()
    env = {**os.environ, "INSTANCE_NAME": "demo", "DATA_DIR": str(tmp / "data"),
           "LOG_LEVEL": "WARNING", "STATE_AGGREGATOR_PORT": str(port),
           "SERIAL_HANDLER_PORT": str(free_port()), "HTTP_POLLER_PORT": str(free_port()),
           "MQTT_HOST": broker.host, "MQTT_PORT": str(broker.port), "MQTT_BASE_TOPIC": base,
           "HUB_RUN_DIR": str(tmp)}
    secret = {HEADER: new_secret(tmp)}  # the internal REST's, as ./hub run makes it
    agg = subprocess.Popen([sys.executable, "-m", "services.state_aggregator"], env=env)
    bridge: subprocess.Popen[bytes] | None = None
    root = f"{base}/v1/instances/demo"
    http = requests.Session()
    http.trust_env = False
    http.headers.update(secret)
    api = f"http://127.0.0.1:{port}/master"
    sent: dict[str, float] = {}
    mqtt_lat: list[float] = []
    lock = threading.Lock()

    def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        if msg.retain:
            return
        sensor = msg.topic.split("/")[-2]
        with lock:
            t0 = sent.pop(sensor, None)
        if t0 is not None:
            mqtt_lat.append((time.perf_counter() - t0) * 1000)

    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"measure-sub-{base}")
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"measure-pub-{base}")
    pub.max_inflight_messages_set(1000)
    try:
        wait_for(lambda: _up(http, api), timeout=60, what="the aggregator")
        bridge = subprocess.Popen([sys.executable, "-m", "connector"], env=env)
        sub.on_message = on_message
        sub.connect(broker.host, broker.port)
        sub.subscribe(f"{root}/sensors/+/config", qos=1)
        sub.loop_start()
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: http.post(f"{api}/register", json={
                "sensor_id": f"m{i:05d}", "sensor_type": "esp32"}).raise_for_status(),
                range(n_mqtt)))
        http_ids = [f"h{i:05d}" for i in range(n_http)]
        for sid in http_ids:
            http.post(f"{api}/register", json={"sensor_id": sid, "sensor_type": "esp32"})
        wait_for(lambda: http.get(f"http://127.0.0.1:{port}/health", timeout=2).ok, timeout=30)

        http_lat: list[float] = []
        local = threading.local()

        def http_beat(sid: str) -> None:
            session = getattr(local, "s", None)
            if session is None:
                session = local.s = requests.Session()
                session.trust_env = False
                session.headers.update(secret)
            t0 = time.perf_counter()
            session.post(f"{api}/heartbeat", json={"sensor_id": sid, "metrics": {"uptime": 1}})
            with lock:
                http_lat.append((time.perf_counter() - t0) * 1000)

        def run(phase_s: float, *, record: bool) -> None:
            # Every sensor every 10 s, spread evenly: MQTT ones published here, HTTP ones posted
            # from a pool (pacing the load, not waiting for readiness).
            total = n_mqtt + n_http
            step = 10.0 / total
            start = time.perf_counter()
            i = 0
            with ThreadPoolExecutor(8) as pool:
                while (due := start + i * step) < start + phase_s:
                    time.sleep(max(0.0, due - time.perf_counter()))
                    k = i % total
                    if k < n_mqtt:
                        sid = f"m{k:05d}"
                        with lock:
                            sent[sid] = time.perf_counter()
                        pub.publish(f"{root}/sensors/{sid}/heartbeat", orjson.dumps(
                            {"status": "online", "config_hash": f"old-{i}"}), qos=1)
                    else:
                        pool.submit(http_beat, http_ids[k - n_mqtt])
                    i += 1
            if not record:
                mqtt_lat.clear()
                http_lat.clear()

        run(10.0, record=False)  # warm-up
        agg_before = _rss_kib(agg.pid)
        bridge_before = _rss_kib(bridge.pid)
        started = time.perf_counter()
        run(seconds, record=True)
        wait_for(lambda: not sent, timeout=10, what="the last configs")  # drain, with a deadline
        print(f"{n_mqtt} MQTT + {n_http} HTTP sensors, each every 10 s, for "
              f"{time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.2f}")
        print(f"MQTT heartbeat -> republished config at a subscriber: {_percentiles(mqtt_lat)}")
        print(f"HTTP heartbeat answer: {_percentiles(http_lat)}")
        print(f"RSS after warm-up -> end: aggregator {agg_before / 1024:.1f} -> "
              f"{_rss_kib(agg.pid) / 1024:.1f} MiB, bridge {bridge_before / 1024:.1f} -> "
              f"{_rss_kib(bridge.pid) / 1024:.1f} MiB")
    finally:
        for client in (sub, pub):
            client.loop_stop()
            client.disconnect()
        for proc in (bridge, agg):
            if proc is not None:
                proc.terminate()
                proc.wait(10)
        broker.stop()


if __name__ == "__main__":
    main()
