"""Bench: N virtual probes reporting every few seconds into one real hub (supervisord, its own
mosquitto), through master control. Measures reading → MQTT latency (the state's timestamp is the
probe's sample time, the subscriber notes when it arrives), lost readings, and the hub's CPU and
memory (PSS of supervisord and its programs).

    .venv/bin/python -m tests.firmware.bench_probes --probes 200 --interval 5 --seconds 60
"""

from __future__ import annotations

import argparse
import calendar
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from firmware.host import VirtualProbe
from firmware.timefmt import iso_utc
from tests.firmware.masterhub import MasterHub
from tests.helpers import start_broker, wait_for


def tree(pid: int) -> list[int]:
    out = [pid]
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        out += tree(int(child))
    return out


def pss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total / 1024


def cpu_s(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fwbench-"))
    broker = start_broker(tmp)
    # Every virtual probe posts from 127.0.0.1: one client to the hub's per-client budget.
    hub = MasterHub(broker, tmp, extra_env={"RATE_LIMIT_INGEST": "1000000/minute"})
    hub.call("POST", "/configs", {"config_name": "bench", "sensor_type": "bench", "priority": 1,
                                  "config_data": {"check_in_interval": 30,
                                                  "polling_interval": args.interval}})
    arrivals: list[tuple[float, str, str, int]] = []
    lock = threading.Lock()

    def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        now = time.time()
        doc = orjson.loads(msg.payload)
        with lock:
            arrivals.append((now, doc["device_id"], doc["timestamp"], doc.get("sample", 0)))

    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}")
    sub.on_message = on_message
    sub.connect(broker.host, broker.port)
    sub.subscribe(f"{hub.root}/devices/+/state", qos=1)
    sub.loop_start()
    probes = [VirtualProbe(f"bench-{i}", tmp / "probes", bind="127.0.0.1", masters=[hub.secondary_url],
                           sensor_type="bench", interval_ms=int(args.interval * 1000),
                           master_options={"default_check_in_s": 30,
                                           "hub_token": hub.instance.hub_token}).start()
              for i in range(args.probes)]
    wait_for(lambda: all(p.probe and p.probe.master and p.probe.master.registered for p in probes),
             timeout=300, interval=0.5, what="every probe registered")
    time.sleep(2 * args.interval)  # warm-up: every probe on its configured interval
    pids = tree(hub.instance.proc.pid)
    cpu0, t0 = cpu_s(pids), time.time()
    start_iso = iso_utc(t0)
    time.sleep(args.seconds)
    cpu1, t1 = cpu_s(pids), time.time()
    end_iso = iso_utc(t1)
    pss = pss_mb(tree(hub.instance.proc.pid))
    for p in probes:
        p.stop()
    time.sleep(3)
    sub.loop_stop()
    with lock:
        window = [a for a in arrivals if start_iso <= a[2] < end_iso]
    lat = sorted(a[0] - calendar.timegm(time.strptime(a[2][:19], "%Y-%m-%dT%H:%M:%S"))
                 - float("0" + a[2][19:-1]) for a in window)
    expected = args.probes * args.seconds / args.interval
    within = sum(1 for x in lat if x < 1.0) / len(lat) if lat else 0.0
    print(f"probes={args.probes} interval={args.interval}s window={args.seconds}s "
          f"load={os.getloadavg()[0]:.1f}")
    print(f"states in window: {len(window)} (expected about {expected:.0f})")
    if lat:
        print(f"latency p50={lat[len(lat) // 2] * 1000:.0f} ms p99={lat[int(len(lat) * 0.99)] * 1000:.0f} ms "
              f"within 1 s: {within * 100:.2f} %")
    print(f"hub CPU: {(cpu1 - cpu0) / (t1 - t0) * 100:.1f} % of one core; PSS {pss:.0f} MB")
    hub.stop()
    broker.stop()


if __name__ == "__main__":
    main()
