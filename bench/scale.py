"""Scale: instances with 1,000 / 5,000 / 10,000 serial devices (spread over a few ptys). One
cycle = one reading for every device; measured, from the first line written: the time until the
last device's ``state`` topic is at the subscriber (``cycle_s``, the state-topic time) and the
time until the cycle's last device message of any kind is (``all_s``: states plus per-property
topics), the number of those messages, CPU seconds of each process over the cycle, and the REST
calls the bridge made (counted by a relay in front of the aggregator). One subscriber takes
``devices/#``, so both times are seen by the same client."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .broker import Broker, free_port, wait_until
from .e2e import start_serial_hub
from .feed import Feeder, Ptys
from .modes import Mode
from .mqttload import Subscriber
from .restcount import RequestCounter, delta
from .stats import median

log = logging.getLogger(__name__)
PORTS = 4
SETTLED_S = 1.0  # no device message for this long: the cycle's tail has arrived
BRIDGE_PATHS = ("GET /changes", "GET /snapshot", "GET /devices", "GET /groups", "GET /health")


def run(broker: Broker, mode: Mode, *, profile: Path | None = None) -> dict[str, Any]:
    """Every size of ``mode``; with ``profile`` (a directory), each process also writes where
    its memory goes after the cycles (``shared/memprofile.py``; tracing makes the figures of
    such a run larger and slower, so they are for reading, not for comparing)."""
    out: dict[str, Any] = {"sizes": []}
    for size in mode.scale_sizes:
        out["sizes"].append(_one_size(broker, mode, size, profile))
    out["kb_per_device"] = kb_per_device(out["sizes"])
    return out


def kb_per_device(sizes: list[dict[str, Any]]) -> dict[str, float]:
    """Each process's PSS growth per device (KB) from the smallest size to the largest, after
    their cycles: what one more device costs it."""
    if len(sizes) < 2:
        return {}
    small, big = sizes[0], sizes[-1]
    added = big["devices"] - small["devices"]
    return {name: round((m["pss_mb"] - small["memory"].get(name, {}).get("pss_mb", 0.0))
                        * 1024 / added, 2)
            for name, m in big["memory"].items()}


def _one_size(broker: Broker, mode: Mode, size: int, profile: Path | None) -> dict[str, Any]:
    ptys = Ptys(PORTS)
    relay_port, aggregator_port = free_port(), free_port()
    relay = RequestCounter(relay_port, aggregator_port)
    t0 = time.monotonic()
    hub = None
    env = {"STATE_AGGREGATOR_PORT": str(aggregator_port),
           "STATE_AGGREGATOR_URL": f"http://127.0.0.1:{relay_port}"}
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        env |= {"MEMPROFILE_DIR": str(profile / str(size))}
        (profile / str(size)).mkdir(exist_ok=True)
    try:
        hub, ports = start_serial_hub(broker, ptys, size // PORTS, env=env)
        ready_s = time.monotonic() - t0
        ready_memory = hub.memory()
        sub = Subscriber(broker.host, broker.port, [f"{hub.base}/devices/#"],
                         record_suffix="/state", qos=1)
        feeder = Feeder(ports, capacity=size * (mode.scale_cycles + 2) + 10,
                        received=lambda: sub.recorded.value)
        cycles = []
        try:
            for c in range(mode.scale_cycles + 1):  # the first one warms up and is not counted
                sub.reset()
                time.sleep(0.3)  # let the previous cycle's tail settle before measuring CPU
                cpu0, req0 = hub.cpu(), relay.counts()
                first = feeder.sent
                start_ns = feeder.cycle(20.0 + c)
                done = sub.wait_recorded(size, timeout=120, idle=15)
                _settle(sub, SETTLED_S)
                dump = sub.dump()
                cpu1, req1 = hub.cpu(), relay.counts()
                got = {s for s in dump.seqs if first <= s < first + size}
                last_ns = max((a for s, a in zip(dump.seqs, dump.arrivals, strict=True)
                               if first <= s < first + size), default=start_ns)
                reqs = delta(req1, req0)
                row = {
                    "cycle_s": round((last_ns - start_ns) / 1e9, 3),
                    "all_s": round((max(dump.last_ns, last_ns) - start_ns) / 1e9, 3),
                    "messages": dump.total,
                    "complete": done and len(got) == size, "states": len(got),
                    "cpu_s": {k: round(cpu1.get(k, 0) - v, 2) for k, v in cpu0.items()},
                    "bridge_rest_calls": sum(v for k, v in reqs.items() if k in BRIDGE_PATHS),
                    "ingest_calls": reqs.get("POST /ingest", 0), "requests": reqs,
                }
                row["cpu_s_total"] = round(sum(row["cpu_s"].values()), 2)
                if c > 0:
                    cycles.append(row)
            memory = hub.memory()
            if profile is not None:
                _profile(profile / str(size))
        finally:
            sub.close()
    finally:
        if hub is not None:
            hub.stop(graceful=False)
        relay.close()
        ptys.close()
    procs = cycles[0]["cpu_s"].keys() if cycles else []
    return {
        "devices": size, "ready_s": round(ready_s, 2), "cycles": cycles,
        "cycle_s": median([c["cycle_s"] for c in cycles]),
        "all_s": median([c["all_s"] for c in cycles]),
        "messages": median([c["messages"] for c in cycles]),
        "complete": all(c["complete"] for c in cycles),
        "cpu_s": {p: round(median([c["cpu_s"][p] for c in cycles]), 2) for p in procs},
        "cpu_s_total": median([c["cpu_s_total"] for c in cycles]),
        "bridge_rest_calls": median([c["bridge_rest_calls"] for c in cycles]),
        "ingest_calls": median([c["ingest_calls"] for c in cycles]),
        "memory": memory, "ready_memory": ready_memory,
    }


PROFILED = 5  # the five programs (a gunicorn program's worker; its master does not write)


def _profile(where: Path) -> None:
    """Ask every process for its tracemalloc top and wait until they have written it."""
    (where / "request").write_text("cycles\n")
    wait_until(lambda: len(list(where.glob("*-cycles.txt"))) >= PROFILED, timeout=900,
               what="every process's memory profile", interval=0.5)
    log.info("memory profiles in %s", where)


def _settle(sub: Subscriber, quiet_s: float, limit_s: float = 60.0) -> None:
    """Until no message has arrived for ``quiet_s`` (the per-property topics of the cycle
    follow its states), or ``limit_s``."""
    end = time.monotonic() + limit_s
    last, changed = -1, time.monotonic()
    while time.monotonic() < end:
        now_n = sub.total.value
        if now_n != last:
            last, changed = now_n, time.monotonic()
        elif time.monotonic() - changed >= quiet_s:
            return
        time.sleep(0.02)
