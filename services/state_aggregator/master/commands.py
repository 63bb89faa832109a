"""The command queue: ``pending → sent → delivered → completed | failed | expired | canceled``.

Open commands (pending or sent) ride on every register, config and heartbeat answer, lowest
priority number first, until the sensor acknowledges them or they expire; each delivery counts
an attempt. Expiry is a query on ``expires_at``, so it holds right after a restart as well."""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

from shared.jsonutil import dumps, loads
from shared.master_models import (
    FINAL_COMMAND_STATES,
    OPEN_COMMAND_STATES,
    CommandAck,
    CommandCreate,
)
from shared.timeutil import iso, parse_iso

from .errors import Conflict, Invalid, NotFound, QueueFull

DELIVERY_BATCH = 20  # commands per answer; the rest follow on the next check-in
_OPEN = "('pending', 'sent')"


def command_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "command_id": row["command_id"], "sensor_id": row["sensor_id"],
        "command_type": row["command_type"], "command_data": loads(row["command_data"]),
        "priority": row["priority"], "status": row["status"], "attempts": row["attempts"],
        "result": loads(row["result"]) if row["result"] else None,
        "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"]),
        "expires_at": iso(row["expires_at"]),
    }


def wire(cmd: dict[str, Any]) -> dict[str, Any]:
    """A command as the sensor receives it (the contract's ``sensors/{s}/commands`` payload)."""
    return {k: cmd[k] for k in ("command_id", "command_type", "command_data", "priority",
                                "expires_at")}


class CommandQueue:
    def __init__(self, *, max_open: int, default_ttl: float) -> None:
        self.max_open = max_open
        self.default_ttl = default_ttl

    def create(self, conn: sqlite3.Connection, body: CommandCreate, now: float) -> dict[str, Any]:
        if body.expires_at is not None:
            try:
                expires = parse_iso(body.expires_at)
            except ValueError as exc:
                raise Invalid("invalid_body", f"expires_at: not an ISO 8601 time: {exc}") from exc
            if expires <= now:
                raise Invalid("invalid_body", f"expires_at: {body.expires_at} is already past")
        else:
            expires = now + (body.expires_in or self.default_ttl)
        (open_count,) = conn.execute(
            f"SELECT COUNT(*) FROM commands WHERE sensor_id = ? AND status IN {_OPEN}",  # noqa: S608
            (body.sensor_id,)).fetchone()
        if open_count >= self.max_open:
            raise QueueFull("queue_full",
                            f"sensor {body.sensor_id!r} already has {open_count} undelivered "
                            f"commands (at most {self.max_open}); wait for it to check in, or "
                            "cancel some")
        command_id = uuid.uuid4().hex[:16]
        conn.execute(
            "INSERT INTO commands (command_id, sensor_id, command_type, command_data, priority, "
            "status, created_at, updated_at, expires_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
            (command_id, body.sensor_id, body.command_type, dumps(body.command_data).decode(),
             body.priority, now, now, expires))
        return self.get(conn, command_id)

    @staticmethod
    def get(conn: sqlite3.Connection, command_id: str) -> dict[str, Any]:
        row = conn.execute("SELECT * FROM commands WHERE command_id = ?", (command_id,)).fetchone()
        if row is None:
            raise NotFound("unknown_command", f"no command {command_id!r}")
        return command_dict(row)

    @staticmethod
    def list_commands(conn: sqlite3.Connection, *, sensor_id: str | None, status: str | None,
                      limit: int) -> list[dict[str, Any]]:
        where, args = [], []
        if sensor_id is not None:
            where.append("sensor_id = ?")
            args.append(sensor_id)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        # Only the fixed clauses above are pasted in; the values are bound.
        sql = ("SELECT * FROM commands" + (" WHERE " + " AND ".join(where) if where else "")  # noqa: S608
               + " ORDER BY id DESC LIMIT ?")
        return [command_dict(r) for r in conn.execute(sql, [*args, limit])]

    def deliver(self, conn: sqlite3.Connection, sensor_id: str, now: float) -> list[dict[str, Any]]:
        """The open commands to hand to the sensor now, marked sent (one more attempt each)."""
        rows = conn.execute(
            f"SELECT * FROM commands WHERE sensor_id = ? AND status IN {_OPEN} AND expires_at > ? "  # noqa: S608
            "ORDER BY priority, id LIMIT ?", (sensor_id, now, DELIVERY_BATCH)).fetchall()
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        conn.execute(
            f"UPDATE commands SET status = 'sent', attempts = attempts + 1, updated_at = ? "  # noqa: S608
            f"WHERE id IN ({','.join('?' * len(ids))})", [now, *ids])
        return [wire(command_dict(r)) for r in rows]

    @staticmethod
    def has_open(conn: sqlite3.Connection, sensor_id: str, now: float) -> bool:
        row = conn.execute(
            f"SELECT 1 FROM commands WHERE sensor_id = ? AND status IN {_OPEN} AND expires_at > ? "  # noqa: S608
            "LIMIT 1", (sensor_id, now)).fetchone()
        return row is not None

    def ack(self, conn: sqlite3.Connection, command_id: str, body: CommandAck,
            now: float) -> dict[str, Any]:
        cmd = self.get(conn, command_id)
        if body.sensor_id is not None and body.sensor_id != cmd["sensor_id"]:
            raise Conflict("wrong_sensor", f"command {command_id!r} belongs to sensor "
                                           f"{cmd['sensor_id']!r}, not {body.sensor_id!r}")
        if cmd["status"] == body.status:
            return cmd  # the same ack again (a retry after a lost answer): nothing changes
        if cmd["status"] in FINAL_COMMAND_STATES:
            raise Conflict("command_final", f"command {command_id!r} is already {cmd['status']}")
        conn.execute("UPDATE commands SET status = ?, result = COALESCE(?, result), updated_at = ? "
                     "WHERE command_id = ?",
                     (body.status, dumps(body.result).decode() if body.result is not None else None,
                      now, command_id))
        return self.get(conn, command_id)

    def cancel(self, conn: sqlite3.Connection, command_id: str, now: float) -> dict[str, Any]:
        cmd = self.get(conn, command_id)
        if cmd["status"] in FINAL_COMMAND_STATES:
            raise Conflict("command_final", f"command {command_id!r} is already {cmd['status']}")
        conn.execute("UPDATE commands SET status = 'canceled', updated_at = ? WHERE command_id = ?",
                     (now, command_id))
        return self.get(conn, command_id)

    @staticmethod
    def expire(conn: sqlite3.Connection, now: float) -> int:
        """Mark every open command whose time has passed ``expired``; how many were."""
        cur = conn.execute(
            f"UPDATE commands SET status = 'expired', updated_at = ? "  # noqa: S608
            f"WHERE status IN {_OPEN} AND expires_at <= ?", (now, now))
        return cur.rowcount

    @staticmethod
    def cancel_all(conn: sqlite3.Connection, sensor_id: str, now: float) -> None:
        conn.execute(
            f"UPDATE commands SET status = 'canceled', updated_at = ? "  # noqa: S608
            f"WHERE sensor_id = ? AND status IN {_OPEN}", (now, sensor_id))


assert OPEN_COMMAND_STATES == ("pending", "sent")  # _OPEN spells the same states for SQL
