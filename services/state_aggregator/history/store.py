"""The readings history in SQLite, free of Flask and threads: batched idempotent inserts, range
queries with keyset pagination, the latest reading per device, and stratified thinning.

Time is stored as integer microseconds (``ts_us``), so a keyset cursor compares exactly; a
reading's key (``rkey``) is the sensor's reading id, or ``@<ts_us>`` when it has none, so
``(device_id, rkey)`` makes every insert idempotent (a replayed batch, a retrying probe, the
warm-up's last readings again).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from shared.jsonutil import dumps, loads
from shared.sqlite import rollback

from .db import connect, open_db

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
    CREATE TABLE readings (
        id INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL,
        ts_us INTEGER NOT NULL,
        ts_local TEXT NOT NULL,
        rkey TEXT NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE UNIQUE INDEX readings_key ON readings(device_id, rkey);
    CREATE INDEX readings_device_ts ON readings(device_id, ts_us);
    CREATE INDEX readings_ts ON readings(ts_us);
    -- Every device that has readings: /latest for all devices is one indexed lookup per device
    -- instead of a scan of the whole table.
    CREATE TABLE devices (device_id TEXT PRIMARY KEY) WITHOUT ROWID
    """),
]

DAY_US = 86_400_000_000

# device_id, ts_us, ts_local, rkey, payload JSON: one row as it is inserted.
Row = tuple[str, int, str, str, str]


class CursorError(ValueError):
    """A ``cursor`` that this store did not hand out."""


@dataclass(frozen=True, slots=True)
class Page:
    readings: list[dict[str, Any]]
    next_cursor: str | None


def to_us(ts: float) -> int:
    return round(ts * 1_000_000)


def encode_cursor(ts_us: int, row_id: int) -> str:
    return f"{ts_us}_{row_id}"


def decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        ts_us, row_id = cursor.split("_")
        return int(ts_us), int(row_id)
    except ValueError as exc:
        raise CursorError(f"cursor {cursor!r} is not one this hub handed out "
                          "(take next_cursor from the previous page)") from exc


class Rows:
    """Builds insert rows; ``ts_local`` in the hub's ``TZ``, as the seed's schema keeps it."""

    def __init__(self, tz: str) -> None:
        self.zone = ZoneInfo(tz)

    def row(self, device_id: str, ts: float, values: dict[str, Any],
            reading_id: str | None = None) -> Row:
        ts_us = to_us(ts)
        local = datetime.fromtimestamp(ts, self.zone).isoformat(timespec="milliseconds")
        return (device_id, ts_us, local, reading_id or f"@{ts_us}", dumps(values).decode())


