"""Opening the history's SQLite file the way master control opens its own (``master/db.py``):
WAL, ``synchronous=NORMAL``, a busy timeout, numbered migrations recorded in
``schema_migrations``, each in one transaction, and a newer schema than this code knows refused.

Two differences, both for a file that grows without bound: ``auto_vacuum=INCREMENTAL`` is set
before the first table exists, so retention can hand freed pages back to the filesystem (a full
disk is the reason it runs); and a file that is not a database is moved aside with a log line
and a fresh one started, since a history must never stop the aggregator from starting.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from shared.sqlite import migrate

log = logging.getLogger(__name__)


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


def open_db(path: Path, migrations: list[tuple[int, str]]) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = connect(path)
        migrate(conn, path, migrations, what="history database")
    except sqlite3.DatabaseError as exc:
        if not isinstance(exc, sqlite3.OperationalError) or "not a database" in str(exc):
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.error("history database %s is unreadable (%s); moved aside to %s, starting "
                      "a new one", path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                part = Path(f"{path}{suffix}")
                if part.exists():
                    part.rename(Path(f"{aside}{suffix}"))
            conn = connect(path)
            migrate(conn, path, migrations, what="history database")
        else:
            raise
    return conn
