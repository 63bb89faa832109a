"""``python -m bench.outbox [--rate R] [--outage S] [--devices N] [--restart-bridge]
[--pad BYTES] [--outbox-max-mb MB]``: the durable change log.

1. What an append costs: the aggregator's durable log (``outbox.db``) against the readings
   history's insert, 1,000-change batches, per change (why the log is a sibling table).
2. A broker outage under load, on the real instance under the real supervisord: a handler's
   pusher sends ``--rate`` readings/s while the broker is stopped for ``--outage`` seconds, then
   started again. A subscriber with a persistent session (the broker keeps it across its
   restart) counts every reading by its number and each device's ``seq``: lost must be 0. The
   backlog's drain rate is the MQTT messages that arrived after the restart divided by the time
   from the first to the last of them.
3. ``--restart-bridge``: the same, but the bridge is stopped (``supervisorctl stop
   mqtt-bridge``) for the outage while the broker runs on, and started again after it: the
   backlog is what the durable log holds beyond the bridge's committed cursor, and the drain is
   a restarted bridge's replay. ``--pad`` adds a string of that many bytes to each reading;
   ``--outbox-max-mb`` bounds the log, so a large backlog is thinned before the bridge is back
   (then only the newest reading of each device must arrive, and ``lost`` counts what is
   missing beyond what was thinned).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import requests
from paho.mqtt.enums import CallbackAPIVersion

from services.state_aggregator.history.store import HistoryStore, Rows
from services.state_aggregator.outbox.store import OutboxStore
from shared.internal import HEADER
from shared.models import ReadingObs, StateChange, to_json
from shared.pusher import Pusher
from shared.rest import RestClient

from .broker import free_port, port_open, wait_until
from .hub import ROOT, Hub, instance_doc
from .procs import mosquitto_binary


def append_cost(n: int = 50_000, batch: int = 1000) -> dict[str, float]:
    """Microseconds per change: the durable log's append against the history's insert."""
    work = Path(tempfile.mkdtemp(prefix="sensor-hub-outbox-"))
    log, history, rows = OutboxStore(work / "outbox.db"), HistoryStore(work / "h.db"), Rows("UTC")
    t0 = time.time()
    changes = [StateChange(seq=i + 1, device_seq=i // 10 + 1, device_id=f"d{i % 10}", ts=t0 + i,
                           values={"temperature": 20.5, "n": i}, sampled=["n"]) for i in range(n)]
    # The change log makes each change's JSON anyway (it keeps it in memory): only the append
    # is the log's own cost.
    pairs = [(c, bytes(memoryview(to_json(c)))) for c in changes]
    start = time.perf_counter()
    for i in range(0, n, batch):
        log.append(pairs[i:i + batch], batch=(f"b{i}", batch, 0))
    log_us = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for i in range(0, n, batch):
        history.add([rows.row(c.device_id, c.ts, c.values) for c in changes[i:i + batch]])
    history_us = (time.perf_counter() - start) / n * 1e6
    return {"outbox_append_us": round(log_us, 1), "history_insert_us": round(history_us, 1)}


class Mosquitto:
    """A broker that keeps persistent sessions across its own restart."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        (work / "mq").mkdir()
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf = work / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                             f"set_tcp_nodelay true\npersistence true\npersistence_location "
                             f"{work / 'mq'}/\nmax_queued_messages 0\n{user}")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: port_open(self.port), timeout=10, what="mosquitto to listen")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class Counter:
    def __init__(self, port: int, base: str) -> None:
        self.lock = threading.Lock()
        self.numbers: dict[str, set[int]] = defaultdict(set)
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self.arrivals: list[float] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}",
                                  clean_session=False, protocol=paho.MQTTv311)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_a: c.subscribe(f"{base}/devices/#", 1)
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        now = time.monotonic()
        with self.lock:
            self.arrivals.append(now)
            if msg.topic.endswith("/state") and msg.payload and not msg.retain:
                body = orjson.loads(msg.payload)
                self.seqs[body["device_id"]].append(body["seq"])
                if "n" in body:
                    self.numbers[body["device_id"]].add(body["n"])

    def settled(self, start: int, quiet: float = 1.0) -> list[float]:
        """The arrival times from the ``start``-th on, once none came for ``quiet`` seconds
        (a page's property topics leave after its states)."""
        while True:
            with self.lock:
                last = self.arrivals[-1] if self.arrivals else 0.0
            if time.monotonic() - last >= quiet:
                with self.lock:
                    return self.arrivals[start:]
            time.sleep(quiet / 4)


def push(pusher: Pusher, emitted: dict[str, int], rate: float, seconds: float,
         extra: dict[str, Any]) -> None:
    """``rate`` readings/s for ``seconds``, the devices in turn, each reading numbered ``n``
    per device (counted in ``emitted``); returns once the pusher has delivered them."""
    names = list(emitted)
    start = time.monotonic()
    i = 0
    while (now := time.monotonic()) < start + seconds:
        name = names[i % len(names)]
        pusher.emit(ReadingObs(device_id=name, ts=time.time(),
                               values={"n": emitted[name], **extra}))
        emitted[name] += 1
        i += 1
        ahead = start + i / rate - now
        if ahead > 0:
            time.sleep(ahead)
    wait_until(lambda: pusher.stats()["queued"] == 0, timeout=120, what="the pusher")


