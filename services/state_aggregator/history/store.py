"""The readings history, free of Flask and threads: batched idempotent inserts, range queries
with keyset pagination, the latest reading per device, stratified thinning, and the forwarder's
reading of what came after its cursor. One store, two backends: a SQLite file under DATA_DIR
(``db.py``) or a PostgreSQL server (``pg.py``, when ``DATABASE_URL`` names one). The queries are
written once, here; a backend runs them (``?`` placeholders, standard SQL both understand) and
owns only what differs: connecting, the schema's types, sizes and handing space back.

Time is stored as integer microseconds (``ts_us``), so a keyset cursor compares exactly; a
reading's key (``rkey``) is the sensor's reading id, or ``@<ts_us>`` when it has none, so
``(device_id, rkey)`` makes every insert idempotent (a replayed batch, a retrying probe, the
warm-up's last readings again, an edge hub forwarding a batch twice).

Rows are written by one connection at a time (a lock), so row ids are committed in increasing
order: a reader that remembers the last id it saw (the forwarder's cursor) misses nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import orjson

from shared.jsonutil import dumps, loads

DAY_US = 86_400_000_000

# device_id, ts_us, ts_local, rkey, payload JSON: one row as it is inserted.
Row = tuple[str, int, str, str, str]


class StoreError(Exception):
    """A write or query the database refused: a full disk, an I/O error, a server that is gone
    or refuses. ``full`` when it was for want of space; ``unavailable`` when the database could
    not be reached at all (a PostgreSQL server down or restarting), so trying the same write
    again later may succeed. Raised by every store method in place of the driver's own
    exception."""

    def __init__(self, message: str, *, full: bool = False, unavailable: bool = False) -> None:
        super().__init__(message)
        self.full = full
        self.unavailable = unavailable


class CursorError(ValueError):
    """A ``cursor`` that this store did not hand out."""


@dataclass(frozen=True, slots=True)
class Page:
    readings: list[dict[str, Any]]
    next_cursor: str | None


class Tx(Protocol):
    """One transaction of a backend's writing connection."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run a statement; the rows it changed."""

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run a statement for each of ``rows``; the rows changed in all."""

    def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


class Backend(Protocol):
    kind: str  # "sqlite" or "postgresql"
    where: str  # the file, or the server without credentials: for logs and /health
    local_dir: Path | None  # the directory whose filesystem holds it; None for a server
    payload_sql: str  # the payload column as JSON text

    def transaction(self) -> AbstractContextManager[Tx]:
        """A transaction on the writing connection, held by one thread at a time."""

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A query on the reading connection: never waits for a write transaction."""

    def upgrade(self) -> None:
        """Apply the slow migrations left for after the start (on the writer's thread)."""

    def used_bytes(self) -> int: ...
    def file_bytes(self) -> int: ...
    def after_delete(self) -> None:
        """After each thinning transaction (SQLite: a WAL checkpoint)."""

    def give_back(self) -> None:
        """Return freed space to the filesystem."""

    def close(self) -> None: ...


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


def iso_us(ts_us: int, *, digits: int = 3) -> str:
    """``shared.timeutil.iso`` for integer microseconds, about 3x faster (it is most of what a
    page of readings costs); ``digits=6`` keeps every microsecond (what the forwarder sends,
    so two readings a few microseconds apart stay two readings on the central hub)."""
    sec, us = divmod(ts_us, 1_000_000)
    frac = f"{us // 1000:03d}" if digits == 3 else f"{us:06d}"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac}Z"


def _reading(row: tuple[Any, ...], *, raw: bool) -> dict[str, Any]:
    """A stored reading; with ``raw`` its payload stays the stored JSON text (an
    ``orjson.Fragment``), written into an answer as it is instead of decoded and encoded again."""
    row_id, device_id, ts_us, ts_local, rkey, payload = row
    return {"id": row_id, "device_id": device_id, "ts_utc": iso_us(ts_us), "ts_local": ts_local,
            "reading_id": None if rkey.startswith("@") else rkey,
            "payload": orjson.Fragment(payload) if raw else loads(payload)}


