"""The durable change log on a small disk, under the real instance: DATA_DIR on a tmpfs of 16 MB
(root only), the bridge stopped so nothing is published while a handler's pusher sends
readings with a large payload. Past ``OUTBOX_MAX_MB`` the unpublished intermediate states are
thinned; the instance keeps running and accepting; once the bridge is back every device's
newest state and every event reach MQTT, and ``meta/health`` counts what was thinned. The
restarted bridge replays the whole backlog from its committed cursor, a page at a time, at the
pace of the live drain (its rate is measured by ``python -m bench.outbox --restart-bridge``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from shared.internal import HEADER
from shared.models import EventObs, ReadingObs
from shared.pusher import Pusher
from shared.rest import RestClient
from tests.e2e.conftest import Instance, demo_instance
from tests.helpers import Broker, Subscriber, internal_headers, tmpfs, wait_for

pytestmark = pytest.mark.e2e
DEVICES = ["thin_a", "thin_b"]
PAD = "x" * 400


@pytest.fixture
def small(mosquitto: Broker, tmp_path: Path) -> Iterator[Instance]:
    with tmpfs(tmp_path / "data", "16m"), demo_instance(
            mosquitto, tmp_path, OUTBOX_MAX_MB="2", OUTBOX_MIN_FREE_MB="1",
            OUTBOX_CHECK_INTERVAL="0.5", HISTORY_ENABLED="false") as inst:
        yield inst


def test_past_outbox_max_mb_unpublished_states_are_thinned_and_the_hub_runs_on(
        small: Instance, subscriber: Subscriber) -> None:
    url = f"http://127.0.0.1:{small.env['STATE_AGGREGATOR_PORT']}"
    headers = internal_headers(small.env)
    for device in DEVICES:
        requests.post(f"{url}/devices/register", json={
            "device_id": device, "source": "probe", "interval": 60}, timeout=5,
            headers=headers).raise_for_status()
    assert small.supervisorctl("stop", "mqtt-bridge").returncode == 0
    pusher = Pusher(RestClient(url, name="state-aggregator", secret=headers[HEADER]),
                    source="http-poller")
    pusher.start()
    t0 = time.time() - 3600
    n = 12_000  # about 5.4 MB of states: more than twice OUTBOX_MAX_MB (2)
    for i in range(n):
        device = DEVICES[i % len(DEVICES)]
        pusher.emit(ReadingObs(device_id=device, ts=t0 + i * 0.1, values={"n": i, "pad": PAD}))
        if i % 1000 == 0:
            pusher.emit(EventObs(device_id=device, ts=t0 + i * 0.1, event=f"mark{i}"))
    wait_for(lambda: pusher.stats()["queued"] == 0, timeout=120, what="the pusher to drain")
    pusher.stop()
    thinned = wait_for(lambda: (h := small.aggregator_health()["outbox"])["thinned"] > 0 and h,
                       timeout=60, what="the outbox thinned")
    assert thinned["state"] == "ok"  # thinning is what the limit asks for, not a degradation
    assert "OUTBOX_MAX_MB" in thinned.get("thinning", "") or thinned["pending"] < n
    # Live: the instance still takes readings.
    snap = requests.get(f"{url}/snapshot", timeout=30, headers=headers).json()
    held = {d["info"]["device_id"]: d["state"] for d in snap["devices"]}
    assert held["thin_a"]["values"]["n"] == n - 2 and held["thin_a"]["device_seq"] == n // 2
    # The bridge back: every device's newest state, every event, and meta/health says thinned.
    topics = {d: f"{small.root_topic}/devices/{d}/state" for d in DEVICES}
    events = f"{small.root_topic}/devices/+/events"
    subscriber.subscribe(f"{small.root_topic}/devices/+/state").subscribe(events)
    subscriber.subscribe(f"{small.root_topic}/meta/health")
    assert small.supervisorctl("start", "mqtt-bridge").returncode == 0
    for i, device in enumerate(DEVICES):
        # Only the last message is looked at, and by its bytes: scanning and parsing every
        # state of the backlog on each poll took the test's own subscriber thread's time.
        newest = f'"n":{n - len(DEVICES) + i},'.encode()

        def is_newest(topic: str = topics[device], v: bytes = newest) -> bool:
            last = subscriber.last(topic)
            return last is not None and v in last.payload

        wait_for(is_newest, timeout=120, interval=0.2, what=f"the newest state of {device}")
    marks = wait_for(lambda: (got := {m.json()["event"] for m in subscriber.messages
                                      if m.topic.endswith("/events")}) >= {
        f"mark{i}" for i in range(0, n, 1000)} and got, timeout=60, what="every event")
    assert marks
    told = subscriber.wait(f"{small.root_topic}/meta/health", timeout=60,
                           where=lambda m: m.json()["outbox"]["thinned"] > 0).json()
    assert told["outbox"]["thinned"] >= thinned["thinned"]
    assert any("outbox degraded (over_limit)" in line for line in small.output)
