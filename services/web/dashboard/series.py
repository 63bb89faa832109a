"""A device page's chart data, free of Flask: the stored readings history (the aggregator's
``/history/readings``) for the chosen range, then what the live feed brought after it, thinned
to at most ``MAX_POINTS`` per chart so a day of 1 s readings still draws at once; and the
range's min/max/mean of each numeric property."""

from __future__ import annotations

from typing import Any

from shared.history_models import PAGE_MAX
from shared.timeutil import iso, parse_iso

from .feed import numeric

RANGES_S = {"1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600}
MAX_POINTS = 2000

Point = tuple[float, dict[str, float]]


def from_history(readings: list[dict[str, Any]]) -> list[Point]:
    """``/history/readings`` rows as chart points (time, numeric values)."""
    out: list[Point] = []
    for r in readings:
        values = numeric(r.get("payload") or {})
        if values:
            out.append((parse_iso(str(r["ts_utc"])), values))
    return out


def merge(stored: list[Point], live: list[Point], *, since: float) -> list[Point]:
    """The stored points, then the live ones newer than the last stored (a live point is often
    the same reading the history stored), all at or after ``since``."""
    last = stored[-1][0] if stored else since
    points = [p for p in stored if p[0] >= since] + [p for p in live if p[0] > last]
    if len(points) > MAX_POINTS:  # thin evenly; keep the newest
        step = len(points) / MAX_POINTS
        points = [points[int(i * step)] for i in range(MAX_POINTS - 1)] + [points[-1]]
    return points


def stats(points: list[Point]) -> dict[str, dict[str, float]]:
    """Per property: min, max, mean and count over ``points``."""
    acc: dict[str, list[float]] = {}
    for _, values in points:
        for key, value in values.items():
            acc.setdefault(key, []).append(value)
    return {k: {"min": min(v), "max": max(v), "mean": sum(v) / len(v), "count": float(len(v))}
            for k, v in sorted(acc.items())}


def history_query(device_id: str, range_s: float, now: float) -> dict[str, Any]:
    return {"device_id": device_id, "start_date": iso(now - range_s), "limit": PAGE_MAX}
