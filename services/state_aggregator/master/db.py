"""Master control's SQLite database under DATA_DIR: opened in WAL mode, schema brought up to date
by numbered migrations recorded in ``schema_migrations`` (a migration runs once, in its own
transaction; a newer database than this code knows is refused rather than damaged)."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from shared.sqlite import migrate, rollback, write_tx

log = logging.getLogger(__name__)

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
    CREATE TABLE masters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL DEFAULT '',
        api_endpoint TEXT NOT NULL,
        priority INTEGER NOT NULL,
        enabled INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE sensors (
        sensor_id TEXT PRIMARY KEY,
        sensor_name TEXT,
        sensor_type TEXT NOT NULL,
        hardware_info TEXT,
        firmware_version TEXT,
        ip_address TEXT,
        mac_address TEXT,
        capabilities TEXT NOT NULL DEFAULT '[]',
        registered_at REAL NOT NULL,
        first_check_in REAL,
        last_check_in REAL,
        applied_hash TEXT,
        metrics TEXT NOT NULL DEFAULT '{}',
        check_in_interval REAL,
        effective_interval REAL,
        pinned_version INTEGER
    );
    CREATE TABLE templates (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        master_id INTEGER REFERENCES masters(id) ON DELETE SET NULL,
        config_name TEXT NOT NULL,
        sensor_id TEXT,
        group_name TEXT,
        sensor_type TEXT,
        config_data TEXT NOT NULL,
        priority INTEGER NOT NULL,
        is_active INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        CHECK ((sensor_id IS NOT NULL) + (group_name IS NOT NULL) + (sensor_type IS NOT NULL) = 1)
    );
    -- Kept when a sensor is deleted, so that a sensor registering again continues its numbering.
    CREATE TABLE config_versions (
        sensor_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        config_hash TEXT NOT NULL,
        document TEXT NOT NULL,
        template_id INTEGER,
        reason TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (sensor_id, version)
    ) WITHOUT ROWID;
    CREATE TABLE groups (
        group_name TEXT PRIMARY KEY,
        description TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
    CREATE TABLE group_members (
        group_name TEXT NOT NULL REFERENCES groups(group_name) ON DELETE CASCADE,
        sensor_id TEXT NOT NULL,
        PRIMARY KEY (group_name, sensor_id)
    ) WITHOUT ROWID;
    CREATE INDEX group_members_sensor ON group_members(sensor_id);
    CREATE TABLE commands (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        command_id TEXT NOT NULL UNIQUE,
        sensor_id TEXT NOT NULL,
        command_type TEXT NOT NULL,
        command_data TEXT NOT NULL,
        priority INTEGER NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        result TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX commands_by_sensor ON commands(sensor_id, status, priority, id);
    CREATE INDEX commands_by_status ON commands(status, expires_at);
    -- Keys of uploaded readings, so that a replayed batch is not ingested twice.
    CREATE TABLE readings_seen (
        sensor_id TEXT NOT NULL,
        reading_key TEXT NOT NULL,
        seen_at REAL NOT NULL,
        PRIMARY KEY (sensor_id, reading_key)
    ) WITHOUT ROWID;
    CREATE INDEX readings_seen_age ON readings_seen(seen_at);
    """),
    # Sensor tokens (tokens.py): only the hash of the secret is kept; a deleted sensor's go too.
    (2, """
    CREATE TABLE sensor_tokens (
        token_id TEXT PRIMARY KEY,
        sensor_id TEXT NOT NULL REFERENCES sensors(sensor_id) ON DELETE CASCADE,
        secret_hash TEXT NOT NULL,
        issued_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        revoked_at REAL
    ) WITHOUT ROWID;
    CREATE INDEX sensor_tokens_by_sensor ON sensor_tokens(sensor_id);
    """),
]


class Database:
    """One connection shared by the service's threads behind a lock: master control's writes
    are small, and one writer is what SQLite allows anyway."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode loses at most the last transactions on power loss, never consistency.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    @property
    def schema_version(self) -> int:
        row = self._conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def _migrate(self) -> None:
        with self._lock:
            migrate(self._conn, self.path, MIGRATIONS, what="master control database")

    def tx(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction; everything in it lands together or not at all."""
        return write_tx(self._conn, self._lock)

    @contextmanager
    def dry_run(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that is always rolled back: what a change *would* do, found by
        the very code that makes it."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            finally:
                rollback(self._conn)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()
