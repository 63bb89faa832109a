"""End-to-end throughput and latency: readings written to pseudo-terminal serial ports (and
POSTed to the LAN ingest API when the instance has one) until their state arrives at a
subscriber."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .broker import Broker, wait_until
from .feed import Feeder, IngestPoster, Ptys
from .hub import Hub, instance_doc, serial_sensor
from .modes import Mode
from .mqttload import Dump, Subscriber, Watcher
from .stats import pct, summary

log = logging.getLogger(__name__)
PROBE_ID = "bench_probe"
TOKEN = "bench-token"  # noqa: S105  (a throwaway token for the instance under test)


def start_serial_hub(broker: Broker, ptys: Ptys, per_port: int, *, extra: list[dict[str, Any]]
                     | None = None, interval: float = 3600, env: dict[str, str] | None = None,
                     ) -> tuple[Hub, list[tuple[int, list[str]]]]:
    """A hub whose serial sensors sit ``per_port`` on each pty, ready to take readings."""
    ports, sensors = [], []
    for p, (fd, path) in enumerate(zip(ptys.masters, ptys.paths, strict=True)):
        ids = [f"p{p}d{d}" for d in range(per_port)]
        ports.append((fd, ids))
        sensors += [serial_sensor(i, path, interval=interval) for i in ids]
    hub = Hub(instance_doc(sensors + (extra or [])), broker.port, env_extra=env or {})
    hub.start()
    hub.wait_healthy(timeout=120)
    watcher = Watcher(broker.host, broker.port, [f"{hub.base}/status"])
    try:
        wait_until(lambda: watcher.seen(f"{hub.base}/status", b"online"), timeout=60,
                   what="the bridge's retained online")
    finally:
        watcher.close()

    def ports_up() -> bool:
        health = hub.get("serial", "/health")
        found = health.get("ports") or health.get("serial", {}).get("ports") or []
        return bool(found) and all(p.get("up") for p in found)

    try:
        wait_until(ports_up, timeout=30, what="the serial handler to open every pty",
                   interval=0.1)
    except TimeoutError:
        log.warning("could not confirm from /health that every pty is open; going on")
    return hub, ports


def _run_window(dump: Dump, sent_ns: Any, first: int, last: int) -> tuple[list[float], set[int]]:
    """Latencies (ms) of the readings ``first..last-1`` that arrived, and their seqs."""
    lat: list[float] = []
    seen: set[int] = set()
    for seq, arr in zip(dump.seqs, dump.arrivals, strict=True):
        if first <= seq < last and seq not in seen:
            seen.add(seq)
            lat.append((arr - sent_ns[seq]) / 1e6)
    return lat, seen


def run(broker: Broker, mode: Mode, ceiling_q1: float) -> dict[str, Any]:
    ptys = Ptys(mode.ports)
    capacity = 3_000_000
    probe = {"sensor_id": PROBE_ID, "sensor_type": "probe", "source": {"type": "probe"}}
    hub, ports = start_serial_hub(broker, ptys, mode.devices_per_port, extra=[probe],
                                  # one client posting as fast as the hub takes it: the
                                  # per-client budget would measure itself, not the pipeline
                                  env={"SERVER_TOKEN": TOKEN,
                                       "RATE_LIMIT_INGEST": "1000000/minute"})
    sub = Subscriber(broker.host, broker.port,
                     [f"{hub.base}/devices/+/state", f"{hub.base}/devices/+/state/+"],
                     record_suffix="/state", qos=1)
    feeder = Feeder(ports, capacity=capacity, received=lambda: sub.recorded.value)
    ingest = IngestPoster(f"{hub.url('ingest')}/api/ingest", PROBE_ID, TOKEN)
    with_ingest = ingest.available()
    out: dict[str, Any] = {"devices": mode.ports * mode.devices_per_port, "ports": mode.ports,
                           "ingest_api": with_ingest, "throughput_runs": [], "latency_runs": []}
    try:
        # warm-up: every port open and every device through once
        feeder.paced(500, 0.4)
        sub.wait_recorded(int(feeder.sent * 0.99), timeout=20)
        for _ in range(mode.throughput_runs):
            out["throughput_runs"].append(_throughput(hub, sub, feeder, mode, ceiling_q1))
        for _ in range(mode.runs):
            out["latency_runs"].append(_latency(sub, feeder, mode))
        if with_ingest:
            out["ingest_runs"] = [_ingest(hub, sub, feeder, ingest, mode)
                                  for _ in range(mode.runs)]
            out["ingest"] = summary(out["ingest_runs"], ["readings_per_s", "p50_ms", "p99_ms",
                                                         "lost"])
    finally:
        sub.close()
        hub.stop(graceful=False)
        ptys.close()
    keys = ["readings_per_s", "mqtt_msgs_per_s", "msgs_per_reading", "ratio_msgs_to_q1_ceiling",
            "ratio_readings_to_q1_ceiling", "lost", "sent"]
    out["throughput"] = summary(out["throughput_runs"], keys)
    out["throughput"]["cpu_s_per_1k_readings"] = {
        proc: round(float(_med([r["cpu_s_per_1k_readings"].get(proc, 0)
                                for r in out["throughput_runs"]])), 4)
        for proc in out["throughput_runs"][0]["cpu_s_per_1k_readings"]}
    out["latency"] = summary(out["latency_runs"], ["rate_per_s", "p50_ms", "p95_ms", "p99_ms",
                                                   "max_ms", "lost"])
    return out


def _med(values: list[float]) -> float:
    from .stats import median
    return median(values)


def _ingest(hub: Hub, sub: Subscriber, feeder: Feeder, ingest: IngestPoster,
            mode: Mode) -> dict[str, Any]:
    """One POST per reading (as a probe sends them), one client, keep-alive."""
    sub.reset()
    first = feeder.sent
    stop = threading.Event()
    timer = threading.Timer(mode.latency_s, stop.set)
    start_ns = time.time_ns()
    timer.start()
    ingest.run(feeder, stop)
    end_ns = time.time_ns()
    last = feeder.sent
    sub.wait_recorded(last - first, timeout=30, idle=5.0)
    lat, seen = _run_window(sub.dump(), feeder.sent_ns, first, last)
    return {"readings_per_s": round(len(seen) / ((end_ns - start_ns) / 1e9)),
            "sent": last - first, "lost": last - first - len(seen),
            "p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2)}


def _throughput(hub: Hub, sub: Subscriber, feeder: Feeder, mode: Mode,
                ceiling_q1: float) -> dict[str, Any]:
    sub.reset()
    first = feeder.sent
    cpu0 = hub.cpu()
    start_ns, end_ns = feeder.blast(mode.throughput_s, window=2000)
    last = feeder.sent
    sub.wait_recorded(last - first, timeout=60, idle=5.0)
    cpu1 = hub.cpu()
    dump = sub.dump()
    lat, seen = _run_window(dump, feeder.sent_ns, first, last)
    # the rate while the writer ran, after a short ramp (the first 10 %)
    lo = start_ns + (end_ns - start_ns) // 10
    in_window = sum(1 for arr in dump.arrivals if lo <= arr <= end_ns)
    seconds = (end_ns - lo) / 1e9
    rps = in_window / seconds if seconds > 0 else 0.0
    per_reading = dump.total / max(1, len(dump.seqs))
    n = last - first
    return {
        "seconds": round((end_ns - start_ns) / 1e9, 2), "sent": n, "received": len(seen),
        "lost": n - len(seen), "readings_per_s": round(rps), "msgs_per_reading": per_reading,
        "mqtt_msgs_per_s": round(rps * per_reading),
        "ratio_msgs_to_q1_ceiling": round(rps * per_reading / ceiling_q1, 3),
        "ratio_readings_to_q1_ceiling": round(rps / ceiling_q1, 3),
        "p99_ms_under_load": round(pct(lat, 99), 1),
        "cpu_s_per_1k_readings": {k: round((cpu1.get(k, 0) - v) / max(1, n) * 1000, 4)
                                  for k, v in cpu0.items()},
    }


def _latency(sub: Subscriber, feeder: Feeder, mode: Mode) -> dict[str, Any]:
    sub.reset()
    first = feeder.sent
    start_ns, end_ns = feeder.paced(mode.latency_rate, mode.latency_s)
    last = feeder.sent
    sub.wait_recorded(last - first, timeout=30, idle=5.0)
    dump = sub.dump()
    lat, seen = _run_window(dump, feeder.sent_ns, first, last)
    return {"rate_per_s": round((last - first) / ((end_ns - start_ns) / 1e9)),
            "sent": last - first, "lost": last - first - len(seen),
            "p50_ms": round(pct(lat, 50), 2), "p95_ms": round(pct(lat, 95), 2),
            "p99_ms": round(pct(lat, 99), 2), "max_ms": round(max(lat, default=float("nan")), 2)}
