"""The history behind the aggregator: readings the real ``Aggregator`` accepts reach the store
(a SQLite file, and a real PostgreSQL server: every test runs on both) through the writer
thread, and the internal routes answer through the Flask test client."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from services.state_aggregator.app import create_app
from services.state_aggregator.core import Aggregator
from services.state_aggregator.history.db import SqliteBackend
from services.state_aggregator.history.retention import Limits
from services.state_aggregator.history.service import History
from shared.instance import parse_instance
from shared.models import ReadingObs

T0 = 1_700_000_000.0
INSTANCE = parse_instance({
    "instance_id": "t", "friendly_name": "test", "update_interval": 10,
    "config": {"cache_ttl": 10, "sensors": [
        {"sensor_id": f"s{i}", "sensor_type": "climate",
         "source": {"type": "serial", "port": f"sim://p{i}?ids=s{i}"}} for i in range(3)]},
})


@pytest.fixture
def history(history_location: Path | str) -> Iterator[History]:
    hist = History(history_location, tz="UTC",
                   limits=Limits(max_bytes=None, disk_percent=100))
    hist.start()
    yield hist
    hist.stop()


@pytest.fixture
def agg() -> Aggregator:
    return Aggregator(INSTANCE, handlers={}, cache_ttl=10, poll_interval=5)


@pytest.fixture
def client(agg: Aggregator, history: History) -> FlaskClient:
    return create_app(agg, history=history).test_client()


def _ingest(agg: Aggregator, history: History, n: int, *, start: float = T0) -> None:
    agg.ingest([ReadingObs(device_id=f"s{i % 3}", ts=start + i, values={"t": i})
                for i in range(n)], source="serial-handler")
    assert history.writer is not None and history.writer.flush()


def test_accepted_readings_are_stored_rejected_ones_not(
        agg: Aggregator, history: History, client: FlaskClient) -> None:
    _ingest(agg, history, 30)
    agg.ingest([ReadingObs(device_id="ghost", ts=T0, values={"t": 1})], source="x")
    # An older reading (a backfill) does not roll the state back but is history.
    agg.ingest([ReadingObs(device_id="s0", ts=T0 - 100, values={"t": -1})], source="x")
    assert history.writer is not None and history.writer.flush()
    body = client.get("/history/readings?limit=100").get_json()
    assert body["count"] == 31 and body["next_cursor"] is None
    assert {r["device_id"] for r in body["readings"]} == {"s0", "s1", "s2"}
    assert body["readings"][0]["payload"] == {"t": -1}
    state = agg.device("s0").state
    assert state is not None and state.values["t"] == 27


def test_range_device_and_pages(agg: Aggregator, history: History, client: FlaskClient) -> None:
    _ingest(agg, history, 300)
    url = ("/history/readings?device_id=s1&limit=20&start_date=2023-11-14T22:13:30Z"
           "&end_date=2023-11-14T22:16:20Z")
    got: list[int] = []
    while url:
        body = client.get(url).get_json()
        got += [r["payload"]["t"] for r in body["readings"]]
        url = body["next_cursor"] and url.split("&cursor=", maxsplit=1)[0] + f"&cursor={body['next_cursor']}"
    assert got == [i for i in range(10, 180) if i % 3 == 1]


def test_latest(agg: Aggregator, history: History, client: FlaskClient) -> None:
    _ingest(agg, history, 9)
    body = client.get("/history/readings/latest").get_json()
    assert {r["device_id"]: r["payload"]["t"] for r in body["readings"]} == \
        {"s0": 6, "s1": 7, "s2": 8}
    one = client.get("/history/readings/latest?device_id=s2").get_json()
    assert [r["payload"]["t"] for r in one["readings"]] == [8]


@pytest.mark.parametrize(("query", "message"), [
    ("start_date=yesterday", "start_date must be an ISO 8601"),
    ("limit=0", "limit must be 1..10000"),
    ("limit=x", "limit must be an integer"),
    ("device_id=a/b", "device_id must match"),
    ("cursor=zzz", "next_cursor"),
    ("start_date=2026-01-02&end_date=2026-01-01", "end_date must be after start_date"),
])
def test_bad_queries_say_what_is_wrong(client: FlaskClient, query: str, message: str) -> None:
    resp = client.get(f"/history/readings?{query}")
    assert resp.status_code == 400
    assert message in resp.get_json()["message"]


def test_post_one_and_bulk_are_idempotent(client: FlaskClient) -> None:
    one = {"device_id": "edge_1", "ts_utc": "2026-11-23T12:00:00Z", "payload": {"t": 1}}
    assert client.post("/history/readings", json=one).get_json()["stored"] == 1
    assert client.post("/history/readings", json=one).get_json() == \
        {"received": 1, "stored": 0, "duplicates": 1}
    bulk = [{"device_id": "edge_1", "timestamp": f"2026-11-23T12:00:{s:02d}Z",
             "reading_id": f"r{s}", "payload": {"t": s}} for s in range(60)]
    assert client.post("/history/readings/bulk", json={"readings": bulk}).get_json() == \
        {"received": 60, "stored": 60, "duplicates": 0}
    assert client.post("/history/readings/bulk", json=bulk).get_json()["duplicates"] == 60


@pytest.mark.parametrize("ts", [-1.7976931348623155e308, 1e300, -1, 1e12,
                                "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59Z"])
def test_a_time_no_datetime_can_hold_is_refused_not_a_crash(client: FlaskClient,
                                                             ts: float | str) -> None:
    """Found by the fuzzer (tests/e2e/test_fuzz_rest.py): ts_utc -1.8e308 answered 500
    (OverflowError building the row), 1e12 likewise (year out of range)."""
    reading = {"device_id": "edge_1", "ts_utc": ts, "payload": {"t": 1}}
    resp = client.post("/history/readings", json=reading)
    assert resp.status_code == 422, resp.get_data(as_text=True)
    assert "ts_utc must be between 1970 and 9999" in resp.get_json()["message"]
    bulk = client.post("/history/readings/bulk", json={"readings": [reading]})
    assert bulk.status_code == 422 and "readings[0]" in bulk.get_json()["message"]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"readings": []}, 422, "at least 1"),
    ({"readings": [{"device_id": "a"}] * 1001}, 422, "at most 1000"),
    ({"readings": [{"device_id": "a", "ts_utc": "2026-01-01", "payload": {}},
                   {"device_id": "a", "ts_utc": "soon", "payload": {}}]}, 422, "readings[1]"),
    ("[1,", 400, "not valid JSON"),
])
def test_bad_bulk_bodies(client: FlaskClient, body: object, status: int, message: str) -> None:
    resp = (client.post("/history/readings/bulk", data=body, content_type="application/json")
            if isinstance(body, str) else client.post("/history/readings/bulk", json=body))
    assert resp.status_code == status
    assert message in resp.get_json()["message"]


def test_export_csv_streams_every_page(agg: Aggregator, history: History,
                                       client: FlaskClient) -> None:
    _ingest(agg, history, 12_000)
    resp = client.get("/history/readings/export.csv?device_id=s0")
    assert resp.is_streamed and resp.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(resp.get_data(as_text=True))))
    assert rows[0] == ["id", "device_id", "ts_utc", "ts_local", "reading_id", "payload"]
    assert len(rows) == 1 + 4000
    assert rows[1][1] == "s0" and json.loads(rows[1][5]) == {"t": 0}


def test_a_full_disk_never_stops_ingest(tmp_path: Path, agg: Aggregator) -> None:
    history = History(tmp_path / "history.db", tz="UTC",
                      limits=Limits(max_bytes=None, disk_percent=100))
    history.start()
    client = create_app(agg, history=history).test_client()
    # A real SQLITE_FULL ("database or disk is full"): the file may not grow past its pages.
    assert history.store is not None
    backend = history.store.backend
    assert isinstance(backend, SqliteBackend)
    with backend.lock:
        pages = backend.conn.execute("PRAGMA page_count").fetchone()[0]
        backend.conn.execute(f"PRAGMA max_page_count={pages + 2}")
    _ingest(agg, history, 3000)
    assert agg.device("s2").state is not None  # live data flows
    health = client.get("/health").get_json()
    assert health["status"] == "degraded"
    assert health["history"]["state"] == "degraded"
    assert "database or disk is full" in health["history"]["reasons"][0]
    assert health["history"]["failed"] > 0
    resp = client.post("/history/readings/bulk", json=[
        {"device_id": "x", "ts_utc": T0 + s, "payload": {"v": "w" * 500}} for s in range(500)])
    assert resp.status_code == 507 and resp.get_json()["error"] == "not_stored"
    with backend.lock:
        backend.conn.execute("PRAGMA max_page_count=1073741823")
    _ingest(agg, history, 30, start=T0 + 10_000)
    assert client.get("/health").get_json()["history"]["state"] == "ok"
    with sqlite3.connect(history.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM readings WHERE ts_us >= ?",
                            (int((T0 + 10_000) * 1e6),)).fetchone()[0] == 30
    history.stop()
