"""Effective configs and their versions: after anything that can change what a sensor receives
(a template, a group, a master, the sensor itself), ``recompute`` resolves the sensors concerned
and records a new version for each one whose document changed. A version number only grows; a
rollback is a new version with an old document, pinned until released."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.jsonutil import dumps, loads
from shared.timeutil import iso

from . import resolve
from .errors import NotFound
from .resolve import Resolution, Template


@dataclass(frozen=True, slots=True)
class Version:
    sensor_id: str
    version: int
    config_hash: str
    document: dict[str, Any]
    template_id: int | None
    reason: str
    created_at: float

    def as_dict(self) -> dict[str, Any]:
        return {"sensor_id": self.sensor_id, "config_version": self.version,
                "config_hash": self.config_hash, "template_id": self.template_id,
                "reason": self.reason, "created_at": iso(self.created_at), **self.document}


def template_from_row(row: sqlite3.Row) -> Template:
    return Template(id=row["id"], config_name=row["config_name"],
                    config_data=loads(row["config_data"]), priority=row["priority"],
                    is_active=bool(row["is_active"]), sensor_id=row["sensor_id"],
                    group=row["group_name"], sensor_type=row["sensor_type"],
                    master_id=row["master_id"])


def _version(row: sqlite3.Row) -> Version:
    return Version(row["sensor_id"], row["version"], row["config_hash"], loads(row["document"]),
                   row["template_id"], row["reason"], row["created_at"])


class ConfigEngine:
    def __init__(self, *, default_interval: float) -> None:
        self.default_interval = default_interval

    # --- reading -------------------------------------------------------------------------------
    @staticmethod
    def templates(conn: sqlite3.Connection) -> list[Template]:
        return [template_from_row(r) for r in conn.execute("SELECT * FROM templates ORDER BY id")]

    @staticmethod
    def masters(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        """The enabled masters in failover order: what every sensor's document carries."""
        rows = conn.execute("SELECT id, name, api_endpoint, priority FROM masters WHERE enabled "
                            "ORDER BY priority, id")
        return [{"name": r["name"], "api_endpoint": r["api_endpoint"], "priority": r["priority"]}
                for r in rows]

    @staticmethod
    def groups_of(conn: sqlite3.Connection, sensor_id: str) -> frozenset[str]:
        rows = conn.execute("SELECT group_name FROM group_members WHERE sensor_id = ?", (sensor_id,))
        return frozenset(r[0] for r in rows)

    def evaluate(self, conn: sqlite3.Connection, sensor: sqlite3.Row,
                 templates: list[Template] | None = None,
                 masters: list[dict[str, Any]] | None = None) -> tuple[Resolution, dict[str, Any]]:
        """The winning template and the document the sensor should receive (ignoring a pin)."""
        found = resolve.resolve(sensor["sensor_id"], sensor["sensor_type"],
                                self.groups_of(conn, sensor["sensor_id"]),
                                self.templates(conn) if templates is None else templates)
        winner = found.winner
        interval = resolve.check_in_interval(sensor["check_in_interval"],
                                             winner.config_data if winner else None,
                                             self.default_interval)
        doc = resolve.document(winner, interval=interval,
                               masters=self.masters(conn) if masters is None else masters)
        return found, doc

    @staticmethod
    def latest(conn: sqlite3.Connection, sensor_id: str) -> Version | None:
        row = conn.execute("SELECT * FROM config_versions WHERE sensor_id = ? "
                           "ORDER BY version DESC LIMIT 1", (sensor_id,)).fetchone()
        return _version(row) if row else None

    @staticmethod
    def version(conn: sqlite3.Connection, sensor_id: str, version: int) -> Version:
        row = conn.execute("SELECT * FROM config_versions WHERE sensor_id = ? AND version = ?",
                           (sensor_id, version)).fetchone()
        if row is None:
            raise NotFound("unknown_version", f"sensor {sensor_id!r} has no config version {version}")
        return _version(row)

    @staticmethod
    def history(conn: sqlite3.Connection, sensor_id: str, limit: int = 100) -> list[Version]:
        rows = conn.execute("SELECT * FROM config_versions WHERE sensor_id = ? "
                            "ORDER BY version DESC LIMIT ?", (sensor_id, limit))
        return [_version(r) for r in rows]

    # --- writing -------------------------------------------------------------------------------
    def _append(self, conn: sqlite3.Connection, sensor_id: str, doc: dict[str, Any], *,
                template_id: int | None, reason: str, now: float) -> Version | None:
        """Record ``doc`` as the next version unless it is what the sensor already has."""
        digest = resolve.config_hash(doc)
        last = self.latest(conn, sensor_id)
        if last is not None and last.config_hash == digest:
            return None
        number = 1 if last is None else last.version + 1
        conn.execute("INSERT INTO config_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (sensor_id, number, digest, dumps(doc).decode(), template_id, reason, now))
        # Kept beside the sensor so that judging 1,000 sensors' status is one query.
        conn.execute("UPDATE sensors SET effective_interval = ? WHERE sensor_id = ?",
                     (doc["check_in_interval"], sensor_id))
        return Version(sensor_id, number, digest, doc, template_id, reason, now)

    def recompute(self, conn: sqlite3.Connection, reason: str, now: float,
                  sensor_ids: Iterable[str] | None = None) -> list[Version]:
        """New versions for the sensors (all when ``None``) whose document changed; a sensor
        pinned by a rollback keeps its pinned document. Call inside a write transaction."""
        if sensor_ids is None:
            rows = conn.execute("SELECT * FROM sensors WHERE pinned_version IS NULL").fetchall()
        else:
            wanted = list(dict.fromkeys(sensor_ids))
            rows = []
            for start in range(0, len(wanted), 500):  # SQLite's limit on bound parameters
                chunk = wanted[start:start + 500]
                rows += conn.execute(
                    f"SELECT * FROM sensors WHERE pinned_version IS NULL AND sensor_id IN "  # noqa: S608
                    f"({','.join('?' * len(chunk))})", chunk).fetchall()
        templates, masters = self.templates(conn), self.masters(conn)
        changed = []
        for row in rows:
            found, doc = self.evaluate(conn, row, templates, masters)
            made = self._append(conn, row["sensor_id"], doc, reason=reason, now=now,
                                template_id=found.winner.id if found.winner else None)
            if made is not None:
                changed.append(made)
        return changed

    def sensors_for(self, conn: sqlite3.Connection, template: Template) -> list[str]:
        """The sensors a template can concern (before or after an edit)."""
        if template.sensor_id is not None:
            return [template.sensor_id]
        if template.group is not None:
            rows = conn.execute("SELECT sensor_id FROM group_members WHERE group_name = ?",
                                (template.group,))
        else:
            rows = conn.execute("SELECT sensor_id FROM sensors WHERE sensor_type = ?",
                                (template.sensor_type,))
        return [r[0] for r in rows]

    def rollback(self, conn: sqlite3.Connection, sensor_id: str, to: int, now: float) -> Version:
        """Pin the sensor to the document of version ``to``, as a new version."""
        old = self.version(conn, sensor_id, to)
        made = self._append(conn, sensor_id, old.document, template_id=old.template_id,
                            reason=f"rollback to version {to}", now=now)
        latest = made or self.latest(conn, sensor_id)
        assert latest is not None
        conn.execute("UPDATE sensors SET pinned_version = ? WHERE sensor_id = ?",
                     (latest.version, sensor_id))
        return latest
