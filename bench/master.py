"""Master control under the issue's load (issue 9): sensors that phone home, on the real instance.

``mode.master_mqtt`` sensors heart-beat every 10 s over MQTT and ``mode.master_http`` sensors
every 10 s over HTTP through the ``web`` program's LAN port (``/api/sensor-master/heartbeat``),
at once, spread evenly over the 10 s, for a warm-up and then ``mode.master_s`` seconds. Each
load runs in a process of its own (bare paho; ``requests`` sessions in a small thread pool), so
the harness's GIL is not part of a figure.

- HTTP heartbeat → status: the heartbeat's answer time (the answer is the sensor's status:
  ``in_sync``, its config hash, its commands).
- MQTT heartbeat → status: a heartbeat has no answer of its own over MQTT, so one in
  ``SAMPLE_EVERY`` names a config hash the hub does not have and is timed to the sensor's
  config republished at a subscriber (the answer of an out-of-sync heartbeat; an upper bound,
  as it includes reading and publishing the config). The others name the sensor's own hash, as
  a sensor in sync does, and cost only the heartbeat.
- Memory: RSS and PSS of the aggregator, the bridge and ``web`` (each program's process tree)
  every 10 s through the window; growth = last sample - first sample after the warm-up.
- Template change: a template for the type of the MQTT sensors changes; the time from the
  management request to the last of their configs republished at a subscriber.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import orjson
import paho.mqtt.client as paho
import requests

from shared.internal import HEADER

from .broker import Broker, wait_until
from .hub import Hub, instance_doc
from .modes import Mode
from .mqttload import CTX, Watcher, _client, _nodelay
from .stats import median, pct

log = logging.getLogger(__name__)
KEY = "bench-management-key"
TOKEN = "bench-hub-token"  # noqa: S105 (the bench instance's own, on 127.0.0.1)
PERIOD_S = 10.0  # every sensor heart-beats this often (the cadence)
SAMPLE_EVERY = 10  # one MQTT heartbeat in this many is out of sync, and timed
WATCHED = ("state-aggregator", "mqtt-bridge", "web")


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def _subscribing(topic_filter: str) -> Any:
    """An ``on_connect`` that turns Nagle off and subscribes."""
    def on_connect(client: paho.Client, *_a: Any) -> None:
        _nodelay(client)
        client.subscribe(topic_filter, qos=1)
    return on_connect


# --- the MQTT sensors, in a process of their own ---------------------------------------------
def _mqtt_main(  # noqa: PLR0915, PLR0917 (one paced loop, read top to bottom; a Process target)
        host: str, port: int, root: str, sensors: list[tuple[str, str]],
        warmup_s: float, window_s: float, conn: Connection) -> None:
    lock = threading.Lock()
    sent: dict[str, float] = {}
    latencies: list[float] = []
    recording = threading.Event()
    ready = threading.Event()

    def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        if msg.retain:
            return
        now = time.perf_counter()
        sensor = msg.topic.rsplit("/", 2)[-2]
        with lock:
            t0 = sent.pop(sensor, None)
        if t0 is not None and recording.is_set():
            latencies.append((now - t0) * 1000)

    sub, pub = _client("bench-master-sub"), _client("bench-master-pub")
    sub.on_connect = _subscribing(f"{root}/sensors/+/config")
    sub.on_subscribe = lambda *_a: ready.set()
    sub.on_message = on_message
    sub.connect(host, port, keepalive=60)
    sub.loop_start()
    pub.max_inflight_messages_set(100)
    pub.connect(host, port, keepalive=60)
    pub.loop_start()
    _nodelay(pub)
    if not ready.wait(20):
        conn.send({"error": "the MQTT sensors' subscriber did not subscribe"})
        return
    step = PERIOD_S / len(sensors)
    start = time.perf_counter()
    end = start + warmup_s + window_s
    i = published = timed = 0
    while (due := start + i * step) < end:
        time.sleep(max(0.0, due - time.perf_counter()))  # pacing the load
        if not recording.is_set() and due >= start + warmup_s:
            with lock:
                sent.clear()
            recording.set()
        sensor_id, config_hash = sensors[i % len(sensors)]
        stale = i % SAMPLE_EVERY == 0
        with lock:
            if stale and sensor_id in sent:
                stale = False  # its last timed heartbeat is still unanswered: do not time two
            if stale:
                sent[sensor_id] = time.perf_counter()
        body = {"status": "online", "config_hash": f"bench-stale-{i}" if stale else config_hash,
                "metrics": {"uptime": int(due - start), "free_memory": 100_000}}
        pub.publish(f"{root}/sensors/{sensor_id}/heartbeat", orjson.dumps(body), qos=1)
        published += 1
        timed += stale and recording.is_set()
        i += 1
    drain_end = time.monotonic() + 10
    while time.monotonic() < drain_end:
        with lock:
            if not sent:
                break
        time.sleep(0.05)
    with lock:
        conn.send({"published": published, "timed": timed, "latencies_ms": latencies,
                   "unanswered": len(sent), "elapsed_s": time.perf_counter() - start})
    for c in (pub, sub):
        c.loop_stop()
        c.disconnect()


# --- the HTTP sensors, in a process of their own ---------------------------------------------
def _http_main(api: str, sensors: list[tuple[str, str, str | None]],  # noqa: PLR0917
               warmup_s: float, window_s: float, threads: int, conn: Connection) -> None:
    local = threading.local()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    recording = threading.Event()

    def beat(sensor_id: str, config_hash: str, token: str | None) -> None:
        session = getattr(local, "s", None)
        if session is None:
            session = local.s = _session()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        t0 = time.perf_counter()
        try:
            resp = session.post(f"{api}/heartbeat", headers=headers, timeout=10, json={
                "sensor_id": sensor_id, "status": "online", "config_hash": config_hash,
                "metrics": {"uptime": 1, "free_memory": 100_000}})
            outcome = "ok" if resp.status_code == 200 else f"HTTP {resp.status_code}"
        except requests.RequestException as exc:
            outcome = type(exc).__name__
        took = (time.perf_counter() - t0) * 1000
        with lock:
            if outcome != "ok":
                errors[outcome] = errors.get(outcome, 0) + 1
            elif recording.is_set():
                latencies.append(took)

    step = PERIOD_S / len(sensors)
    start = time.perf_counter()
    end = start + warmup_s + window_s
    i = 0
    with ThreadPoolExecutor(threads) as pool:
        while (due := start + i * step) < end:
            time.sleep(max(0.0, due - time.perf_counter()))  # pacing the load
            if not recording.is_set() and due >= start + warmup_s:
                recording.set()
            pool.submit(beat, *sensors[i % len(sensors)])
            i += 1
    with lock:
        conn.send({"sent": i, "latencies_ms": latencies, "errors": errors,
                   "elapsed_s": time.perf_counter() - start})


# --- the template change: a subscriber counting republished configs --------------------------
def _config_counter_main(host: str, port: int, root: str, conn: Connection) -> None:
    lock = threading.Lock()
    state: dict[str, Any] = {"marker": None, "count": 0, "last_ns": 0}
    ready = threading.Event()

    def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        now = time.time_ns()
        if msg.retain:
            return
        try:
            marker = (orjson.loads(msg.payload).get("config") or {}).get("bench_marker")
        except (orjson.JSONDecodeError, AttributeError):
            return
        with lock:
            if marker is not None and marker == state["marker"]:
                state["count"] += 1
                state["last_ns"] = now

    client = _client("bench-master-configs")
    client.on_connect = _subscribing(f"{root}/sensors/+/config")
    client.on_subscribe = lambda *_a: ready.set()
    client.on_message = on_message
    client.connect(host, port, keepalive=60)
    client.loop_start()
    conn.send("ready" if ready.wait(20) else "not subscribed")
    while True:
        try:
            cmd = conn.recv()
        except EOFError:
            break
        if cmd == "stop":
            break
        with lock:
            if isinstance(cmd, tuple):  # ("expect", marker)
                state.update(marker=cmd[1], count=0, last_ns=0)
                conn.send("ok")
            else:
                conn.send(dict(state))
    client.loop_stop()
    client.disconnect()


# --- the section -------------------------------------------------------------------------------
def _register(hub: Hub, n_mqtt: int, n_http: int) -> tuple[list[tuple[str, str]],
                                                              list[tuple[str, str, str | None]]]:
    """MQTT sensors through the aggregator's REST (what the bridge does for a register on MQTT);
    HTTP sensors through the ``web`` program, as a sensor on the LAN does."""
    internal = f"{hub.url('aggregator')}/master"
    lan = f"{hub.url('ingest')}/api/sensor-master"
    local = threading.local()

    def session() -> requests.Session:
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = _session()
        return s

    def mqtt_one(i: int) -> tuple[str, str]:
        sid = f"bm{i:05d}"
        answer = session().post(f"{internal}/register", timeout=30,
                                headers={HEADER: hub.secret},
                                json={"sensor_id": sid, "sensor_type": "bench_mqtt"})
        answer.raise_for_status()
        return sid, str(answer.json()["config_hash"])

    def http_one(i: int) -> tuple[str, str, str | None]:
        sid = f"bh{i:05d}"
        answer = session().post(f"{lan}/register", timeout=30,
                                headers={"X-API-Key": KEY, "X-Token": TOKEN},
                                json={"sensor_id": sid, "sensor_type": "bench_http"})
        answer.raise_for_status()
        body = answer.json()
        token = body.get("token")  # a hub that issues sensor tokens at registration
        return sid, str(body["config_hash"]), str(token) if token else None

    with ThreadPoolExecutor(8) as pool:
        mqtt = list(pool.map(mqtt_one, range(n_mqtt)))
        http = list(pool.map(http_one, range(n_http)))
    return mqtt, http


def _memory(hub: Hub) -> dict[str, dict[str, float]]:
    mem = hub.memory()
    return {name: mem[name] for name in WATCHED if name in mem}


def _template_changes(hub: Hub, broker: Broker, mode: Mode, n: int) -> list[float]:
    conn, child = CTX.Pipe()
    proc = CTX.Process(target=_config_counter_main, args=(broker.host, broker.port,
                                                          hub.base, child), daemon=True)
    proc.start()
    try:
        if not conn.poll(30) or conn.recv() != "ready":
            raise TimeoutError("the config counter did not subscribe")
        lan = f"{hub.url('ingest')}/api/sensor-master"
        headers = {"X-API-Key": KEY}
        made = requests.post(f"{lan}/configs", headers=headers, timeout=60, json={
            "config_name": "bench fleet", "sensor_type": "bench_mqtt",
            "config_data": {"polling_interval": 60, "bench_marker": 0}})
        made.raise_for_status()
        template_id = made.json()["id"]
        times = []
        for run in range(1, mode.runs + 1):
            conn.send(("expect", run))
            conn.recv()
            t0 = time.time_ns()
            requests.patch(f"{lan}/configs/{template_id}", headers=headers, timeout=60, json={
                "config_data": {"polling_interval": 60, "bench_marker": run}}).raise_for_status()

            def counted() -> dict[str, Any]:
                conn.send("state")
                got: dict[str, Any] = conn.recv()
                return got

            wait_until(lambda: counted()["count"] >= n, timeout=60,
                       what=f"{n} configs republished", interval=0.05)
            times.append(round((counted()["last_ns"] - t0) / 1e9, 3))
            log.info("master: template change %d: %d configs republished in %.2f s", run, n,
                     times[-1])
        return times
    finally:
        conn.send("stop")
        proc.join(5)
        if proc.is_alive():
            proc.terminate()


def _latency(values: list[float]) -> dict[str, Any]:
    return {"samples": len(values), "p50_ms": round(pct(values, 50), 1),
            "p99_ms": round(pct(values, 99), 1), "max_ms": round(max(values), 1) if values else None}


def run(broker: Broker, mode: Mode) -> dict[str, Any]:
    hub = Hub(instance_doc([]), broker.port, env_extra={
        "MASTER_API_KEY": KEY, "SERVER_TOKEN": TOKEN, "MASTER_CHECK_IN_INTERVAL": str(PERIOD_S),
        "LOG_LEVEL": "WARNING",
        # 200 sensors on a LAN have 200 addresses; here they share one, whose per-client budget
        # (1,200/minute: exactly their heartbeats) would measure the limiter, not master control
        "RATE_LIMIT_INGEST": "1000000/minute"})
    n_mqtt, n_http = mode.master_mqtt, mode.master_http
    try:
        hub.start()
        hub.wait_healthy(timeout=120)
        watcher = Watcher(broker.host, broker.port, [f"{hub.base}/status"])
        wait_until(lambda: watcher.seen(f"{hub.base}/status", b"online"), timeout=60,
                   what="the bridge online")
        watcher.close()
        wait_until(lambda: requests.get(f"{hub.url('ingest')}/api/health", timeout=2).ok,
                   timeout=60, what="the web program")
        started = time.monotonic()
        mqtt_sensors, http_sensors = _register(hub, n_mqtt, n_http)
        register_s = time.monotonic() - started
        log.info("master: %d + %d sensors registered in %.1f s; load for %.0f s + %.0f s warm-up",
                 n_mqtt, n_http, register_s, mode.master_s, mode.master_warmup_s)

        mqtt_conn, mqtt_child = CTX.Pipe()
        http_conn, http_child = CTX.Pipe()
        procs = [
            CTX.Process(target=_mqtt_main, daemon=True, args=(
                broker.host, broker.port, hub.base, mqtt_sensors, mode.master_warmup_s,
                mode.master_s, mqtt_child)),
            CTX.Process(target=_http_main, daemon=True, args=(
                f"{hub.url('ingest')}/api/sensor-master", http_sensors, mode.master_warmup_s,
                mode.master_s, 8, http_child)),
        ]
        for p in procs:
            p.start()
        time.sleep(mode.master_warmup_s)  # the warm-up of the load processes (pacing, not a wait)
        samples: list[dict[str, Any]] = []
        window_end = time.monotonic() + mode.master_s
        while True:
            samples.append({"t_s": round(mode.master_s - (window_end - time.monotonic()), 1),
                            "memory": _memory(hub),
                            "loadavg": round(os.getloadavg()[0], 2)})
            left = window_end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(10.0, left))  # sampling cadence
        no_answer: dict[str, Any] = {"error": "no answer"}
        mqtt: dict[str, Any] = mqtt_conn.recv() if mqtt_conn.poll(120) else no_answer
        http: dict[str, Any] = http_conn.recv() if http_conn.poll(60) else no_answer
        for p in procs:
            p.join(10)
        if "error" in mqtt or "error" in http:
            raise RuntimeError(f"master load failed: {mqtt.get('error')} {http.get('error')}")
        republish = _template_changes(hub, broker, mode, n_mqtt)
        health = hub.get("aggregator", "/health")
    finally:
        hub.stop(graceful=False)
    first, last = samples[0]["memory"], samples[-1]["memory"]
    growth = {name: {"rss_mb": round(last[name]["rss_mb"] - first[name]["rss_mb"], 1),
                     "pss_mb": round(last[name]["pss_mb"] - first[name]["pss_mb"], 1)}
              for name in first if name in last}
    return {
        "mqtt_sensors": n_mqtt, "http_sensors": n_http, "period_s": PERIOD_S,
        "window_s": mode.master_s, "warmup_s": mode.master_warmup_s,
        "register_s": round(register_s, 1),
        "mqtt": {**_latency(mqtt["latencies_ms"]), "published": mqtt["published"],
                 "timed": mqtt["timed"], "unanswered": mqtt["unanswered"]},
        "http": {**_latency(http["latencies_ms"]), "sent": http["sent"],
                 "errors": http["errors"]},
        "memory_samples": samples, "memory_growth": growth,
        "template_change_s": republish, "template_change_median_s": median(republish),
        "aggregator_health": {k: health.get(k) for k in ("status", "state") if k in health},
    }