class HistoryStore:
    """The history on ``location``: a SQLite file (a path), or a PostgreSQL server (a
    ``postgresql://`` URL)."""

    def __init__(self, location: Path | str) -> None:
        if isinstance(location, str) and location.startswith(("postgresql://", "postgres://")):
            from .pg import PostgresBackend

            self.backend: Backend = PostgresBackend(location)
        else:
            from .db import SqliteBackend

            self.backend = SqliteBackend(Path(location))
        self.where = self.backend.where
        self.local_dir = self.backend.local_dir
        # A database server that did not answer at the start (the writer keeps trying).
        self.start_error: StoreError | None = getattr(self.backend, "start_error", None)
        self._columns = f"r.id, r.device_id, r.ts_us, r.ts_local, r.rkey, {self.backend.payload_sql}"

    def close(self) -> None:
        self.backend.close()

    def connect(self) -> None:
        """Reach the database (a server: connect and migrate); ``StoreError`` when it cannot."""
        with self._tx():
            pass

    def upgrade(self) -> None:
        """The schema migrations too slow for the start (SQLite: an index rebuild of a large
        file); the writer thread runs this first, the queue absorbing what arrives meanwhile."""
        self.backend.upgrade()

    @contextmanager
    def _tx(self) -> Iterator[Tx]:
        with self.backend.transaction() as tx:
            yield tx

    # --- writing -------------------------------------------------------------------------------
    def add(self, rows: Sequence[Row]) -> int:
        """Insert ``rows`` in one transaction; the number new (the rest were stored already).
        ``StoreError`` (a full disk among them) leaves nothing of the batch behind."""
        if not rows:
            return 0
        with self._tx() as tx:
            added = tx.executemany("INSERT INTO readings (device_id, ts_us, ts_local, rkey, "
                                   "payload) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", rows)
            tx.executemany("INSERT INTO devices (device_id) VALUES (?) ON CONFLICT DO NOTHING",
                           sorted({(r[0],) for r in rows}))
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
        sql = f"SELECT {self._columns} FROM readings r {clause} ORDER BY ts_us, id LIMIT ?"  # noqa: S608
        rows = self.backend.read(sql, (*args, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1][2], rows[-1][0]) if more else None
        return Page([_reading(r, raw=raw) for r in rows], next_cursor)

    def latest(self, device_id: str | None = None, *, raw: bool = False) -> list[dict[str, Any]]:
        """The newest reading of one device, or of every device that has any: one indexed
        lookup per device, all in one statement (a Python loop of them cost 10x more)."""
        where, args = ("WHERE d.device_id = ?", (device_id,)) if device_id else ("", ())
        sql = (f"SELECT {self._columns} FROM devices d JOIN readings r ON r.id = (SELECT id FROM "  # noqa: S608
               "readings WHERE device_id = d.device_id ORDER BY ts_us DESC, id DESC LIMIT 1) "
               f"{where} ORDER BY d.device_id")
        return [_reading(r, raw=raw) for r in self.backend.read(sql, args)]

    def after(self, last_id: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` readings stored after row ``last_id``, in the order they were stored
        (the forwarder's batches), each with its exact ``ts_us``; payloads as stored JSON."""
        sql = f"SELECT {self._columns} FROM readings r WHERE id > ? ORDER BY id LIMIT ?"  # noqa: S608
        return [{**_reading(r, raw=True), "ts_us": r[2]}
                for r in self.backend.read(sql, (last_id, limit))]

    def count_after(self, last_id: int) -> int:
        """Readings stored after row ``last_id`` (the forward backlog)."""
        return int(self.backend.read("SELECT COUNT(*) FROM readings WHERE id > ?",
                                     (last_id,))[0][0])

    # --- cursors of readers (the forwarder) ---------------------------------------------------
    def cursor_of(self, reader: str) -> int:
        """The last row id ``reader`` committed; 0 before its first."""
        found = self.backend.read("SELECT last_id FROM reader_cursors WHERE reader = ?", (reader,))
        return int(found[0][0]) if found else 0

    def commit_cursor(self, reader: str, last_id: int) -> None:
        with self._tx() as tx:
            tx.execute("INSERT INTO reader_cursors (reader, last_id) VALUES (?, ?) ON CONFLICT "
                       "(reader) DO UPDATE SET last_id = excluded.last_id", (reader, last_id))

    # --- size and thinning ---------------------------------------------------------------------
    def used_bytes(self) -> int:
        """Bytes the history holds on its disk."""
        return self.backend.used_bytes()

    def file_bytes(self) -> int:
        return self.backend.file_bytes()

    def count(self) -> int:
        return int(self.backend.read("SELECT COUNT(*) FROM readings")[0][0])

    def span(self) -> tuple[int, int] | None:
        """The oldest and newest ``ts_us`` stored."""
        lo, hi = self.backend.read("SELECT MIN(ts_us), MAX(ts_us) FROM readings")[0]
        return None if lo is None else (int(lo), int(hi))

    def thin(self, fraction: float, *, stratum_us: int = DAY_US) -> int:
        """Delete about ``fraction`` of the readings older than the newest day, evenly across
        time: each device's readings of each stratum (a day) lose the same share, every
        n-th of them (or all but every n-th past one half), so the time distribution is kept.
        The newest day stays whole, and so does the row with the highest id, so ids are never
        handed out twice (SQLite reuses a deleted highest rowid) and a reader's cursor stays
        true. One transaction per stratum keeps the writer's waits short. Returns the number
        deleted; ``give_back`` returns the freed space to the filesystem."""
        span = self.span()
        if span is None or fraction <= 0:
            return 0
        oldest, newest = span
        cutoff = newest - DAY_US
        if fraction >= 0.5:
            keep_every = max(2, round(1 / (1 - min(fraction, 0.99))))
            condition = f"rn % {keep_every} <> 0"
        else:
            condition = f"rn % {max(2, round(1 / fraction))} = 0"
        deleted = 0
        for lo in range(oldest - oldest % stratum_us, cutoff, stratum_us):
            hi = min(lo + stratum_us, cutoff)
            with self._tx() as tx:
                deleted += tx.execute(
                    "DELETE FROM readings WHERE id IN (SELECT id FROM (SELECT id, row_number() "  # noqa: S608
                    "OVER (PARTITION BY device_id ORDER BY ts_us, id) AS rn FROM readings "
                    f"WHERE ts_us >= ? AND ts_us < ?) AS stratum WHERE {condition}) "  # only ints
                    "AND id < (SELECT MAX(id) FROM readings)",
                    (lo, hi))
            # SQLite: deleting touches nearly every page; without a checkpoint per stratum the
            # WAL would grow by the size of the history, on the disk that is already too full.
            self.backend.after_delete()
        return deleted

    def give_back(self) -> None:
        """Hand freed space back to the filesystem."""
        self.backend.give_back()