def peak_rss_mb(pids: list[int]) -> float | None:
    """The largest resident size the process has had (``VmHWM``), in MB."""
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def supervisorctl(hub: Hub, *args: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "supervisorctl"), "-c",
                    str(ROOT / "supervisord.conf"), *args], env=hub.env(), check=True,
                   capture_output=True, timeout=60)


def outage(rate: float, seconds: float, devices: int, *, restart_bridge: bool = False,
           pad: int = 0, outbox_max_mb: float | None = None) -> dict[str, Any]:
    """The broker (or, with ``restart_bridge``, the bridge) away for ``seconds`` while
    ``rate`` readings/s come in, then back: what arrived, and how fast the backlog drained."""
    work = Path(tempfile.mkdtemp(prefix="sensor-hub-outage-"))
    broker = Mosquitto(work)
    env = {"OUTBOX_MAX_MB": f"{outbox_max_mb:g}"} if outbox_max_mb is not None else {}
    hub = Hub(instance_doc([]), broker.port, env_extra=env)
    hub.start()
    try:
        hub.wait_healthy()
        names = [f"bench_{i}" for i in range(devices)]
        for name in names:
            requests.post(f"{hub.url('aggregator')}/devices/register", timeout=5,
                          json={"device_id": name, "source": "probe", "interval": 60},
                          headers={HEADER: hub.secret}).raise_for_status()
        counter = Counter(broker.port, hub.base)
        pusher = Pusher(RestClient(hub.url("aggregator"), name="state-aggregator",
                                   secret=hub.secret), source="http-poller")
        pusher.start()
        emitted = dict.fromkeys(names, 0)
        extra = {"pad": "x" * pad} if pad else {}
        if restart_bridge:
            supervisorctl(hub, "stop", "mqtt-bridge")
        else:
            broker.stop()
        push(pusher, emitted, rate, seconds, extra)
        if outbox_max_mb is not None:  # the log's upkeep thins what is over the bound
            time.sleep(3 * 2.0)  # OUTBOX_CHECK_INTERVAL's default, three rounds
        health = hub.get("aggregator", "/health")["outbox"]
        with counter.lock:
            before = len(counter.arrivals)
        restarted = time.monotonic()
        if restart_bridge:
            supervisorctl(hub, "start", "mqtt-bridge")
        else:
            broker.start()
        load = os.getloadavg()[0]
        thinned = int(health.get("thinned") or 0)

        def arrived() -> bool:
            with counter.lock:
                if thinned:  # the newest of each device is never thinned
                    return all(emitted[n] - 1 in counter.numbers[n] for n in names)
                return all(counter.numbers[n] >= set(range(emitted[n])) for n in names)

        wait_until(arrived, timeout=600, what="every reading on MQTT", interval=0.2)
        after = counter.settled(before)
        bridge_peak = peak_rss_mb(hub.pids().get("mqtt-bridge", []))
        got = sum(len(counter.numbers[n] & set(range(emitted[n]))) for n in names)
        # Thinned states are thinned on disk; the aggregator's memory may still serve them.
        missing = sum(emitted.values()) - got
        lost = max(0, missing - thinned)
        gaps = sum(1 for n in names for a, b in zip(counter.seqs[n], counter.seqs[n][1:],
                                                   strict=False) if b > a + 1)
        span = after[-1] - after[0] if len(after) > 1 else 0.0
        return {"away": "mqtt-bridge" if restart_bridge else "broker",
                "readings": sum(emitted.values()), "rate": rate, "outage_s": seconds,
                "pad_bytes": pad, "pending_before_restart": health["pending"],
                "thinned": thinned, "readings_received": got, "lost": lost, "seq_gaps": gaps,
                "msgs_after_restart": len(after),
                "drain_msgs_per_s": round(len(after) / span) if span > 0 else None,
                "restart_to_last_s": round(after[-1] - restarted, 2),
                "bridge_peak_rss_mb": bridge_peak, "load_avg_1m": round(load, 1)}
    finally:
        hub.stop(graceful=False)
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--outage", type=float, default=60.0)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--restart-bridge", action="store_true",
                        help="stop the bridge instead of the broker for the outage")
    parser.add_argument("--pad", type=int, default=0, help="bytes of padding per reading")
    parser.add_argument("--outbox-max-mb", type=float, default=None)
    parser.add_argument("--no-append-cost", action="store_true")
    args = parser.parse_args()
    if not args.no_append_cost:
        print("append cost:", append_cost())
    print("outage:", outage(args.rate, args.outage, args.devices,
                            restart_bridge=args.restart_bridge, pad=args.pad,
                            outbox_max_mb=args.outbox_max_mb))


if __name__ == "__main__":
    main()
