"""The durable change log in SQLite, free of Flask and threads.

Every change the aggregator accepts is a row of ``log`` (its ``seq``, device, kind, time and the
change as JSON), written in the same transaction as the handler batch's id (``batches``) and the
device's last state (``devices``), before the handler is answered. Readers (the MQTT bridge)
keep a committed position in ``cursors``; rows every reader has passed are deleted, and what is
still unread is bounded by thinning old intermediate states.

A sibling of the readings history, not its table: the log holds every kind of change and lives
only until it is published, the history keeps readings for months (and may live in PostgreSQL);
an append here costs a third of a history insert (bench/outbox_log.py).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter

from shared.models import Change, StateChange
from shared.sqlite import write_tx

from ..history.db import connect, open_db

log = logging.getLogger(__name__)

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE log (
        seq INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        ts REAL NOT NULL,
        body BLOB NOT NULL
    );
    -- A reader's committed position: everything up to ``seq`` is delivered.
    CREATE TABLE cursors (reader TEXT PRIMARY KEY, seq INTEGER NOT NULL, at REAL NOT NULL);
    -- Handler batches already applied, with their answer: a resent batch is not applied again.
    CREATE TABLE batches (batch_id TEXT PRIMARY KEY, accepted INTEGER NOT NULL,
                          rejected INTEGER NOT NULL, at REAL NOT NULL);
    CREATE INDEX batches_at ON batches(at);
    -- Each device's last state: its per-device seq goes on after a restart, and a resent
    -- reading is recognised as one already held.
    CREATE TABLE devices (device_id TEXT PRIMARY KEY, state BLOB NOT NULL) WITHOUT ROWID
    """),
]

_CHANGE = TypeAdapter(Change)
_STATE = TypeAdapter(StateChange)
BATCH_IDS_KEPT_S = 24 * 3600.0
# Thinned only when thinning the intermediate states is not enough (availability and registry
# changes never: each is rare, and a consumer needs the last one).
OTHER_KINDS = ("event", "error", "command")  # a handler's batch is resent within minutes, not days


@dataclass(frozen=True, slots=True)
class Pending:
    """What readers have not yet passed: rows, bytes, the oldest row's time."""

    rows: int
    bytes: int
    oldest_ts: float | None


