"""A PostgreSQL server that goes away under a running history and comes back (a server of its
own, halted and started again on its cluster): live data flows, the writer keeps its queue
and tries again, and every reading is stored once the server is back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.state_aggregator.history.retention import Limits
from services.state_aggregator.history.service import History
from shared.models import ReadingObs
from tests.helpers import wait_for
from tests.postgres import Postgres, start_postgres

T0 = 1_700_000_000.0


@pytest.fixture
def server() -> Iterator[Postgres]:
    pg = start_postgres()
    yield pg
    pg.stop()


def started(server: Postgres, database: str, *, halted: bool = False) -> History:
    """A running history on a new database of ``server`` (stopped first when ``halted``), no
    retention in the way."""
    url = server.create_database(database)
    if halted:
        server.halt()
    history = History(url, tz="UTC", limits=Limits(max_bytes=None, disk_percent=100),
                      check_interval=3600)
    history.start()
    return history


def batch(start: int, n: int) -> list[ReadingObs]:
    return [ReadingObs(device_id="s", ts=T0 + i, values={"i": i}) for i in range(start, start + n)]


def test_a_server_restart_loses_no_reading(server: Postgres) -> None:
    history = started(server, "outage")
    try:
        assert history.writer is not None and history.store is not None
        history.append(batch(0, 100))
        assert history.writer.flush()
        server.halt()
        history.append(batch(100, 100))
        health = wait_for(lambda: (h := history.health())["state"] == "degraded" and h,
                          timeout=30, what="the history to say the server is gone")
        assert any("tries again" in r for r in health["reasons"]), health["reasons"]
        history.append(batch(200, 100))  # more while it is away
        assert health["failed"] == 0 and history.writer.pending >= 100
        server.serve()
        assert history.writer.flush(timeout=60)
        assert history.health()["state"] == "ok"
        assert history.health()["failed"] == 0
        stored = history.store.query(start=None, end=None, device_id="s", limit=1000).readings
        assert [r["payload"]["i"] for r in stored] == list(range(300))
    finally:
        history.stop()


def test_a_server_away_at_the_start_is_connected_when_it_answers(server: Postgres) -> None:
    """The aggregator starts while its server is down: the history is made all the same, says
    ``degraded`` (one reason, ``unavailable``), queues the readings, and once the server answers
    it connects, creates its schema and stores every reading queued meanwhile."""
    history = started(server, "late", halted=True)
    try:
        assert history.writer is not None and history.store is not None
        health = history.health()
        assert health["state"] == "degraded" and len(health["reasons"]) == 1
        assert "queue for the history" in health["reasons"][0], health["reasons"]
        history.append(batch(0, 100))
        history.append(batch(100, 50))
        server.serve()
        assert history.writer.flush(timeout=60)
        assert history.health()["state"] == "ok"
        stored = history.store.query(start=None, end=None, device_id="s", limit=1000).readings
        assert [r["payload"]["i"] for r in stored] == list(range(150))
    finally:
        history.stop()


def test_with_nothing_to_write_the_history_still_reconnects(server: Postgres) -> None:
    history = started(server, "idle", halted=True)
    try:
        assert history.health()["state"] == "degraded"
        server.serve()
        wait_for(lambda: history.health()["state"] == "ok", timeout=60,
                 what="the history to reach the server by itself")
        assert history.store is not None
        assert history.store.latest("s", raw=False) == []  # the schema is there
    finally:
        history.stop()
