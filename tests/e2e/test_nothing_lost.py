"""Nothing accepted is lost: the demo instance under the real supervisord, a real handler pusher
(``shared.pusher``) feeding readings of a few run-time probes into the aggregator, and a real
subscriber with a persistent session on a broker that keeps it across its own restart. While
readings flow, the broker is stopped and started, the bridge and the aggregator (its gunicorn
worker, then its master) are killed with SIGKILL, and the bridge is restarted during a broker
outage. Every reading the aggregator acknowledged reaches MQTT, in order per device (by the
contract's per-device ``seq``), and each device's ``seq`` runs without a gap."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion

from shared.internal import HEADER
from shared.models import ReadingObs
from shared.pusher import Pusher
from shared.rest import RestClient
from tests.e2e.conftest import Instance, demo_instance
from tests.helpers import Broker, internal_headers, start_broker, wait_for

pytestmark = pytest.mark.e2e
DEVICES = [f"lossless_{i}" for i in range(4)]
RATE = 200  # readings per second, all devices together


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker that keeps a persistent session's queued messages across its own restart, so
    the subscriber misses nothing while the broker is down (the bridge is what is tested)."""
    store = tmp_path / "mosquitto"
    store.mkdir()
    # ``user root``: as root, mosquitto would otherwise drop to its own user, which cannot
    # write the test's private directory, and the sessions would be lost unsaid.
    user = "user root\n" if os.geteuid() == 0 else ""
    broker = start_broker(tmp_path, extra=f"persistence true\npersistence_location {store}/\n"
                                          f"max_queued_messages 0\n{user}")
    yield broker
    broker.stop()
    assert (store / "mosquitto.db").exists(), "the broker kept no sessions: the test proves nothing"


