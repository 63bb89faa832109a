"""Small statistics helpers: medians and percentiles without numpy."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def pct(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def median(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else float("nan")


def summary(runs: list[dict[str, float]], keys: Sequence[str]) -> dict[str, float]:
    """The median of each key over ``runs``, rounded sensibly."""
    out = {}
    for key in keys:
        m = median([r[key] for r in runs if key in r])
        out[key] = m if math.isnan(m) else round(m, 3) if abs(m) < 100 else round(m)
    return out
