"""A restarted bridge's backlog: what the aggregator's durable log holds beyond the bridge's
committed cursor. A real aggregator with its log on disk (and a change log in memory too small
to hold the backlog, so the pages come from the disk), served over HTTP behind a recorder of
what the bridge asks of it; a real mosquitto and a real subscriber.

The backlog is as long as the outage was: the bridge must replay it like the live log, a page
at a time through its short queue, publishing the first pages before it asks for the last (it
used to fetch the whole backlog first and hold it), in one request per page, and in order per
device. No timing: what is checked is what the bridge asked for and had published when."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
from werkzeug.serving import make_server

from connector.bridge import Bridge
from connector.features.state import QUEUE_PAGES, READER
from services.state_aggregator.app import create_app
from services.state_aggregator.core import Aggregator
from services.state_aggregator.outbox.service import Outbox
from shared.instance import parse_instance
from shared.models import LinkObs, ReadingObs, RegisterDevice
from shared.settings import Settings
from tests.helpers import Broker, Subscriber, free_port, unique_base, wait_for

INSTANCE = parse_instance({"instance_id": "rp", "friendly_name": "replay test",
                           "config": {"sensors": []}})
DEVICES = ["r1", "r2"]
QUIET = "r0"  # one reading at the start of the backlog, none after: the snapshot holds it
BACKLOG = 2_000  # readings while the bridge is away
PAGE = 100  # changes the aggregator answers in one page here: the backlog is 20 pages


@dataclass
class Recorder:
    """The aggregator's WSGI app, answering ``/changes`` in pages of ``PAGE`` (an aggregator
    may always answer fewer than asked), noting each request of a snapshot's fold (one without
    a long poll) with how many messages the bridge had published by then, and each committed
    cursor with whether the bridge's mirror was synced (the snapshot loaded)."""

    app: Callable[..., Iterable[bytes]]
    outbox: Outbox
    bridge: Bridge | None = None
    folds: list[tuple[int, int]] = field(default_factory=list)  # (since, published)
    commits: list[tuple[int, bool]] = field(default_factory=list)  # (seq, synced)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path, query = environ["PATH_INFO"], parse_qs(environ.get("QUERY_STRING", ""))
        bridge = self.bridge
        if path == "/changes":
            query["limit"] = [str(min(PAGE, int(query.get("limit", [PAGE])[0])))]
            environ["QUERY_STRING"] = urlencode(query, doseq=True)
            if bridge is not None and "wait" not in query:
                self.folds.append((int(query["since"][0]), bridge.ctx.publisher.published))
        body = list(self.app(environ, start_response))
        if bridge is not None and path == f"/cursors/{READER}" and environ["REQUEST_METHOD"] == "POST":
            seq = self.outbox.cursor(READER)
            assert seq is not None
            self.commits.append((seq, bridge.ctx.mirror.synced))
        return body