@dataclass
class Counter:
    """A subscriber with a persistent session: per device, every ``seq`` and reading number
    in arrival order."""

    broker: Broker
    root: str
    seqs: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    numbers: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"counter-{os.getpid()}",
                                  clean_session=False, protocol=paho.MQTTv311)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.reconnect_delay_set(1, 1)
        self.client.connect(self.broker.host, self.broker.port)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, *_a: Any) -> None:
        if not flags.session_present:  # the broker kept the subscription otherwise
            client.subscribe(f"{self.root}/devices/+/state", 1)

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        # A retained message is the broker's copy, sent again for a (re)subscription, not a
        # delivery by the bridge: it would look like a state out of order.
        if not msg.payload or msg.retain:
            return
        body = orjson.loads(msg.payload)
        with self.lock:
            self.seqs[body["device_id"]].append(body["seq"])
            if "n" in body:
                self.numbers[body["device_id"]].add(body["n"])

    def got(self, device: str) -> set[int]:
        with self.lock:
            return set(self.numbers[device])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Feed:
    """A handler's pusher sending numbered readings at ``RATE`` until stopped."""

    def __init__(self, aggregator_url: str, secret: str) -> None:
        self.pusher = Pusher(RestClient(aggregator_url, name="state-aggregator", secret=secret),
                             source="http-poller")
        self.emitted: dict[str, int] = dict.fromkeys(DEVICES, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.pusher.start()
        self._thread.start()

    def _run(self) -> None:
        i = 0
        start = time.monotonic()
        while not self._stop.is_set():
            device = DEVICES[i % len(DEVICES)]
            n = self.emitted[device]
            self.pusher.emit(ReadingObs(device_id=device, ts=time.time(), values={"n": n}))
            self.emitted[device] = n + 1
            i += 1
            ahead = start + i / RATE - time.monotonic()
            if ahead > 0:
                self._stop.wait(ahead)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        # Everything emitted is acknowledged by the aggregator (stored) before the check.
        wait_for(lambda: self.pusher.stats()["queued"] == 0, timeout=60,
                 what="the pusher's queue to drain")
        assert self.pusher.stats()["dropped"] == 0
        self.pusher.stop()


def pid(inst: Instance, program: str) -> int:
    out = inst.supervisorctl("pid", program).stdout.strip()
    assert out.isdigit() and int(out) > 0, out
    return int(out)


def running(inst: Instance, program: str, *, other_than: int) -> bool:
    out = inst.supervisorctl("pid", program).stdout.strip()
    return out.isdigit() and int(out) not in (0, other_than)


def worker_of(master: int) -> int:
    """The gunicorn worker: the master's child (from /proc, field 4 of ``stat`` is the parent)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                return int(entry.name)
    raise AssertionError(f"gunicorn master {master} has no worker")


def aggregator_up(url: str, headers: dict[str, str]) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2, headers=headers).ok
    except requests.RequestException:
        return False


def test_nothing_accepted_is_lost_across_outages_and_kills(
        durable_broker: Broker, tmp_path: Path) -> None:
    with demo_instance(durable_broker, tmp_path) as inst:
        url = f"http://127.0.0.1:{inst.env['STATE_AGGREGATOR_PORT']}"
        headers = internal_headers(inst.env)
        for device in DEVICES:
            requests.post(f"{url}/devices/register", json={
                "device_id": device, "source": "probe", "interval": 1}, timeout=5,
                headers=headers).raise_for_status()
        counter = Counter(durable_broker, inst.root_topic)
        feed = Feed(url, headers[HEADER])
        feed.start()

        def flowing() -> None:
            """Some readings reach MQTT after the last disturbance."""
            marks = {d: len(counter.got(d)) for d in DEVICES}
            wait_for(lambda: all(len(counter.got(d)) > marks[d] + 20 for d in DEVICES),
                     timeout=90, what="readings flowing to MQTT again")

        try:
            flowing()
            # 1. The broker away for a while, readings keep coming in.
            durable_broker.stop()
            wait_for(lambda: sum(feed.emitted.values()) > RATE * 8, timeout=30,
                     what="readings accepted during the outage")
            durable_broker.restart()
            flowing()
            # 2. kill -9 of the bridge.
            bridge = pid(inst, "mqtt-bridge")
            os.kill(bridge, signal.SIGKILL)
            wait_for(lambda: running(inst, "mqtt-bridge", other_than=bridge), timeout=30,
                     what="supervisord to restart the bridge")
            flowing()
            # 3. kill -9 of the aggregator's gunicorn worker, then of its master.
            master = pid(inst, "state-aggregator")
            os.kill(worker_of(master), signal.SIGKILL)
            flowing()
            os.kill(master, signal.SIGKILL)
            wait_for(lambda: running(inst, "state-aggregator", other_than=master), timeout=30,
                     what="supervisord to restart the aggregator")
            wait_for(lambda: aggregator_up(url, headers), timeout=60, what="the aggregator to answer")
            flowing()
            # 4. The bridge restarted while the broker is away.
            durable_broker.stop()
            wait_for(lambda: sum(feed.emitted.values()) > RATE * 4, timeout=30,
                     what="readings accepted during the outage")
            inst.supervisorctl("restart", "mqtt-bridge")
            durable_broker.restart()
            flowing()
        finally:
            feed.stop()
        emitted = dict(feed.emitted)
        try:
            wait_for(lambda: all(counter.got(d) >= set(range(emitted[d])) for d in DEVICES),
                     timeout=120, what="every accepted reading on MQTT")
        except AssertionError:
            missing = {d: sorted(set(range(emitted[d])) - counter.got(d)) for d in DEVICES}
            raise AssertionError(f"emitted {emitted}; missing on MQTT: "
                                 f"{ {d: (len(m), m[:10], m[-10:]) for d, m in missing.items()} }"
                                 ) from None
        finally:
            counter.close()
        for device in DEVICES:
            seqs = counter.seqs[device]
            first_seen: list[int] = []
            for seq in seqs:  # duplicates are allowed (at least once), going back is not
                if not first_seen or seq > first_seen[-1]:
                    first_seen.append(seq)
                else:
                    assert seq in first_seen, f"{device}: seq {seq} arrived after a newer one"
            assert first_seen == list(range(first_seen[0], first_seen[-1] + 1)), (
                f"{device}: a gap in seq")
        health = requests.get(f"{url}/health", timeout=5, headers=headers).json()
        assert health["outbox"]["state"] == "ok", health["outbox"]
