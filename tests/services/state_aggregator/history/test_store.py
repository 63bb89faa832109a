"""The history store on real SQLite files: idempotent batched inserts, keyset pages, latest per
device, stratified thinning that keeps the time distribution and the newest day."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from services.state_aggregator.history.store import (
    DAY_US,
    CursorError,
    HistoryStore,
    Rows,
)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
ROWS = Rows("Europe/Berlin")


@pytest.fixture
def store(tmp_path: Path) -> HistoryStore:
    return HistoryStore(tmp_path / "history.db")


def test_wal_indexes_and_incremental_vacuum(store: HistoryStore) -> None:
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    indexes = {r[0]: r[1] for r in conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    assert "(device_id, ts_us)" in indexes["readings_device_ts"]
    assert "(ts_us)" in indexes["readings_ts"]


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


def test_thinning_gives_pages_back(store: HistoryStore) -> None:
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
    with store._tx() as conn:  # a retention stratum or a big batch in progress
        conn.execute("DELETE FROM readings WHERE device_id = 'a'")
        # The reader sees the last committed state at once, without the writer's lock.
        assert len(store.query(start=None, end=None, device_id="a", limit=100).readings) == 10
        assert store.latest("a")[0]["payload"] == {"i": 9}
    assert store.query(start=None, end=None, device_id="a", limit=100).readings == []
