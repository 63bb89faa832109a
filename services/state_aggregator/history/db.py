"""The history's SQLite backend: a file opened the way master control opens its own
(``master/db.py``): WAL, ``synchronous=NORMAL``, a busy timeout, numbered migrations recorded in
``schema_migrations``, each in one transaction, and a newer schema than this code knows refused.

Two differences, both for a file that grows without bound: ``auto_vacuum=INCREMENTAL`` is set
before the first table exists, so retention can hand freed pages back to the filesystem (a full
disk is the reason it runs); and a file that is not a database is moved aside with a log line
and a fresh one started, since a history must never stop the aggregator from starting.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shared.sqlite import migrate, rollback

from .store import StoreError

log = logging.getLogger(__name__)

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
    (2, """
    -- Where each reader of the history (the forwarder) has got to: the last row id it has
    -- handed on. Row ids only grow (store.py), so what comes after is what it has not seen.
    CREATE TABLE reader_cursors (reader TEXT PRIMARY KEY, last_id INTEGER NOT NULL) WITHOUT ROWID
    """),
    (3, """
    -- A covering index for a device's time range (GET /api/readings?device_id, meta history,
    -- the dashboard's charts): the readings of one device are interleaved with every other
    -- device's in the table, so a day of one device out of 1,000 cost a table page per reading
    -- (1,000 random reads). In this index they lie side by side with everything the answer
    -- needs, in the keyset's order (ts_us, id): a few dozen pages. Figures: bench/README.md.
    DROP INDEX readings_device_ts;
    CREATE INDEX readings_device_ts ON readings(device_id, ts_us, id, ts_local, rkey, payload)
    """),
]
# Migrations past this one rebuild an index of the whole table (94 s at 10 million readings on
# the shared test machine): on a file with more than SLOW_ROWS readings they run on the writer's
# thread once it starts (``upgrade``), not at open, where they would hold up the aggregator's
# start past gunicorn's worker timeout. Queries meanwhile use the old index (WAL readers).
AT_OPEN_UPTO = 2
SLOW_ROWS = 100_000


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL set up."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=5000")
    # Only takes effect on a file without tables: before the migrations create them.
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode loses at most the last transactions on power loss, never consistency.
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def at_open_upto(conn: sqlite3.Connection) -> int | None:
    """How far the history's migrations go at open: all of them on a small file, only up to
    ``AT_OPEN_UPTO`` on a large one (the rest: ``SqliteBackend.upgrade``)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'readings'").fetchone() is None:
        return None  # a new file: every migration, on no rows
    return None if _rows(conn) <= SLOW_ROWS else AT_OPEN_UPTO


def _rows(conn: sqlite3.Connection) -> int:
    """About how many readings the file holds (the highest id: instant, unlike a count)."""
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM readings").fetchone()[0])


def open_db(path: Path, migrations: list[tuple[int, str]], *, what: str = "history database",
            upto: Callable[[sqlite3.Connection], int | None] | None = None) -> sqlite3.Connection:
    """The file, migrated (only up to what ``upto`` says for it, when given); a file that is
    not a database is moved aside and a new one started."""

    def _migrate(conn: sqlite3.Connection) -> None:
        migrate(conn, path, migrations, what=what, upto=upto(conn) if upto else None)

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = connect(path)
        _migrate(conn)
    except sqlite3.DatabaseError as exc:
        if not isinstance(exc, sqlite3.OperationalError) or "not a database" in str(exc):
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.error("%s %s is unreadable (%s); moved aside to %s, starting a new one",
                      what, path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                part = Path(f"{path}{suffix}")
                if part.exists():
                    part.rename(Path(f"{aside}{suffix}"))
            conn = connect(path)
            _migrate(conn)
        else:
            raise
    return conn


def _error(exc: sqlite3.Error, path: Path) -> StoreError:
    return StoreError(f"{path}: {exc}", full="full" in str(exc).lower())


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, args).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return self.conn.executemany(sql, rows).rowcount

    def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, args).fetchall()


class SqliteBackend:
    """One writing connection behind a lock (SQLite allows one writer anyway) and one for the
    queries."""

    kind = "sqlite"
    payload_sql = "r.payload"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self.local_dir: Path | None = path.parent
        try:
            self.conn = open_db(path, MIGRATIONS, upto=at_open_upto)
            # Queries read on a connection of their own: in WAL mode a reader runs beside the
            # writer, so a page is not held up by a batch insert or a retention transaction.
            self._reader = connect(path)
        except sqlite3.Error as exc:
            raise _error(exc, path) from exc
        self.lock = threading.RLock()
        self._read_lock = threading.Lock()

    def close(self) -> None:
        with self.lock, self._read_lock:
            self._reader.close()
            self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[_SqliteTx]:
        with self.lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield _SqliteTx(self.conn)
                except BaseException:
                    rollback(self.conn)
                    raise
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                rollback(self.conn)
                raise _error(exc, self.path) from exc

    def upgrade(self) -> None:
        """Apply the migrations left for after the start (a large file's index rebuild)."""
        with self.lock:
            current = int(self.conn.execute(
                "SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0)
            if current >= MIGRATIONS[-1][0]:
                return
            rows = _rows(self.conn)
            log.info("history database %s: upgrading the schema of about %d readings "
                     "(the writer waits; readings queue meanwhile)", self.path, rows)
            started = time.monotonic()
            try:
                migrate(self.conn, self.path, MIGRATIONS, what="history database")
            except sqlite3.Error as exc:
                raise _error(exc, self.path) from exc
            log.info("history database %s upgraded in %.1f s", self.path,
                     time.monotonic() - started)

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._read_lock:
                return self._reader.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise _error(exc, self.path) from exc

    def _pragma(self, name: str) -> int:
        return int(self.conn.execute(f"PRAGMA {name}").fetchone()[0])

    def used_bytes(self) -> int:
        """Bytes the history's pages hold (the file less its free pages, plus the WAL)."""
        with self.lock:
            try:
                used = (self._pragma("page_count") - self._pragma("freelist_count")) \
                    * self._pragma("page_size")
            except sqlite3.Error as exc:
                raise _error(exc, self.path) from exc
        wal = Path(f"{self.path}-wal")
        return used + (wal.stat().st_size if wal.exists() else 0)

    def file_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"))
                   if p.exists())

    def after_delete(self) -> None:
        self._checkpoint("PASSIVE")

    def give_back(self, step_pages: int = 256) -> None:
        """Hand free pages back to the filesystem, a few at a time with a checkpoint between,
        so the WAL never needs much room; then shrink the WAL file itself."""
        with self.lock:
            try:
                while self._pragma("freelist_count") > 0:
                    self.conn.execute(f"PRAGMA incremental_vacuum({int(step_pages)})").fetchall()
                    self._checkpoint("PASSIVE")
                self._checkpoint("TRUNCATE")
            except sqlite3.Error as exc:
                raise _error(exc, self.path) from exc

    def _checkpoint(self, mode: str) -> None:
        with self.lock:
            try:
                self.conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
            except sqlite3.Error as exc:
                raise _error(exc, self.path) from exc
