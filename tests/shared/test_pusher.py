"""The handler's pusher against a real HTTP server that plays an aggregator going away: a batch
that got no answer is sent again unchanged, under the same id, even when more observations came
in meanwhile; only then does the next batch (with its own id) go. Against the real aggregator: a
batch it refuses as invalid is dropped, not sent for ever ahead of the newer ones."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from flask import Flask, Response, request
from werkzeug.serving import make_server

from services.state_aggregator.app import create_app as aggregator_app
from services.state_aggregator.core import Aggregator as RealAggregator
from shared.models import ReadingObs
from shared.pusher import Pusher
from shared.rest import RestClient
from tests.helpers import free_port, wait_for
from tests.services.state_aggregator.test_aggregator import INSTANCE


class Aggregator:
    """Records every body it gets; refuses (503) while ``down`` is set."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.down = threading.Event()
        self.lock = threading.Lock()
        app = Flask("fake-aggregator")

        @app.post("/ingest")
        def ingest() -> Response:
            with self.lock:
                self.bodies.append(orjson.loads(request.get_data()))
            if self.down.is_set():
                return Response(b'{"error": "down"}', status=503, mimetype="application/json")
            return Response(b'{"accepted": 1, "rejected": 0}', mimetype="application/json")

        self.server = make_server("127.0.0.1", free_port(), app, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def aggregator() -> Iterator[Aggregator]:
    agg = Aggregator()
    yield agg
    agg.server.shutdown()


def test_an_unanswered_batch_is_resent_whole_under_its_id(aggregator: Aggregator) -> None:
    pusher = Pusher(RestClient(aggregator.url, name="state-aggregator"), source="serial-handler")
    aggregator.down.set()
    pusher.start()
    try:
        pusher.emit(ReadingObs(device_id="d", ts=1_700_000_001.0, values={"n": 1}))
        wait_for(lambda: len(aggregator.bodies) >= 1, what="the first attempt")
        # More comes in while the batch waits for an answer: it must not join the batch.
        pusher.emit(ReadingObs(device_id="d", ts=1_700_000_002.0, values={"n": 2}))
        wait_for(lambda: len(aggregator.bodies) >= 2, timeout=10, what="a second attempt")
        assert pusher.stats()["queued"] == 2  # the unanswered batch counts as held
        aggregator.down.clear()
        wait_for(lambda: pusher.stats()["queued"] == 0, timeout=10, what="both delivered")
    finally:
        pusher.stop()
    with aggregator.lock:
        bodies = list(aggregator.bodies)
    first_id = bodies[0]["batch_id"]
    attempts = [b for b in bodies if b["batch_id"] == first_id]
    assert len(attempts) >= 2 and all(b["items"] == bodies[0]["items"] for b in attempts)
    assert [i["values"]["n"] for i in bodies[0]["items"]] == [1]
    after = [b for b in bodies if b["batch_id"] != first_id]
    assert after and [i["values"]["n"] for b in after for i in b["items"]] == [2]
    assert after[0]["batch_id"] != first_id


def test_a_batch_the_aggregator_refuses_is_dropped_and_the_next_one_goes(
        caplog: pytest.LogCaptureFixture) -> None:
    # Stamped in time by the handler, out of range by the time it arrives: the host's clock
    # stepped back an hour meanwhile (built unchecked here, as it was checked when it was made).
    agg = RealAggregator(INSTANCE, handlers={}, cache_ttl=10, poll_interval=5)
    server = make_server("127.0.0.1", free_port(), aggregator_app(agg), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pusher = Pusher(RestClient(f"http://127.0.0.1:{server.server_port}", name="state-aggregator"),
                    source="serial-handler")
    pusher.start()
    try:
        pusher.emit(ReadingObs.model_construct(device_id="temp", ts=time.time() + 3600,
                                               values={"t": 1.0}))
        wait_for(lambda: pusher.stats()["refused"] == 1, what="the batch refused")
        pusher.emit(ReadingObs(device_id="temp", ts=time.time(), values={"t": 2.0}))
        wait_for(lambda: agg.device("temp").values.get("t") == 2.0, what="the next reading")
        assert pusher.stats()["queued"] == 0 and pusher.stats()["sent"] == 1
        said = [r.getMessage() for r in caplog.records if r.name == "shared.pusher"]
        assert len(said) == 1 and "refused 1 observations, dropped" in said[0], said
        assert "items.0.reading.ts" in said[0] and "is in the future" in said[0], said
    finally:
        pusher.stop()
        server.shutdown()


def test_only_the_observations_out_of_time_are_dropped_from_a_refused_batch() -> None:
    # One reading of the batch stamped an hour ahead (the clock stepped back after it was made):
    # the aggregator refuses the batch whole, the pusher drops that one and sends the rest.
    agg = RealAggregator(INSTANCE, handlers={}, cache_ttl=10, poll_interval=5)
    server = make_server("127.0.0.1", free_port(), aggregator_app(agg), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pusher = Pusher(RestClient(f"http://127.0.0.1:{server.server_port}", name="state-aggregator"),
                    source="serial-handler")
    now = time.time()
    pusher.emit(ReadingObs(device_id="temp", ts=now - 2, values={"t": 1.0}))
    pusher.emit(ReadingObs.model_construct(device_id="temp", ts=now + 3600, values={"t": 9.0}))
    pusher.emit(ReadingObs(device_id="temp", ts=now - 1, values={"t": 2.0}))
    pusher.start()  # all three in one batch
    try:
        wait_for(lambda: pusher.stats()["queued"] == 0, what="the batch answered")
        assert agg.device("temp").values.get("t") == 2.0
        assert pusher.stats() | {"failures": 0} == {
            "queued": 0, "sent": 2, "batches": 1, "dropped": 0, "refused": 1, "failures": 0}
    finally:
        pusher.stop()
        server.shutdown()
