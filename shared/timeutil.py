"""Timestamps. Inside the hub time is float epoch seconds; on the wire it is ISO 8601 UTC with a
``Z`` and milliseconds, as the contract requires."""

from __future__ import annotations

import time
from datetime import UTC, datetime

# The latest time a sensor may report: every time zone's local date still fits in datetime there
# (``iso`` and the history's ``ts_local`` build one). Times from outside [0, EPOCH_MAX) are refused
# where they enter the hub, so nothing downstream (a writer thread, the bridge) meets them.
EPOCH_MAX = 253_402_214_400.0  # 9999-12-31T00:00:00Z


def now() -> float:
    return time.time()


def iso(ts: float | None = None) -> str:
    """``2026-01-01T12:00:00.123Z`` for an epoch time (now when omitted)."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso(value: str) -> float:
    """Epoch seconds from an ISO 8601 timestamp; a naive one is taken as UTC."""
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def in_range(ts: float) -> bool:
    """Whether ``ts`` is an epoch time the hub can render (1970 to 9999; never NaN or inf)."""
    return 0.0 <= ts < EPOCH_MAX
