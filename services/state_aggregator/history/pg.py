"""The history's PostgreSQL backend, for ``DATABASE_URL=postgresql://...``: how a hub outgrows
one box (a central hub, or several edge hubs, keeping their history on a real server). psycopg 3.

The schema is the SQLite one in PostgreSQL's types: ``payload`` is JSONB, ids come from an
identity column, ``ts_utc`` is there too as a ``timestamptz`` computed from ``ts_us`` (for people
who query the server themselves), and the same indexes: (device_id, ts_us), ts_us and the
idempotency key (device_id, rkey). Migrations are numbered as SQLite's, applied under an advisory
lock so two hubs starting against one server do not race.

The connections are made when first needed and made again after the server went away. While
the server is unreachable the writer keeps its queue and tries again (``HistoryWriter``), so a
server restart costs no readings unless the queue (``HISTORY_QUEUE``) fills meanwhile. A server
that is down when the aggregator starts is the same case (``start_error``): the writer connects
with backoff and migrates when it answers (a connection refused for a database that does not
exist yet or for credentials is retried too: both heal on the server's side). A schema newer
than the code still stops the history at start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .store import StoreError

log = logging.getLogger(__name__)

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
    CREATE TABLE readings (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        device_id TEXT NOT NULL,
        ts_us BIGINT NOT NULL,
        ts_local TEXT NOT NULL,
        rkey TEXT NOT NULL,
        payload JSONB NOT NULL,
        ts_utc TIMESTAMPTZ GENERATED ALWAYS AS (to_timestamp(ts_us / 1000000.0)) STORED
    );
    CREATE UNIQUE INDEX readings_key ON readings(device_id, rkey);
    CREATE INDEX readings_device_ts ON readings(device_id, ts_us);
    CREATE INDEX readings_ts ON readings(ts_us);
    CREATE TABLE devices (device_id TEXT PRIMARY KEY)
    """),
    (2, """
    CREATE TABLE reader_cursors (reader TEXT PRIMARY KEY, last_id BIGINT NOT NULL)
    """),
]
MIGRATION_LOCK = 0x5E50_4855  # pg_advisory_xact_lock key: "sensor-hub history"
CONNECT_TIMEOUT_S = 5
FULL_STATES = {"53100", "53200", "53400"}  # disk_full, out_of_memory, configuration_limit


@lru_cache(maxsize=256)
def _sql(sql: str) -> str:
    """The store's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled first)."""
    return sql.replace("%", "%%").replace("?", "%s")


def display(url: str) -> str:
    """The URL without its password, for logs and ``/health``."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable DATABASE_URL)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"


class _PgTx:
    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self.cur = cur

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        self.cur.execute(_sql(sql), args)
        return self.cur.rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        self.cur.executemany(_sql(sql), rows)
        return self.cur.rowcount  # summed over the rows since psycopg 3.1

    def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.cur.execute(_sql(sql), args)
        return self.cur.fetchall()


class PostgresBackend:
    kind = "postgresql"
    payload_sql = "r.payload::text"
    local_dir: Path | None = None  # the server's disk is not this host's to measure

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = display(url)
        self.lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._writer: psycopg.Connection[Any] | None = None
        self._reader: psycopg.Connection[Any] | None = None
        self._migrated = False
        self.start_error: StoreError | None = None
        with self.lock:
            try:
                self._connection()  # migrate now: a bad URL or schema shows at start
            except StoreError as exc:
                if not exc.unavailable:
                    raise
                # The server is away (not up yet, restarting): the writer connects (and
                # migrates) when it answers; readings queue meanwhile.
                self.start_error = exc

    def _error(self, exc: psycopg.Error) -> StoreError:
        # No SQLSTATE: the connection failed or broke; class 08 is a connection exception,
        # 57P01-03 the server shutting down or starting up.
        gone = isinstance(exc, psycopg.OperationalError) and (
            exc.sqlstate is None or exc.sqlstate.startswith(("08", "57P")))
        return StoreError(f"{self.where}: {str(exc).strip()}", full=exc.sqlstate in FULL_STATES,
                          unavailable=gone)

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                   application_name="sensor-hub history")
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    def _connection(self) -> psycopg.Connection[Any]:
        """The writing connection, made (and the schema migrated) when there is none."""
        if self._writer is None or self._writer.closed or self._writer.broken:
            self._writer = self._connect()
            if not self._migrated:
                self._migrate(self._writer)
                self._migrated = True
        return self._writer

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                             "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
                row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
                current = int(row[0] or 0) if row else 0
            known = MIGRATIONS[-1][0]
            if current > known:
                raise StoreError(f"{self.where} has history schema version {current}, newer "
                                 f"than this code knows ({known}); refusing to touch it")
            for version, sql in MIGRATIONS:
                if version <= current:
                    continue
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                    found = conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s",
                                         (version,)).fetchone()
                    if found:  # another hub applied it meanwhile
                        continue
                    for statement in sql.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)",
                                 (version, time.time()))
                log.info("history database %s migrated to version %d", self.where, version)
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    def close(self) -> None:
        with self.lock, self._read_lock:
            for conn in (self._writer, self._reader):
                if conn is not None:
                    conn.close()

    @contextmanager
    def transaction(self) -> Iterator[_PgTx]:
        with self.lock:
            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    yield _PgTx(cur)
            except psycopg.Error as exc:
                raise self._error(exc) from exc

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            if self._reader is None or self._reader.closed or self._reader.broken:
                self._reader = self._connect()
            try:
                return self._reader.execute(_sql(sql), args).fetchall()
            except psycopg.Error as exc:
                raise self._error(exc) from exc

    def used_bytes(self) -> int:
        """Bytes of the history's tables with their indexes and TOAST."""
        found = self.read("SELECT pg_total_relation_size('readings') + "
                          "pg_total_relation_size('devices')")
        return int(found[0][0])

    def file_bytes(self) -> int:
        return self.used_bytes()

    def upgrade(self) -> None:
        """Nothing: every migration runs at the first connection."""

    def after_delete(self) -> None:
        """Nothing: PostgreSQL's WAL is the server's to manage."""

    def give_back(self) -> None:
        """A plain VACUUM: the deleted rows' space is reused by new ones (and the file's empty
        tail returned); VACUUM FULL would give all of it back but lock the table meanwhile."""
        with self.lock:
            try:
                self._connection().execute("VACUUM readings")
            except psycopg.Error as exc:
                raise self._error(exc) from exc
