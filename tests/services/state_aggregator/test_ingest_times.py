"""The aggregator's internal ``POST /ingest`` over a real socket, as the handlers call it: an
observation's time must lie between 2000-01-01 and 300 s ahead of the hub's clock
(``shared.models.ObsTime``). A batch with one outside is refused whole, 422 with the item, the
field and the reason, and nothing of it is applied; the aggregator goes on taking good batches."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from services.state_aggregator.app import create_app
from services.state_aggregator.core import Aggregator
from shared.internal import HEADER
from shared.models import StateChange
from tests.helpers import free_port
from tests.services.state_aggregator.test_aggregator import INSTANCE

SECRET = "ingest-times-secret"


@dataclass
class Served:
    agg: Aggregator
    url: str

    def ingest(self, items: list[dict[str, Any]]) -> requests.Response:
        return requests.post(f"{self.url}/ingest", json={"source": "serial-handler", "items": items},
                             headers={HEADER: SECRET}, timeout=10)

    def states(self) -> list[StateChange]:
        return [c for c in self.agg.changes.since(0)[2] if isinstance(c, StateChange)]


@pytest.fixture
def served() -> Iterator[Served]:
    agg = Aggregator(INSTANCE, handlers={}, cache_ttl=10, poll_interval=5)  # the real clock
    server = make_server("127.0.0.1", free_port(), create_app(agg, secret=SECRET), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Served(agg, f"http://127.0.0.1:{server.server_port}")
    server.shutdown()


def reading(ts: float, t: float = 20.0) -> dict[str, Any]:
    return {"kind": "reading", "device_id": "temp", "ts": ts, "values": {"t": t}}


@pytest.mark.parametrize(("bad", "words"), [
    (reading(946_684_799.0), "items.1.reading.ts: Value error, 1999-12-31T23:59:59.000Z is "
                             "before 2000-01-01: an uptime counter or a clock not set yet"),
    (reading(0.0), "items.1.reading.ts: Value error, 1970-01-01T00:00:00.000Z is before 2000"),
    (reading(time.time() + 3600), "is in the future: more than 300 s ahead of the hub's clock"),
    (reading(1e300), "items.1.reading.ts: Value error, 1e+300 is not a time between 1970 and 9999"),
    ({"kind": "event", "device_id": "temp", "ts": time.time() + 3600, "event": "e"},
     "items.1.event.ts: Value error, "),
    ({"kind": "event", "device_id": "temp", "ts": time.time() + 3600, "event": "e"},
     "is in the future: more than 300 s ahead"),
])
def test_a_time_out_of_range_is_refused_whole_naming_the_field(served: Served,
                                                               bad: dict[str, Any],
                                                               words: str) -> None:
    answer = served.ingest([reading(time.time(), 19.0), bad])
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_body"
    assert words in answer.json()["message"], answer.json()
    assert served.states() == []  # the good reading in the batch is not applied either
    # and the next good batch is taken
    assert served.ingest([reading(time.time(), 21.0)]).json()["accepted"] == 1
    assert [s.values["t"] for s in served.states()] == [21.0]


def test_a_time_within_the_skew_is_taken(served: Served) -> None:
    now = time.time()
    answer = served.ingest([reading(946_684_800.0, 1.0), reading(now + 200, 2.0)])
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 2
    assert served.agg.device("temp").values["t"] == 2.0
