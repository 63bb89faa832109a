"""Sensor tokens (no Flask): the credential a sensor that registered over the LAN uses for its own
heartbeat, config, data and command acks (the device registration with token refresh of seed
004). A token is issued at registration, stored only as a SHA-256 hash, expires after
``SENSOR_TOKEN_TTL``, can be refreshed before then, and can be revoked.

A token is ``<token_id>.<secret>``: the id (public, 16 hex digits) finds the row, the secret is
checked against the stored hash with ``hmac.compare_digest``, so neither a timing difference nor
a database lookup on the secret tells a guesser anything. Secrets are 256 random bits, so a
plain SHA-256 (not a slow password hash) is enough to make a stolen database useless.

A new token (a refresh, or the sensor registering again) does not cut off the ones before it at
once: they stay good for ``SENSOR_TOKEN_OVERLAP`` seconds more (never longer than they had), so
a sensor whose answer was lost on the way can still use the token it holds and ask again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.timeutil import iso

from .db import Database
from .errors import MasterError, NotFound

_DUMMY_HASH = hashlib.sha256(b"no such token").hexdigest()


class TokenRefused(MasterError):
    """Raised when a sensor token is missing, malformed, unknown, wrong, expired or revoked. The
    ``error`` code tells the sensor what to do (``token_expired``: register again); the message
    never says whether a token id exists."""

    status = 401


@dataclass(frozen=True, slots=True)
class TokenOptions:
    ttl: float = 7 * 86400.0  # a token's life
    overlap: float = 600.0  # how long the previous tokens stay good after a new one is issued


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class SensorTokens:
    def __init__(self, db: Database, *, options: TokenOptions | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.options = options or TokenOptions()
        self.clock = clock

    def _answer(self, token: str, token_id: str, sensor_id: str, now: float,
                expires: float) -> dict[str, Any]:
        return {"token": token, "token_id": token_id, "sensor_id": sensor_id,
                "token_expires_at": iso(expires), "token_expires_in": round(expires - now),
                # Half-way through its life: early enough that a sensor offline for a while
                # still refreshes in time, late enough not to refresh on every check-in.
                "token_refresh_after": iso(now + (expires - now) / 2)}

    def _issue(self, conn: sqlite3.Connection, sensor_id: str, now: float) -> dict[str, Any]:
        overlap_end = now + self.options.overlap
        conn.execute("UPDATE sensor_tokens SET expires_at = MIN(expires_at, ?) "
                     "WHERE sensor_id = ? AND revoked_at IS NULL", (overlap_end, sensor_id))
        conn.execute("DELETE FROM sensor_tokens WHERE sensor_id = ? AND expires_at < ?",
                     (sensor_id, now))
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        expires = now + self.options.ttl
        conn.execute("INSERT INTO sensor_tokens (token_id, sensor_id, secret_hash, issued_at, "
                     "expires_at) VALUES (?, ?, ?, ?, ?)",
                     (token_id, sensor_id, _hash(secret), now, expires))
        return self._answer(f"{token_id}.{secret}", token_id, sensor_id, now, expires)

    def issue(self, sensor_id: str) -> dict[str, Any]:
        """A new token for a registered sensor; its earlier tokens end after the overlap."""
        now = self.clock()
        with self.db.tx() as conn:
            if conn.execute("SELECT 1 FROM sensors WHERE sensor_id = ?",
                            (sensor_id,)).fetchone() is None:
                raise NotFound("unknown_sensor", f"sensor {sensor_id!r} is not registered")
            return self._issue(conn, sensor_id, now)

    def _check(self, conn: sqlite3.Connection, token: str, now: float) -> sqlite3.Row:
        token_id, dot, secret = token.partition(".")
        row: sqlite3.Row | None = conn.execute("SELECT * FROM sensor_tokens WHERE token_id = ?",
                           (token_id,)).fetchone() if dot else None
        # Compare even when nothing was found, so an unknown id costs the same as a wrong secret.
        stored = row["secret_hash"] if row is not None else _DUMMY_HASH
        if not hmac.compare_digest(_hash(secret), stored) or row is None:
            raise TokenRefused("invalid_token", "the sensor token is not valid: register again "
                                                "with the hub token to get a new one")
        if row["revoked_at"] is not None:
            raise TokenRefused("invalid_token", "the sensor token was revoked: register again "
                                                "with the hub token to get a new one")
        if row["expires_at"] <= now:
            raise TokenRefused("token_expired", "the sensor token has expired: register again "
                                                "with the hub token to get a new one")
        return row

    def verify(self, token: str) -> dict[str, Any]:
        """``{sensor_id, token_id, token_expires_at}`` of a good token; ``TokenRefused`` else."""
        now = self.clock()
        with self.db.read() as conn:
            row = self._check(conn, token, now)
        return {"sensor_id": row["sensor_id"], "token_id": row["token_id"],
                "token_expires_at": iso(row["expires_at"])}

    def refresh(self, token: str) -> dict[str, Any]:
        """A new token for the sensor of ``token`` (which must still be good); ``token`` itself
        stays good for the overlap window."""
        now = self.clock()
        with self.db.tx() as conn:
            row = self._check(conn, token, now)
            return self._issue(conn, row["sensor_id"], now)

    def list(self, sensor_id: str) -> list[dict[str, Any]]:
        """The sensor's tokens without their secrets, newest first."""
        now = self.clock()
        with self.db.read() as conn:
            rows = conn.execute("SELECT * FROM sensor_tokens WHERE sensor_id = ? "
                                "ORDER BY issued_at DESC", (sensor_id,)).fetchall()
        return [{"token_id": r["token_id"], "issued_at": iso(r["issued_at"]),
                 "expires_at": iso(r["expires_at"]),
                 "revoked_at": iso(r["revoked_at"]) if r["revoked_at"] is not None else None,
                 "valid": r["revoked_at"] is None and r["expires_at"] > now} for r in rows]

    def revoke(self, sensor_id: str, token_id: str | None = None) -> int:
        """Revoke one token of the sensor, or all of them; how many were still good."""
        now = self.clock()
        query = ("UPDATE sensor_tokens SET revoked_at = ? WHERE sensor_id = ? AND "
                 "revoked_at IS NULL AND expires_at > ?")
        args: tuple[Any, ...] = (now, sensor_id, now)
        if token_id is not None:
            query += " AND token_id = ?"
            args += (token_id,)
        with self.db.tx() as conn:
            return conn.execute(query, args).rowcount