@dataclass
class Durable:
    agg: Aggregator
    recorder: Recorder
    url: str
    base: str = field(default_factory=unique_base)

    @property
    def root(self) -> str:
        return f"{self.base}/v1/instances/rp"

    def bridge(self, broker: Broker, tmp_path: Path) -> Bridge:
        settings = Settings(instance_name="rp", mqtt_host=broker.host, mqtt_port=broker.port,
                            mqtt_base_topic=self.base, state_aggregator_url=self.url,
                            hub_run_dir=tmp_path / "run", data_dir=tmp_path / "data",
                            ha_discovery_mode="off", mqtt_keepalive=5)
        bridge = Bridge(settings, INSTANCE)
        self.recorder.bridge = bridge
        bridge.start()
        return bridge


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[Durable]:
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=256 * 10**6, min_free_bytes=0)
    agg = Aggregator(INSTANCE,
                     handlers={}, cache_ttl=10, poll_interval=5, outbox=outbox,
                     changelog_capacity=300)
    for device in [QUIET, *DEVICES]:
        agg.register(RegisterDevice(device_id=device, source="probe", interval=60))
    recorder = Recorder(create_app(agg), outbox)
    server = make_server("127.0.0.1", free_port(), recorder, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Durable(agg, recorder, f"http://127.0.0.1:{server.server_port}")
    agg.stop()
    server.shutdown()


def states(sub: Subscriber, root: str, device: str) -> list[tuple[int, int]]:
    """``(seq, n)`` of each live state of ``device``, in arrival order."""
    return [(body["seq"], body["n"]) for m in sub.on(f"{root}/devices/{device}/state")
            if not m.retain and m.payload and "n" in (body := m.json())]


def test_a_restarted_bridge_replays_its_backlog_page_by_page_in_order(
        broker: Broker, durable: Durable, tmp_path: Path) -> None:
    agg, recorder = durable.agg, durable.recorder
    first = durable.bridge(broker, tmp_path)
    wait_for(lambda: first.ctx.mirror.synced and (agg.outbox is not None and (
        agg.outbox.cursor(READER) or -1) >= agg.changes.seq), what="the first bridge committed")
    first.stop()
    cursor = agg.outbox.cursor(READER) if agg.outbox is not None else None
    assert cursor is not None
    # The bridge away: a backlog of readings, stored in batches as a handler pushes them.
    agg.ingest([ReadingObs(device_id=QUIET, ts=1e9, values={"n": -1})], source="http-poller")
    for start in range(0, BACKLOG, 100):
        agg.ingest([ReadingObs(device_id=DEVICES[i % len(DEVICES)], ts=1e9 + i, values={"n": i})
                    for i in range(start, start + 100)], source="http-poller")
    held = {e.state.seq for e in agg.snapshot().devices if e.state is not None}
    backlog = agg.changes.seq - cursor
    assert backlog >= BACKLOG and agg.changes.stats()["changes"] < backlog  # disk, not memory
    sub = Subscriber(broker.host, broker.port).subscribe(f"{durable.root}/devices/+/state")
    try:
        recorder.folds.clear()
        recorder.commits.clear()
        durable.bridge(broker, tmp_path)
        per_device = BACKLOG // len(DEVICES)
        wait_for(lambda: all(len(states(sub, durable.root, d)) >= per_device for d in DEVICES)
                 and states(sub, durable.root, QUIET), timeout=60,
                 what="every reading of the backlog on MQTT")
        assert states(sub, durable.root, QUIET) == [(1, -1)]
        # In order per device, each once: the per-device seq runs 1, 2, 3 ... without a gap.
        for k, device in enumerate(DEVICES):
            got = states(sub, durable.root, device)
            assert [seq for seq, _ in got] == list(range(1, per_device + 1)), device
            assert [n for _, n in got] == list(range(k, BACKLOG, len(DEVICES))), device
    finally:
        sub.close()
    # One request per page of the backlog (the first and last pages may be short, where the
    # disk ends and memory begins), never one per change.
    folds = recorder.folds
    assert folds and folds[0][0] == cursor
    assert len(folds) <= math.ceil(backlog / PAGE) + 2, len(folds)
    # Streamed: by the time it asks for page i, the bridge has published the pages the queue
    # could not hold any more (the old fold fetched all 20 pages and published nothing).
    for i, (_since, published) in enumerate(folds):
        assert published >= (i - QUEUE_PAGES - 2) * PAGE, (i, published, folds)
    # A position committed before the snapshot is loaded never passes a state that the
    # snapshot holds and publishes (a restart in between would skip it): here, not the quiet
    # device's one reading at the start of the backlog.
    early = [seq for seq, synced in recorder.commits if not synced]
    assert all(seq < min(held) for seq in early), (early, held)


def availability(sub: Subscriber, root: str, device: str) -> list[str]:
    return [m.text for m in sub.on(f"{root}/devices/{device}/availability") if not m.retain]


def test_a_replay_says_each_availability_once(broker: Broker, durable: Durable,
                                              tmp_path: Path) -> None:
    # While the bridge is away each device reports (online), then r1 drops and comes back and r2
    # drops: the replay publishes those changes in order, and the snapshot's load that ends it
    # does not say them again (it used to publish every device's availability once more).
    agg = durable.agg
    first = durable.bridge(broker, tmp_path)
    wait_for(lambda: first.ctx.mirror.synced and (agg.outbox is not None and (
        agg.outbox.cursor(READER) or -1) >= agg.changes.seq), what="the first bridge committed")
    first.stop()
    now = time.time()
    for device in [QUIET, *DEVICES]:
        agg.ingest([ReadingObs(device_id=device, ts=now - 3, values={"n": 0})],
                   source="http-poller")
    agg.ingest([LinkObs(device_id="r1", ts=now - 2, up=False, reason="gone"),
                LinkObs(device_id="r2", ts=now - 2, up=False, reason="gone")],
               source="http-poller")
    agg.ingest([LinkObs(device_id="r1", ts=now - 1, up=True)], source="http-poller")
    # Past the replay the quiet device's state comes with the load: a marker that it is over.
    sub = Subscriber(broker.host, broker.port).subscribe(f"{durable.root}/devices/#")
    try:
        durable.bridge(broker, tmp_path)
        wait_for(lambda: states(sub, durable.root, QUIET) and availability(
            sub, durable.root, QUIET), timeout=30, what="the snapshot's load published")
        assert availability(sub, durable.root, "r1") == ["online", "offline", "online"]
        assert availability(sub, durable.root, "r2") == ["online", "offline"]
        assert availability(sub, durable.root, QUIET) == ["online"]
    finally:
        sub.close()
