"""Timestamps. Inside the hub time is float epoch seconds; on the wire it is ISO 8601 UTC with a
``Z`` and milliseconds, as the contract requires."""

from __future__ import annotations

import time
from datetime import UTC, datetime

# The latest time a sensor may report: every time zone's local date still fits in datetime there
# (``iso`` and the history's ``ts_local`` build one). Times from outside [0, EPOCH_MAX) are refused
# where they enter the hub, so nothing downstream (a writer thread, the bridge) meets them.
EPOCH_MAX = 253_402_214_400.0  # 9999-12-31T00:00:00Z
# The times an observation may carry (``shared.models.ObsTime``): from 2000-01-01 to FUTURE_SKEW_S
# ahead of the hub's clock. Earlier is an uptime counter or a clock not set yet, not a time; a
# reading stamped later would freeze its device's state until the clock caught up.
EARLIEST_OBS_TS = 946_684_800.0  # 2000-01-01T00:00:00Z
FUTURE_SKEW_S = 300.0


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


def obs_time_problem(ts: float, now: float) -> str | None:
    """Why ``ts`` cannot be an observation's time when the hub's clock says ``now`` (``None``:
    it can)."""
    # A hub whose own clock is not set yet (a board without a real-time clock, before NTP) still
    # takes its own readings: the 2000 floor holds only once the clock is past it.
    earliest = EARLIEST_OBS_TS if now >= EARLIEST_OBS_TS else 0.0
    if ts >= earliest and ts <= now + FUTURE_SKEW_S:  # NaN fails both
        return None
    if not in_range(ts):
        return f"{ts!r:.40} is not a time between 1970 and 9999"
    if ts < earliest:
        return (f"{iso(ts)} is before 2000-01-01: an uptime counter or a clock not set yet, "
                "not a time")
    return (f"{iso(ts)} is in the future: more than {FUTURE_SKEW_S:g} s ahead of the hub's clock "
            f"({iso(now)})")