class OutboxStore:
    """One writing connection behind a lock, one for the readers' pages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = open_db(path, MIGRATIONS, what="outbox")
        self._lock = threading.RLock()
        self._reader = connect(path)
        self._read_lock = threading.Lock()
        self.epoch = self._epoch()
        self.floor = self._floor()

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._conn.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return write_tx(self._conn, self._lock)

    def _epoch(self) -> str:
        """The log's identity, kept across restarts: a reader's position stays valid until the
        file is replaced (moved aside when corrupt)."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if row is not None:
            return str(row[0])
        epoch = uuid.uuid4().hex[:12]
        with self._tx() as conn:
            conn.execute("INSERT INTO meta VALUES ('epoch', ?)", (epoch,))
        return epoch

    def _floor(self) -> int:
        """Everything after this seq is still here (or was thinned, which never takes a
        device's last change of a kind): what ``release`` deleted lies at or below it."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'released'").fetchone()
        if row is not None:
            return int(row[0])
        # A file from before the mark was kept: release deleted nothing past the slowest
        # reader's cursor (thinning may have taken the rows right after it).
        slowest = self._conn.execute("SELECT MIN(seq) FROM cursors").fetchone()[0]
        return 0 if slowest is None else int(slowest)

    # --- writing --------------------------------------------------------------------------------
    def append(self, changes: Sequence[tuple[Change, bytes]], *,
               batch: tuple[str, int, int] | None = None) -> None:
        """Store ``changes`` (each with its JSON) and the handler batch ``(id, accepted,
        rejected)`` they came in, in one transaction; ``sqlite3.Error`` when the disk refuses
        (nothing is stored then)."""
        now = time.time()
        last_states: dict[str, bytes] = {}
        rows = []
        for change, body in changes:
            rows.append((change.seq, change.device_id, change.kind, change.ts, body))
            if isinstance(change, StateChange):
                last_states[change.device_id] = body
        with self._tx() as conn:
            conn.executemany("INSERT OR REPLACE INTO log VALUES (?, ?, ?, ?, ?)", rows)
            if last_states:
                conn.executemany("INSERT OR REPLACE INTO devices VALUES (?, ?)",
                                 list(last_states.items()))
            if batch is not None:
                conn.execute("INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?)", (*batch, now))

    # --- reading --------------------------------------------------------------------------------
    def last_seq(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM log").fetchone()[0])

    def states(self) -> list[StateChange]:
        """Each device's last state, as stored."""
        with self._lock:
            rows = self._conn.execute("SELECT state FROM devices").fetchall()
        return [_STATE.validate_json(r[0]) for r in rows]

    def batch_answers(self, newest: int) -> list[tuple[str, int, int]]:
        """The ``newest`` handler batches applied, oldest first: (id, accepted, rejected)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT batch_id, accepted, rejected FROM batches ORDER BY at DESC LIMIT ?",
                (newest,)).fetchall()
        return [(r[0], int(r[1]), int(r[2])) for r in reversed(rows)]

    def since(self, seq: int, limit: int, *, before: int | None = None) -> list[tuple[int, bytes]]:
        """The stored changes after ``seq`` (and before ``before``), oldest first, as ``(seq,
        JSON)``; thinned ones are gaps."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT seq, body FROM log WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                (seq, before if before is not None else 2**62, limit)).fetchall()
        return [(int(r[0]), bytes(r[1])) for r in rows]

    def changes(self, seq: int = 0, limit: int = 1_000_000) -> list[Change]:
        """The stored changes after ``seq`` as models (tests, tools)."""
        return [_CHANGE.validate_json(body) for _, body in self.since(seq, limit)]

    def first_seq(self) -> int | None:
        with self._lock:
            row = self._conn.execute("SELECT MIN(seq) FROM log").fetchone()
        return None if row[0] is None else int(row[0])

    # --- readers' cursors -----------------------------------------------------------------------
    def commit(self, reader: str, seq: int) -> None:
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO cursors VALUES (?, ?, ?)",
                         (reader, seq, time.time()))

    def cursors(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT reader, seq FROM cursors").fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def pending(self, after: int) -> Pending:
        """Rows after ``after`` (the slowest reader's position)."""
        with self._read_lock:
            rows, size, oldest = self._reader.execute(
                "SELECT COUNT(*), COALESCE(SUM(length(body)), 0), MIN(ts) FROM log WHERE seq > ?",
                (after,)).fetchone()
        return Pending(int(rows), int(size), None if oldest is None else float(oldest))

    # --- keeping it small -----------------------------------------------------------------------
    def release(self, upto: int) -> int:
        """Delete the rows up to ``upto`` (the newest row stays: it carries ``seq`` over a
        restart), and batch ids older than a day; ``floor`` becomes ``upto``."""
        with self._tx() as conn:
            deleted = conn.execute(
                "DELETE FROM log WHERE seq <= ? AND seq < (SELECT MAX(seq) FROM log)",
                (upto,)).rowcount
            conn.execute("DELETE FROM batches WHERE at < ?", (time.time() - BATCH_IDS_KEPT_S,))
            if upto > self.floor:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('released', ?)", (str(upto),))
        self.floor = max(self.floor, upto)
        return int(deleted)

    def notes_between(self, since: int, until: int, limit: int) -> list[bytes]:
        """The newest ``limit`` events, errors and command results after ``since`` up to
        ``until``, oldest first, as JSON."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT body FROM log WHERE seq > ? AND seq <= ? AND kind IN "
                "('event', 'error', 'command') ORDER BY seq DESC LIMIT ?",
                (since, until, limit)).fetchall()
        return [bytes(r[0]) for r in reversed(rows)]

    def devices_between(self, since: int, until: int) -> list[str]:
        """The devices with a stored change after ``since`` up to ``until``."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT DISTINCT device_id FROM log WHERE seq > ? AND seq <= ?",
                (since, until)).fetchall()
        return [str(r[0]) for r in rows]

    def thin(self, after: int, keep_every: int, *, newest_share: float = 0.1,
             kinds: tuple[str, ...] = ("state",)) -> int:
        """Delete unread rows of ``kinds`` evenly across time: of each device's rows of each
        kind after ``after``, keep every ``keep_every``-th and its newest. The newest
        ``newest_share`` of the unread rows (by seq) stays whole: the live edge is not thinned.
        The aggregator thins intermediate states (the default) and, only when that is not
        enough, events, errors and command results (``OTHER_KINDS``). Returns rows deleted."""
        with self._lock:
            lo, hi = self._conn.execute(
                "SELECT MIN(seq), MAX(seq) FROM log WHERE seq > ?", (after,)).fetchone()
        if lo is None:
            return 0
        edge = hi - int((hi - lo) * newest_share)
        with self._tx() as conn:
            deleted = conn.execute(
                "DELETE FROM log WHERE seq IN (SELECT seq FROM (SELECT seq, row_number() OVER "
                "(PARTITION BY device_id, kind ORDER BY seq) AS rn, row_number() OVER (PARTITION "
                "BY device_id, kind ORDER BY seq DESC) AS back FROM log WHERE kind IN (SELECT "
                "value FROM json_each(?)) AND seq > ? AND seq < ?) WHERE back > 1 AND rn % ? != 0)",
                (json.dumps(kinds), after, edge, max(2, keep_every))).rowcount
        return int(deleted)

    def checkpoint(self, mode: str = "PASSIVE") -> None:
        with self._lock:
            self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()

    def give_back(self, step_pages: int = 256) -> None:
        """Hand free pages back to the filesystem (see the history's ``give_back``)."""
        with self._lock:
            for _ in range(10_000):
                if int(self._conn.execute("PRAGMA freelist_count").fetchone()[0]) == 0:
                    break
                self._conn.execute(f"PRAGMA incremental_vacuum({int(step_pages)})").fetchall()
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def file_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"))
                   if p.exists())