def _iso_us(ts_us: int) -> str:
    """``shared.timeutil.iso`` for integer microseconds, about 3x faster (it is most of what a
    page of readings costs)."""
    sec, us = divmod(ts_us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{us // 1000:03d}Z"


def _reading(row: tuple[Any, ...], *, raw: bool) -> dict[str, Any]:
    """A stored reading; with ``raw`` its payload stays the stored JSON text (an
    ``orjson.Fragment``), written into an answer as it is instead of decoded and encoded again."""
    row_id, device_id, ts_us, ts_local, rkey, payload = row
    return {"id": row_id, "device_id": device_id, "ts_utc": _iso_us(ts_us), "ts_local": ts_local,
            "reading_id": None if rkey.startswith("@") else rkey,
            "payload": orjson.Fragment(payload) if raw else loads(payload)}


_COLUMNS = "r.id, r.device_id, r.ts_us, r.ts_local, r.rkey, r.payload"


class HistoryStore:
    """One writing connection behind a lock (SQLite allows one writer anyway) and one for the
    queries."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = open_db(path, MIGRATIONS)
        self._lock = threading.RLock()
        # Queries read on a connection of their own: in WAL mode a reader runs beside the
        # writer, so a page is not held up by a batch insert or a retention transaction.
        self._reader = connect(path)
        self._read_lock = threading.Lock()

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                rollback(self._conn)
                raise
            self._conn.execute("COMMIT")

    # --- writing -------------------------------------------------------------------------------
    def add(self, rows: Sequence[Row]) -> int:
        """Insert ``rows`` in one transaction; the number new (the rest were stored already).
        ``sqlite3.Error`` (a full disk among them) leaves nothing of the batch behind."""
        if not rows:
            return 0
        with self._tx() as conn:
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO readings (device_id, ts_us, ts_local, rkey, "
                             "payload) VALUES (?, ?, ?, ?, ?)", rows)
            added = conn.total_changes - before
            conn.executemany("INSERT OR IGNORE INTO devices VALUES (?)",
                             [(d,) for d in {r[0] for r in rows}])
        return added

    # --- reading -------------------------------------------------------------------------------
    def query(self, *, start: float | None, end: float | None, device_id: str | None,
              limit: int, cursor: str | None = None, raw: bool = False) -> Page:
        """Readings with ``start <= ts < end`` in time order, ``limit`` at most, from after
        ``cursor`` (keyset: the position of the last reading of the previous page, never an
        OFFSET that would rescan every page before it)."""
        where: list[str] = []
        args: list[Any] = []
        if device_id is not None:
            where.append("device_id = ?")
            args.append(device_id)
        if start is not None:
            where.append("ts_us >= ?")
            args.append(to_us(start))
        if end is not None:
            where.append("ts_us < ?")
            args.append(to_us(end))
        if cursor is not None:
            where.append("(ts_us, id) > (?, ?)")
            args.extend(decode_cursor(cursor))
        # Only this function's fixed clauses are joined in; every value is a bound parameter.
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {_COLUMNS} FROM readings r {clause} ORDER BY ts_us, id LIMIT ?"  # noqa: S608
        with self._read_lock:
            rows = self._reader.execute(sql, (*args, limit + 1)).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1][2], rows[-1][0]) if more else None
        return Page([_reading(r, raw=raw) for r in rows], next_cursor)

    def latest(self, device_id: str | None = None, *, raw: bool = False) -> list[dict[str, Any]]:
        """The newest reading of one device, or of every device that has any: one indexed
        lookup per device, all in one statement (a Python loop of them cost 10x more)."""
        where, args = ("WHERE d.device_id = ?", (device_id,)) if device_id else ("", ())
        sql = (f"SELECT {_COLUMNS} FROM devices d JOIN readings r ON r.id = (SELECT id FROM "  # noqa: S608
               "readings WHERE device_id = d.device_id ORDER BY ts_us DESC, id DESC LIMIT 1) "
               f"{where} ORDER BY d.device_id")
        with self._read_lock:
            rows = self._reader.execute(sql, args).fetchall()
        return [_reading(r, raw=raw) for r in rows]

    # --- size and thinning ---------------------------------------------------------------------
    def used_bytes(self) -> int:
        """Bytes the history's pages hold (the file less its free pages, plus the WAL)."""
        with self._lock:
            page = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
            count = int(self._conn.execute("PRAGMA page_count").fetchone()[0])
            free = int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])
        wal = Path(f"{self.path}-wal")
        return (count - free) * page + (wal.stat().st_size if wal.exists() else 0)

    def file_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"))
                   if p.exists())

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0])

    def span(self) -> tuple[int, int] | None:
        """The oldest and newest ``ts_us`` stored."""
        with self._lock:
            lo, hi = self._conn.execute("SELECT MIN(ts_us), MAX(ts_us) FROM readings").fetchone()
        return None if lo is None else (int(lo), int(hi))

    def thin(self, fraction: float, *, stratum_us: int = DAY_US) -> int:
        """Delete about ``fraction`` of the readings older than the newest day, evenly across
        time: each device's readings of each stratum (a day) lose the same share, every
        n-th of them (or all but every n-th past one half), so the time distribution is kept.
        The newest day stays whole. One transaction per stratum keeps the writer's waits short.
        Returns the number deleted; ``give_back`` returns the freed pages to the filesystem."""
        span = self.span()
        if span is None or fraction <= 0:
            return 0
        oldest, newest = span
        cutoff = newest - DAY_US
        if fraction >= 0.5:
            keep_every = max(2, round(1 / (1 - min(fraction, 0.99))))
            condition = f"rn % {keep_every} != 0"
        else:
            condition = f"rn % {max(2, round(1 / fraction))} = 0"
        deleted = 0
        for lo in range(oldest - oldest % stratum_us, cutoff, stratum_us):
            hi = min(lo + stratum_us, cutoff)
            with self._tx() as conn:
                cur = conn.execute(
                    "DELETE FROM readings WHERE id IN (SELECT id FROM (SELECT id, row_number() "  # noqa: S608
                    "OVER (PARTITION BY device_id ORDER BY ts_us, id) AS rn FROM readings "
                    f"WHERE ts_us >= ? AND ts_us < ?) WHERE {condition})",  # the condition holds only ints
                    (lo, hi))
                deleted += cur.rowcount
            # Deleting touches nearly every page; without a checkpoint per stratum the WAL
            # would grow by the size of the history, on the disk that is already too full.
            self._checkpoint("PASSIVE")
        return deleted

    def give_back(self, step_pages: int = 256) -> None:
        """Hand free pages back to the filesystem, a few at a time with a checkpoint between,
        so the WAL never needs much room; then shrink the WAL file itself."""
        with self._lock:
            while int(self._conn.execute("PRAGMA freelist_count").fetchone()[0]) > 0:
                self._conn.execute(f"PRAGMA incremental_vacuum({int(step_pages)})").fetchall()
                self._checkpoint("PASSIVE")
            self._checkpoint("TRUNCATE")

    def _checkpoint(self, mode: str) -> None:
        with self._lock:
            self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()

