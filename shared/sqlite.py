"""What every SQLite file of the hub shares: numbered migrations recorded in
``schema_migrations``, each applied in one transaction, and a file whose schema is newer than
this code refused rather than touched."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.errors import ConfigError

log = logging.getLogger(__name__)

Migrations = list[tuple[int, str]]


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back what is open: SQLite has already rolled back on its own after some errors
    (SQLITE_FULL), and a second ROLLBACK would hide the real error behind "no transaction"."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


@contextmanager
def write_tx(conn: sqlite3.Connection, lock: threading.Lock | threading.RLock,
             ) -> Iterator[sqlite3.Connection]:
    """A write transaction under ``lock``: everything in it lands together or not at all."""
    with lock:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            rollback(conn)
            raise
        conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection, path: Path, migrations: Migrations, *, what: str,
            upto: int | None = None) -> None:
    """Apply the ``migrations`` this file lacks (only those up to version ``upto`` when given:
    a slow one can run later, off the start); ``what`` names the database in the log."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                 "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
    current = int(conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0)
    known = migrations[-1][0]
    if current > known:
        raise ConfigError(f"{path} has schema version {current}, newer than this code knows "
                          f"({known}); refusing to touch it")
    for version, sql in migrations:
        if version <= current or (upto is not None and version > upto):
            continue
        # executescript would commit on its own; run each statement in one transaction.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        log.info("%s %s migrated to version %d", what, path, version)
