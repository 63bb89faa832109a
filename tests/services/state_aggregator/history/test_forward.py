"""Forwarding between two real histories over real HTTP: an edge history (SQLite) forwards to a
central one (SQLite, and PostgreSQL: the parametrized ``history_location``) served by the
aggregator's real app on a real port. The central store goes away and comes back, answers with
the wrong token, the edge restarts: every reading arrives exactly once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Response, request
from werkzeug.serving import BaseWSGIServer, make_server

from services.state_aggregator.app import create_app
from services.state_aggregator.core import Aggregator
from services.state_aggregator.history.forward import Forwarder, ForwardError, display_url
from services.state_aggregator.history.retention import Limits
from services.state_aggregator.history.service import ForwardConfig, History
from services.state_aggregator.history.store import Rows
from shared.instance import parse_instance
from tests.helpers import free_port, wait_for

T0 = 1_700_000_000.0
ROWS = Rows("UTC")
LIMITS = Limits(max_bytes=None, disk_percent=100)
INSTANCE = parse_instance({"instance_id": "c", "friendly_name": "central", "config": {
    "sensors": [{"sensor_id": "x", "sensor_type": "climate",
                 "source": {"type": "serial", "port": "loop://"}}]}})


class Central:
    """The central hub's history behind a real HTTP server that can be stopped and started
    again on the same port; optionally it demands a token as the LAN API does."""

    def __init__(self, location: Path | str, token: str | None = None) -> None:
        self.history = History(location, tz="UTC", limits=LIMITS)
        self.history.start()
        self.app = create_app(Aggregator(INSTANCE, handlers={}, cache_ttl=10, poll_interval=5),
                              history=self.history)
        self.token = token
        self.requests = 0
        self.app.before_request(self._check)
        self.port = free_port()
        self.server: BaseWSGIServer | None = None

    def _check(self) -> Response | None:
        self.requests += 1
        if self.token is not None and request.headers.get("X-Token") != self.token:
            return Response('{"error":"unauthorized","message":"the token is wrong"}', 401,
                            mimetype="application/json")
        return None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/history"

    def start(self) -> None:
        self.server = make_server("127.0.0.1", self.port, self.app, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def stored(self) -> list[dict[str, Any]]:
        assert self.history.store is not None
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.history.store.query(start=None, end=None, device_id=None, limit=5000,
                                            cursor=cursor)
            out += page.readings
            if (cursor := page.next_cursor) is None:
                return out


@pytest.fixture
def central(history_location: Path | str) -> Iterator[Central]:
    c = Central(history_location)
    c.start()
    yield c
    c.stop()
    c.history.stop()


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[History]:
    hist = History(tmp_path / "edge.db", tz="UTC", limits=LIMITS)
    yield hist
    hist.stop()


def forwarder(edge: History, central: Central, **kwargs: Any) -> Forwarder:
    assert edge.store is not None
    return Forwarder(edge.store, central.url, **{"batch": 100, "retry_max": 0.2, **kwargs})


def add(edge: History, n: int, *, start: int = 0) -> None:
    assert edge.store is not None
    # Some readings carry the sensor's id, some only a timestamp; d0's first two are 2 us apart
    # in one millisecond (the central store must keep both: timestamps travel with every
    # microsecond).
    edge.store.add([ROWS.row(f"d{i % 3}", T0 + i + (0.000001 if i % 7 == 0 else 0),
                             {"i": i}, f"r{i}" if i % 2 else None)
                    for i in range(start, start + n)])
    edge.store.add([ROWS.row("d0", T0 + start + 0.000003, {"i": -start})])


def keys(readings: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return sorted((r["device_id"], r["ts_utc"], r["reading_id"]) for r in readings)


def test_every_reading_once_in_batches_and_the_cursor_moves(edge: History,
                                                            central: Central) -> None:
    add(edge, 450)
    fwd = forwarder(edge, central)
    sent = [fwd.step() for _ in range(6)]
    assert sent == [100, 100, 100, 100, 51, 0]
    got = central.stored()
    assert len(got) == 451
    assert sorted(r["payload"]["i"] for r in got) == sorted([*range(450), 0])
    assert edge.store is not None and edge.store.cursor_of(fwd.reader) == 451
    health = fwd.health()
    assert health["forwarded"] == 451 and health["batches"] == 5 and health["backlog"] == 0
    assert health["central_duplicates"] == 0 and health["state"] == "ok"
    # What the central store holds is what the edge holds: same ids, same local times.
    edge_readings = edge.store.query(start=None, end=None, device_id=None, limit=1000).readings
    assert keys(got) == keys(edge_readings)


def test_a_restart_resumes_from_the_committed_cursor(edge: History, central: Central) -> None:
    add(edge, 250)
    first = forwarder(edge, central)
    assert first.step() == 100
    requests_before = central.requests
    second = forwarder(edge, central)  # the aggregator restarted
    assert [second.step() for _ in range(3)] == [100, 51, 0]
    assert central.requests - requests_before == 2  # the first batch was not sent again
    assert second.counters["central_duplicates"] == 0
    assert len(central.stored()) == 251


def test_central_down_then_back_backlog_and_backoff(edge: History, central: Central) -> None:
    central.stop()
    add(edge, 300)
    fwd = forwarder(edge, central)
    fwd.start()
    try:
        health = wait_for(lambda: (h := fwd.health())["failures"] >= 3 and h, timeout=20,
                          what="three failed attempts")
        assert health["state"] == "retrying" and health["forwarded"] == 0
        assert f"127.0.0.1:{central.port}/history/readings/bulk unreachable" in \
            health["last_error"]
        assert health["backlog"] is None or health["backlog"] == 301
        add(edge, 200, start=300)  # more arrives during the outage
        central.start()
        wait_for(lambda: len(central.stored()) == 502, timeout=30, what="the backlog forwarded")
        wait_for(lambda: fwd.health()["backlog"] == 0, timeout=10, what="an empty backlog")
        assert fwd.health()["state"] == "ok"
    finally:
        fwd.stop()
    assert edge.store is not None
    edge_all = edge.store.query(start=None, end=None, device_id=None, limit=1000).readings
    assert sorted((r["device_id"], r["payload"]["i"]) for r in central.stored()) == \
        sorted((r["device_id"], r["payload"]["i"]) for r in edge_all)


def test_a_refusal_is_retried_and_said_in_health(edge: History, history_location: Path | str
                                                 ) -> None:
    central = Central(history_location, token="right")
    central.start()
    try:
        add(edge, 10)
        wrong = forwarder(edge, central, token="wrong")
        with pytest.raises(ForwardError, match=r"answered 401: .*the token is wrong"):
            wrong.step()
        assert central.stored() == []
        assert forwarder(edge, central, token="right").step() == 11
        assert len(central.stored()) == 11
    finally:
        central.stop()
        central.history.stop()


def test_forwarded_twice_is_stored_once(edge: History, central: Central) -> None:
    # A crash between the central store's answer and the cursor's commit sends a batch again.
    add(edge, 50)
    fwd = forwarder(edge, central)
    assert fwd.step() == 51
    assert edge.store is not None
    edge.store.commit_cursor(fwd.reader, 0)  # as if the commit had been lost
    again = forwarder(edge, central)
    assert again.step() == 51
    assert again.counters["central_duplicates"] == 51
    assert len(central.stored()) == 51


def test_history_wires_the_forwarder_and_reports_it(tmp_path: Path, central: Central) -> None:
    hist = History(tmp_path / "edge2.db", tz="UTC", limits=LIMITS,
                   forward=ForwardConfig(f"{central.url}/", token="t", batch=5, retry_max=1))
    hist.start()
    try:
        add(hist, 20)
        wait_for(lambda: len(central.stored()) == 21, timeout=60, what="21 forwarded readings")
        health = wait_for(lambda: (h := hist.health()["forward"])["backlog"] == 0 and h,
                          timeout=60, what="the backlog in /health")
        assert health["url"] == f"http://127.0.0.1:{central.port}/history/readings/bulk"
        assert health["forwarded"] == 21 and health["batches"] == 5
    finally:
        hist.stop()


def test_display_url_hides_credentials() -> None:
    assert display_url("https://me:pw@central.example:8443/api?token=x") == \
        "https://central.example:8443/api"


def test_forward_settings_are_checked() -> None:
    from shared.errors import ConfigError
    from shared.settings import load_settings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORWARD_URL", "central:8088/api")
        with pytest.raises(ConfigError, match=r"FORWARD_URL: .*http://central:8088/api"):
            load_settings()
        mp.setenv("FORWARD_URL", "http://central:8088/api/")
        mp.setenv("FORWARD_BATCH", "5000")
        with pytest.raises(ConfigError, match="FORWARD_BATCH"):
            load_settings()
        mp.setenv("FORWARD_BATCH", "")
        mp.delenv("FORWARD_BATCH")
        settings = load_settings()
        assert settings.forward_url == "http://central:8088/api"
        assert settings.forward_batch == 360
        mp.setenv("DATABASE_URL", "sqlite:///x.db")
        with pytest.raises(ConfigError, match=r"DATABASE_URL: .*postgresql://"):
            load_settings()

