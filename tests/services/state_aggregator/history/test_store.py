"""The history store on real SQLite files and a real PostgreSQL server (the same tests on both,
``conftest.py``): idempotent batched inserts, keyset pages, latest per device, stratified
thinning that keeps the time distribution and the newest day, readers' cursors; then what is
each backend's own (SQLite's file, PostgreSQL's schema)."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from services.state_aggregator.history.store import (
    DAY_US,
    CursorError,
    HistoryStore,
    Rows,
    StoreError,
)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
ROWS = Rows("Europe/Berlin")


@pytest.fixture
def store(history_location: Path | str) -> Iterator[HistoryStore]:
    opened = HistoryStore(history_location)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[HistoryStore]:
    opened = HistoryStore(tmp_path / "history.db")
    yield opened
    opened.close()


def test_wal_indexes_and_incremental_vacuum(sqlite_store: HistoryStore) -> None:
    conn = sqlite3.connect(sqlite_store.where)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    indexes = {r[0]: r[1] for r in conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    assert "(device_id, ts_us, id, ts_local, rkey, payload)" in indexes["readings_device_ts"]
    assert "(ts_us)" in indexes["readings_ts"]
    # A device's time range is read from the covering index alone, never the table.
    plan = " ".join(r[3] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT r.id, r.device_id, r.ts_us, r.ts_local, r.rkey, r.payload "
        "FROM readings r WHERE device_id = 'a' AND ts_us >= 1 AND ts_us < 2 "
        "AND (ts_us, id) > (1, 1) ORDER BY ts_us, id LIMIT 10"))
    assert "USING COVERING INDEX readings_device_ts" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


def test_insert_is_idempotent_on_reading_id_or_timestamp(store: HistoryStore) -> None:
    batch = [ROWS.row("a", T0, {"t": 1.5}), ROWS.row("a", T0 + 1, {"t": 2}),
             ROWS.row("b", T0, {"t": 3}, "sensor-42")]
    assert store.add(batch) == 3
    assert store.add(batch) == 0  # a replayed batch stores nothing twice
    # The sensor's id identifies its reading even at another timestamp.
    assert store.add([ROWS.row("b", T0 + 5, {"t": 3}, "sensor-42")]) == 0
    assert store.count() == 3


def test_reading_fields_and_local_time(store: HistoryStore) -> None:
    store.add([ROWS.row("a", T0 + 0.123, {"t": 1.5, "on": True}, "r1")])
    (r,) = store.query(start=None, end=None, device_id="a", limit=10).readings
    assert r["ts_utc"] == "2023-11-14T22:13:20.123Z"
    assert r["ts_local"] == "2023-11-14T23:13:20.123+01:00"
    assert r["payload"] == {"t": 1.5, "on": True}
    assert r["reading_id"] == "r1"


def test_keyset_pages_cover_the_range_exactly_once(store: HistoryStore) -> None:
    # Several readings share a timestamp: the cursor carries the row id to break the tie.
    store.add([ROWS.row(f"d{i % 4}", T0 + i // 4, {"i": i}) for i in range(1000)])
    store.add([ROWS.row("other", T0 + 10, {"i": -1})])
    seen: list[int] = []
    cursor = None
    while True:
        page = store.query(start=T0 + 10, end=T0 + 200, device_id=None, limit=37, cursor=cursor)
        seen.extend(r["payload"]["i"] for r in page.readings)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    expected = [i for i in range(1000) if 10 <= i // 4 < 200]
    assert sorted(i for i in seen if i >= 0) == expected
    assert len(seen) == len(set(seen)) == len(expected) + 1


def test_device_filter_and_bad_cursor(store: HistoryStore) -> None:
    store.add([ROWS.row(f"d{i % 2}", T0 + i, {"i": i}) for i in range(10)])
    page = store.query(start=None, end=None, device_id="d1", limit=100)
    assert [r["payload"]["i"] for r in page.readings] == [1, 3, 5, 7, 9]
    with pytest.raises(CursorError, match="next_cursor"):
        store.query(start=None, end=None, device_id=None, limit=1, cursor="12;drop")


def test_latest_per_device(store: HistoryStore) -> None:
    # Inserted out of time order: latest is by timestamp, not by arrival.
    store.add([ROWS.row("a", T0 + 5, {"v": "new"}), ROWS.row("a", T0, {"v": "old"}),
               ROWS.row("b", T0 + 1, {"v": "b"})])
    assert {r["device_id"]: r["payload"]["v"] for r in store.latest()} == {"a": "new", "b": "b"}
    assert [r["payload"]["v"] for r in store.latest("a")] == ["new"]
    assert store.latest("nobody") == []


def test_thinning_keeps_the_distribution_and_the_newest_day(store: HistoryStore) -> None:
    # Ten days, two devices, one reading a minute each.
    store.add([ROWS.row(dev, T0 + m * 60, {"m": m}) for m in range(10 * 1440) for dev in "ab"])
    before = store.count()
    newest = T0 + (10 * 1440 - 1) * 60
    deleted = store.thin(0.25)
    # A quarter of the nine older days, nothing of the newest day.
    assert deleted == pytest.approx(0.25 * 9 * 1440 * 2, rel=0.02)
    assert store.count() == before - deleted
    left = store.query(start=newest - 86400 + 60, end=None, device_id=None, limit=10_000)
    assert len(left.readings) == 2 * 1440  # the newest day whole
    per_day: Counter[tuple[str, int]] = Counter()
    for dev in "ab":
        cursor = None
        while True:
            page = store.query(start=None, end=None, device_id=dev, limit=5000, cursor=cursor)
            per_day.update((dev, int(r["payload"]["m"]) // 1440) for r in page.readings)
            if (cursor := page.next_cursor) is None:
                break
    for dev in "ab":  # every older day of every device lost the same share
        counts = [per_day[(dev, d)] for d in range(9)]
        assert max(counts) - min(counts) <= 2, counts


def test_thinning_most_keeps_every_nth(store: HistoryStore) -> None:
    store.add([ROWS.row("a", T0 + m * 60, {"m": m}) for m in range(3 * 1440)])
    deleted = store.thin(0.9)
    assert deleted == pytest.approx(0.9 * 2 * 1440, rel=0.02)
    assert store.span() is not None


def test_thinning_gives_pages_back(sqlite_store: HistoryStore) -> None:
    store = sqlite_store
    store.add([ROWS.row("a", T0 + s, {"x": "y" * 200}) for s in range(0, 5 * DAY_US // 10**6, 30)])
    before = store.file_bytes()
    store.thin(0.5)
    store.give_back()
    assert store.file_bytes() < before * 0.75


def test_a_file_that_is_not_a_database_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(b"this is not sqlite" * 100)
    store = HistoryStore(path)
    assert store.add([ROWS.row("a", T0, {})]) == 1
    assert len(list(tmp_path.glob("history.db.corrupt-*"))) == 1


def test_queries_do_not_wait_for_an_open_write_transaction(store: HistoryStore) -> None:
    store.add([ROWS.row("a", T0 + i, {"i": i}) for i in range(10)])
    with store._tx() as tx:  # a retention stratum or a big batch in progress
        tx.execute("DELETE FROM readings WHERE device_id = 'a'")
        # The reader sees the last committed state at once, without the writer's lock.
        assert len(store.query(start=None, end=None, device_id="a", limit=100).readings) == 10
        assert store.latest("a")[0]["payload"] == {"i": 9}
    assert store.query(start=None, end=None, device_id="a", limit=100).readings == []


def test_thinning_never_deletes_the_highest_id(store: HistoryStore) -> None:
    # A backfill of old readings is stored last: its rows have the highest ids. Thinning may
    # take them, but never the very last row, so no id is handed out twice and a reader whose
    # cursor points past the deleted rows still sees every new one.
    store.add([ROWS.row("a", T0 + 5 * 86400 + m * 60, {"m": m}) for m in range(100)])
    store.add([ROWS.row("old", T0 + s, {"s": s}) for s in range(11)])
    newest = store.after(0, 1000)[-1]["id"]
    # Every 10th kept: rows 1-9 and 11 would go, the 11th (the highest id) stays.
    assert store.thin(0.9) == 9
    assert [r["payload"]["s"] for r in store.query(start=None, end=None, device_id="old",
                                                    limit=100).readings] == [9, 10]
    store.add([ROWS.row("a", T0 + 6 * 86400, {"m": "new"})])
    (fresh,) = store.after(newest, 10)
    assert fresh["id"] > newest and fresh["device_id"] == "a"


def test_after_and_reader_cursors(store: HistoryStore) -> None:
    store.add([ROWS.row("a", T0 + i, {"i": i}, f"r{i}" if i % 2 else None) for i in range(10)])
    assert store.cursor_of("forward x") == 0
    first = store.after(0, 4)
    assert [r["device_id"] for r in first] == ["a"] * 4
    assert [r["ts_us"] for r in first] == [round((T0 + i) * 1e6) for i in range(4)]
    assert [r["reading_id"] for r in first] == [None, "r1", None, "r3"]
    store.commit_cursor("forward x", first[-1]["id"])
    store.commit_cursor("forward x", first[-1]["id"])  # committing again is an update
    assert store.cursor_of("forward x") == first[-1]["id"]
    assert store.cursor_of("forward y") == 0
    assert store.count_after(first[-1]["id"]) == 6
    rest = store.after(store.cursor_of("forward x"), 100)
    assert len(rest) == 6 and rest[0]["id"] > first[-1]["id"]


def test_sqlite_raises_store_error_for_its_own_errors(sqlite_store: HistoryStore) -> None:
    with pytest.raises(StoreError, match="no such table"), sqlite_store._tx() as tx:
        tx.execute("DELETE FROM nothing_here")


def test_postgresql_schema_jsonb_indexes_and_identity(postgres_store: HistoryStore) -> None:
    store = postgres_store
    store.add([ROWS.row("a", T0 + 0.5, {"t": 1.5, "nested": {"on": True}})])
    url = store.backend.url  # type: ignore[attr-defined]
    with psycopg.connect(url) as conn:
        types: dict[str, str] = dict(conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'readings'").fetchall())
        assert types["payload"] == "jsonb" and types["ts_utc"] == "timestamp with time zone"
        indexes: dict[str, str] = dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes "
                                    "WHERE tablename = 'readings'").fetchall())
        assert "(device_id, ts_us)" in indexes["readings_device_ts"]
        assert "(ts_us)" in indexes["readings_ts"]
        assert "UNIQUE" in indexes["readings_key"] and "(device_id, rkey)" in indexes["readings_key"]
        row = conn.execute("SELECT ts_utc, payload->'nested'->'on' FROM readings").fetchone()
        assert row is not None
        ts_utc, flag = row
        assert ts_utc.timestamp() == T0 + 0.5 and flag is True
    assert store.where.startswith("postgresql://hub@127.0.0.1:")  # no password shown


def test_postgresql_migrates_once_and_refuses_a_newer_schema(postgres_store: HistoryStore) -> None:
    url = postgres_store.backend.url  # type: ignore[attr-defined]
    HistoryStore(url).close()  # a second hub on the same server: nothing to apply
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone() == (2,)
        conn.execute("INSERT INTO schema_migrations VALUES (99, 0)")
    with pytest.raises(StoreError, match="newer than this code knows"):
        HistoryStore(url)


def test_postgresql_unreachable_is_a_store_error() -> None:
    """At the start it is kept as the store's ``start_error`` (the writer connects later);
    afterwards, every use of the store raises it."""
    from tests.helpers import free_port

    store = HistoryStore(f"postgresql://hub:secret@127.0.0.1:{free_port()}/nothing")
    assert store.start_error is not None and store.start_error.unavailable
    assert "127.0.0.1" in str(store.start_error) and "secret" not in str(store.start_error)
    with pytest.raises(StoreError, match=r"127\.0\.0\.1") as refused:
        store.connect()
    assert refused.value.unavailable and "secret" not in str(refused.value)


def test_a_large_file_gets_its_covering_index_after_the_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.state_aggregator.history import db
    from services.state_aggregator.history.retention import Limits
    from services.state_aggregator.history.service import History
    from shared.sqlite import migrate
    from tests.helpers import wait_for

    # A file as the previous release left it: schema version 2, the plain (device_id, ts_us)
    # index, more readings than the start may rebuild an index of.
    path = tmp_path / "history.db"
    conn = db.connect(path)
    migrate(conn, path, db.MIGRATIONS, what="test", upto=2)
    conn.executemany("INSERT INTO readings (device_id, ts_us, ts_local, rkey, payload) "
                     "VALUES (?, ?, ?, ?, ?)", [ROWS.row("a", T0 + i, {"i": i}) for i in range(20)])
    conn.close()
    monkeypatch.setattr(db, "SLOW_ROWS", 10)

    def version() -> int:
        with sqlite3.connect(path) as c:
            return int(c.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0])

    history = History(path, tz="UTC", limits=Limits(max_bytes=None, disk_percent=100))
    assert version() == 2  # the start did not wait for the rebuild
    assert history.store is not None
    assert len(history.store.query(start=None, end=None, device_id="a", limit=100).readings) == 20
    history.start()  # the writer's thread upgrades first
    try:
        wait_for(lambda: version() == 3, timeout=10, what="the upgrade on the writer's thread")
        with sqlite3.connect(path) as c:
            (sql,) = c.execute("SELECT sql FROM sqlite_master "
                               "WHERE name = 'readings_device_ts'").fetchone()
        assert "ts_local, rkey, payload" in sql
        assert history.health()["state"] == "ok"
        page = history.store.query(start=None, end=None, device_id="a", limit=100)
        assert [r["payload"]["i"] for r in page.readings] == list(range(20))
    finally:
        history.stop()
