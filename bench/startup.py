"""Start-up and idle memory on the demo instance (instances/demo.json, its motion sensor pointed
at a demo_sensors process of the harness's own): from starting supervisord to the retained
``online`` plus a first state for every demo device; then RSS/PSS of every process at rest."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from typing import Any

from .broker import Broker, free_port, port_open, wait_until
from .hub import ROOT, Hub
from .modes import Mode
from .mqttload import Watcher
from .procs import memory_of
from .stats import median

log = logging.getLogger(__name__)
SETTLE_S = 3.0  # after start-up, before idle memory is read


def demo_instance(sensors_port: int) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((ROOT / "instances" / "demo.json").read_text())
    doc.pop("$schema", None)
    for sensor in doc["config"]["sensors"]:
        src = sensor["source"]
        if src["type"] == "http":
            # the file may name the port literally or as ${DEMO_SENSORS_PORT:-5010}
            src["url"] = src["url"].replace("127.0.0.1:5010", f"127.0.0.1:{sensors_port}")
    doc["_sensors_port"] = sensors_port
    return doc


def run(broker: Broker, mode: Mode) -> dict[str, Any]:
    sensors_port = free_port()
    demo = subprocess.Popen([sys.executable, "-m", "services.demo_sensors", "--port",
                             str(sensors_port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    runs = []
    try:
        wait_until(lambda: port_open(sensors_port), timeout=20, what="demo_sensors")
        doc = demo_instance(sensors_port)
        devices = [s["sensor_id"] for s in doc["config"]["sensors"]]
        for i in range(mode.startup_runs):
            # the graceful stop takes several seconds: it is timed once, the other runs kill
            runs.append(_one(broker, doc, devices, graceful_stop=i == 0))
    finally:
        demo.terminate()
        demo.wait(5)
    procs = runs[0]["idle_memory"].keys()
    return {
        "devices": devices, "runs": runs,
        "startup_s": median([r["startup_s"] for r in runs]),
        "online_s": median([r["online_s"] for r in runs]),
        "stop_s": runs[0]["stop_s"],
        "idle_memory": {p: {k: round(median([r["idle_memory"][p][k] for r in runs]), 1)
                            for k in ("rss_mb", "pss_mb")} for p in procs},
        # per program: the median PSS of its master and of its worker (gunicorn programs)
        "idle_split": {p: [round(median([r["idle_split"][p][i] for r in runs
                                         if len(r["idle_split"].get(p, [])) > i]), 1)
                           for i in range(len(runs[0]["idle_split"].get(p, [])))]
                       for p in procs if p != "total"},
        "mosquitto_memory": memory_of([broker.pid]),
    }


def _one(broker: Broker, doc: dict[str, Any], devices: list[str], *,
         graceful_stop: bool) -> dict[str, Any]:
    port = doc["_sensors_port"]
    hub = Hub({k: v for k, v in doc.items() if k != "_sensors_port"}, broker.port,
              name=doc["instance_id"], env_extra={"DEMO_SENSORS_PORT": str(port),
                                                  "DEMO_SENSORS_HOST": "127.0.0.1"})
    status = f"{hub.base}/status"
    states = [f"{hub.base}/devices/{d}/state" for d in devices]
    watcher = Watcher(broker.host, broker.port, [status, f"{hub.base}/devices/+/state"])
    try:
        t0 = time.time_ns()
        hub.start()
        try:
            wait_until(lambda: hub._alive() and watcher.seen(status, b"online")
                       and all(watcher.seen(t) for t in states), timeout=60,
                       what="online and a first state of every demo device")
        except TimeoutError:
            log.warning("start-up incomplete after 60 s: %s", hub.log_tail())
        online = watcher.seen(status, b"online")
        firsts = [watcher.seen(t) for t in states]
        done = [t for t in [online, *firsts] if t is not None]
        complete = online is not None and all(firsts)
        startup = (max(done) - t0) / 1e9 if complete else float("nan")
        time.sleep(SETTLE_S)
        memory, split = hub.memory(), hub.memory_split()
        s0 = time.monotonic()
        hub.stop(graceful=graceful_stop)
        stop_s = time.monotonic() - s0 if graceful_stop else None
    finally:
        watcher.close()
        hub.stop()
    return {"startup_s": round(startup, 3), "complete": complete,
            "online_s": round((online - t0) / 1e9, 3) if online else float("nan"),
            "first_state_s": {d: round((t - t0) / 1e9, 3) if t else None
                              for d, t in zip(devices, firsts, strict=True)},
            "idle_memory": memory, "idle_split": split,
            "stop_s": None if stop_s is None else round(stop_s, 2)}
