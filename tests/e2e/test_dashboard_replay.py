"""The dashboard's live feed resumes from the durable log: the demo instance under the real
supervisord with a small in-memory change log (``CHANGELOG_MAX=1000``). A browser's SSE stream
(its ``Last-Event-ID`` is its cursor in the log) reconnects after the aggregator's memory let
its position go and after the ``web`` program restarted (so the feed's own ring is empty): the
first message brings every device that changed meanwhile, with its newest values and the events
of the gap, from the log, not a reset. A position older than the log keeps (``OUTBOX_REPLAY``)
gets the documented bounded answer: a ``reset`` event, and the page reloads its snapshot."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from shared.models import EventObs, IngestBatch, ReadingObs, to_json
from tests.e2e.conftest import Instance, demo_instance
from tests.helpers import Broker, internal_headers, wait_for

pytestmark = pytest.mark.e2e
REPLAY = 3000


def events(inst: Instance, last_event_id: str | None = None) -> Iterator[tuple[str, str, Any]]:
    """The SSE stream of the devices page as ``(event, id, data)``, comments skipped."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with requests.get(f"http://127.0.0.1:{inst.env['PORT']}/ui/events", headers=headers,
                      stream=True, timeout=(5, 30)) as resp:
        resp.raise_for_status()
        fields: dict[str, str] = {}
        for raw in resp.iter_lines():
            line = raw.decode()
            if not line:
                if "event" in fields:
                    yield fields["event"], fields.get("id", ""), orjson.loads(fields["data"])
                fields = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                fields[key] = value


def first_event(inst: Instance, last_event_id: str | None = None) -> tuple[str, str, Any] | None:
    """The stream's first message; ``None`` while the web program does not answer."""
    try:
        return next(events(inst, last_event_id))
    except requests.ConnectionError:
        return None


class Aggregator:
    def __init__(self, inst: Instance) -> None:
        self.url = f"http://127.0.0.1:{inst.env['STATE_AGGREGATOR_PORT']}"
        self.headers = internal_headers(inst.env)
        self.batch = 0

    def get(self, path: str) -> Any:
        resp = requests.get(f"{self.url}{path}", timeout=5, headers=self.headers)
        resp.raise_for_status()
        return resp.json()

    def push(self, device: str, values: list[dict[str, Any]]) -> None:
        """Readings through the handlers' own ingest route, in batches of 1,000."""
        t0 = time.time()
        for start in range(0, len(values), 1000):
            self.batch += 1
            items = [ReadingObs(device_id=device, ts=t0 + (start + i) * 1e-4, values=v)
                     for i, v in enumerate(values[start : start + 1000])]
            body = to_json(IngestBatch(source="http-poller", items=items,
                                       batch_id=f"replay-test-{self.batch}"))
            requests.post(f"{self.url}/ingest", data=body, timeout=30, headers={
                **self.headers, "Content-Type": "application/json"}).raise_for_status()

    def event(self, device: str, event: str) -> None:
        self.batch += 1
        body = to_json(IngestBatch(source="http-poller", batch_id=f"replay-test-{self.batch}",
                                   items=[EventObs(device_id=device, ts=time.time(), event=event)]))
        requests.post(f"{self.url}/ingest", data=body, timeout=30, headers={
            **self.headers, "Content-Type": "application/json"}).raise_for_status()

    def head(self) -> int:
        return int(self.get("/cursors/mqtt-bridge")["head"])

    def memory_first(self) -> int:
        """The oldest seq the in-memory change log still holds."""
        stats = self.get("/health")["changelog"]
        return self.head() - int(stats["changes"]) + 1


def test_a_reconnecting_browser_gets_what_changed_from_the_durable_log(
        mosquitto: Broker, tmp_path: Path) -> None:
    with demo_instance(mosquitto, tmp_path, CHANGELOG_MAX="1000", OUTBOX_REPLAY=str(REPLAY),
                       OUTBOX_CHECK_INTERVAL="0.2") as inst:
        agg = Aggregator(inst)
        for device in ("replay_a", "replay_b"):
            requests.post(f"{agg.url}/devices/register", json={
                "device_id": device, "source": "probe", "interval": 60}, timeout=5,
                headers=agg.headers).raise_for_status()
        # A browser sees a first update, then goes away with that position.
        kind, position, _ = wait_for(lambda: first_event(inst), timeout=60,
                                     what="a first live update")
        assert kind == "devices" and ":" in position
        epoch, seq = position.split(":")[0], int(position.split(":")[1])
        # Meanwhile replay_a changes once and replay_b 1,500 times: the aggregator's memory
        # (1,000 changes) lets the browser's position go.
        agg.push("replay_a", [{"n": 7}])
        agg.event("replay_a", "door_opened")
        agg.push("replay_b", [{"n": i} for i in range(1500)])
        assert agg.memory_first() > seq + 1
        # The web program restarts: its feed starts from a snapshot, its ring is empty.
        inst.supervisorctl("restart", "web")
        kind, new_position, data = wait_for(lambda: first_event(inst, position), timeout=60,
                                            what="the stream to answer after the restart")
        assert kind == "devices", (kind, data)  # not a reset: replayed from the log
        rows = {row["device_id"]: row for row in data["devices"]}
        assert rows["replay_a"]["values"] == {"n": 7}
        assert rows["replay_b"]["values"] == {"n": 1499}  # the newest, not every reading
        # The event the restarted feed never followed is in the device's recent list.
        assert [e.get("event") for e in rows["replay_a"]["recent"]] == ["door_opened"]
        assert new_position.split(":")[0] == epoch and int(new_position.split(":")[1]) > seq
        # Past what the log keeps for replay: a reset, and the page reloads its snapshot.
        agg.push("replay_b", [{"n": i} for i in range(REPLAY + 500)])
        wait_for(lambda: agg.get("/health")["outbox"]["replay_from"] > seq, timeout=60,
                 what="the log to release the browser's old position")
        kind, _, _ = wait_for(lambda: first_event(inst, position), timeout=30, what="an answer")
        assert kind == "reset"
        # A position still kept is replayed, again from the log.
        # (2,000 back: older than memory holds, with room before the window's edge moves to it.)
        recent = agg.head() - 2000
        assert recent > int(agg.get("/health")["outbox"]["replay_from"])
        agg.push("replay_a", [{"n": 8}])
        assert agg.memory_first() > recent + 1  # the disk's, not memory's
        kind, _, data = wait_for(lambda: first_event(inst, f"{epoch}:{recent}"), timeout=30,
                                 what="an answer")
        assert kind == "devices", (kind, data)
        rows = {row["device_id"]: row for row in data["devices"]}
        assert rows["replay_a"]["values"] == {"n": 8}
