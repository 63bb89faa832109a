"""``POST /api/ingest`` with a ``batch``: what a probe buffered during an outage, in one request,
each reading with its own time; through the Flask test client against the real internal side
(aggregator and poller apps on real sockets, see support.py)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from shared.models import StateChange
from shared.timeutil import iso, parse_iso
from tests.helpers import wait_for
from tests.services.web.support import Hub, start_hub

TOKEN = "batch-token"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = start_hub(tmp_path, token=TOKEN)
    yield h
    h.stop()


@pytest.fixture
def client(hub: Hub) -> FlaskClient:
    return hub.app.test_client()


def post(client: FlaskClient, body: dict[str, Any]) -> Any:
    return client.post("/api/ingest", json=body, headers={"X-Token": TOKEN})


def states(hub: Hub, device_id: str) -> list[StateChange]:
    return [c for c in hub.agg.changes.since(0)[2]
            if isinstance(c, StateChange) and c.device_id == device_id]


def test_a_batch_becomes_states_in_time_order_and_a_replay_changes_nothing(
        hub: Hub, client: FlaskClient) -> None:
    now = hub.agg.clock()
    # out of order on purpose, one as ISO 8601 and one without a time (stamped on arrival)
    batch = [{"timestamp": now - 30, "temperature_c": 20.0, "rssi": -60},
             {"timestamp": iso(now - 50), "temperature_c": 19.0, "fw": "1.2"},
             {"timestamp": now - 40, "temperature_c": 19.5},
             {"temperature_c": 21.0}]
    answer = post(client, {"probe_id": "probe_b", "batch": batch})
    assert answer.status_code == 200, answer.text
    assert answer.get_json() == {"ok": True, "probe_id": "probe_b", "accepted": 4, "csv": True,
                                 "stored": ["rssi", "temperature_c"], "ignored": ["fw"]}
    wait_for(lambda: len(states(hub, "probe_b")) == 4, what="four states")
    got = states(hub, "probe_b")
    assert [s.values["temperature_c"] for s in got] == [19.0, 19.5, 20.0, 21.0]
    assert [round(s.ts - now) for s in got[:3]] == [-50, -40, -30]
    rows = list(csv.reader(hub.csv.open()))[1:]
    assert [r[2] for r in rows] == ["19.0", "19.5", "20.0", "21.0"]
    assert round(parse_iso(rows[0][0]) - now) == -50  # the CSV has the time of sampling
    # the answer was lost and the probe sends the same slice again: no state goes back
    timed = batch[:3]
    assert post(client, {"probe_id": "probe_b", "batch": timed}).status_code == 200
    wait_for(lambda: hub.agg.counters["stale"] >= 3, what="the replay judged stale")
    assert len(states(hub, "probe_b")) == 4
    assert hub.agg.device("probe_b").values["temperature_c"] == 21.0


@pytest.mark.parametrize(("batch", "words"), [
    ([], "a list of 1 to 500"),
    ({"temperature_c": 1}, "a list of 1 to 500"),
    ([{"temperature_c": 1}] * 501, "a list of 1 to 500"),
    ([{"temperature_c": 1}, "x"], "batch.1 must be a JSON object"),
    ([{"temperature_c": 1}, {"rssi": -5}], "batch.1: temperature_c is required"),
    ([{"temperature_c": 1, "timestamp": "yesterday"}], "batch.0.timestamp: 'yesterday' is not"),
    ([{"temperature_c": 1, "timestamp": 123456}], "before 2020"),
    ([{"temperature_c": 1, "timestamp": True}], "ISO 8601 or epoch seconds"),
    ([{"temperature_c": 1, "timestamp": 4_000_000_000}], "is in the future"),
    # found by the REST fuzzer: the future's message rendered 1e300 and answered 500
    ([{"temperature_c": 1, "timestamp": 1e300}], "not a time between 1970 and 9999"),
    ([{"temperature_c": 1, "timestamp": -1.7976931348623157e308}], "not a time between 1970"),
])
def test_a_bad_batch_is_refused_whole_with_the_reading_named(hub: Hub, client: FlaskClient,
                                                             batch: Any, words: str) -> None:
    answer = post(client, {"probe_id": "probe_c", "batch": batch})
    assert answer.status_code == 422, answer.text
    body = answer.get_json()
    assert body["ok"] is False and words in body["message"], body
    assert not states(hub, "probe_c") and not hub.csv.exists()


def test_the_probe_api_takes_what_the_aggregator_takes_and_no_more(hub: Hub,
                                                                     client: FlaskClient) -> None:
    """Every observation's time is limited (``shared.models.ObsTime``: 2000 to 300 s ahead): a
    probe's reading this program accepts must be one the aggregator's ``/ingest`` takes too, or
    it would be answered 200 here and never become a state."""
    now = hub.agg.clock()
    ahead = post(client, {"probe_id": "probe_f", "batch": [
        {"timestamp": now + 250, "temperature_c": 5.0}]})
    assert ahead.status_code == 200, ahead.text
    wait_for(lambda: states(hub, "probe_f"), what="the reading 250 s ahead as a state")
    assert round(states(hub, "probe_f")[0].ts - now) == 250
    beyond = post(client, {"probe_id": "probe_f", "batch": [
        {"timestamp": now + 400, "temperature_c": 6.0}]})
    assert beyond.status_code == 422, beyond.text
    message = beyond.get_json()["message"]
    assert message.startswith("batch.0.timestamp: "), message
    assert "is in the future: more than 300 s ahead of the hub's clock" in message
    assert [s.values["temperature_c"] for s in states(hub, "probe_f")] == [5.0]


def test_a_batch_needs_the_token(client: FlaskClient) -> None:
    answer = client.post("/api/ingest", json={"probe_id": "p", "batch": [{"temperature_c": 1}]})
    assert answer.status_code == 401
