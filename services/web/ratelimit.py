"""Per-client rate limits on the LAN port: one budget for ingest (probe readings, readings
uploads, the sensor side of master control) and one for management (master control's management
routes, removing and provisioning probes, the dashboard's login and forms). Past its budget a
client gets 429 with ``Retry-After``; other clients are not affected.

Built on ``limits`` (the library under flask-limiter) with in-memory fixed windows, rather
than flask-limiter's decorators: which budget a request spends is decided per request (one
master control route serves sensors and management alike), in one place, ``guards.budget_of``.
A fixed window is one counter per client and budget (a moving window keeps every request's time,
a list as long as the budget); a client may spend up to twice its budget across a window's end,
which a limit against floods and guessing can afford. The web program has one worker process,
so in-memory counts are the hub's counts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

Budget = Literal["ingest", "management"]


def parse_limit(text: str) -> RateLimitItem:
    """``"1200/minute"`` and the like; ``ValueError`` naming what is wrong."""
    return parse(text)


@dataclass(frozen=True, slots=True)
class Refusal:
    budget: Budget
    limit: str
    retry_after: int  # whole seconds, at least 1


class RateLimits:
    def __init__(self, limits: dict[Budget, str], *,
                 clock: Callable[[], float] = time.time) -> None:
        self._items = {budget: parse_limit(text) for budget, text in limits.items()}
        self._limiter = FixedWindowRateLimiter(MemoryStorage())
        self._clock = clock

    def hit(self, budget: Budget, client: str) -> Refusal | None:
        """Count one request of ``client``; a ``Refusal`` when it is over its budget."""
        item = self._items.get(budget)
        if item is None or self._limiter.hit(item, budget, client):
            return None
        reset = self._limiter.get_window_stats(item, budget, client).reset_time
        return Refusal(budget, str(item), max(1, math.ceil(reset - self._clock())))
