"""The poll schedule of one serial port, free of threads and I/O (its clock is injected).

A port is a sequential bus: one read request at a time, and a request nobody answers holds the
bus for the sensor's whole ``read_timeout``. So that a silent sensor does not cost the others
their slot:

- Every sensor is due on a fixed grid, ``anchor + k * interval`` (the anchor is when the port
  opened): a round that runs long never pushes the next one back, so polls do not drift.
- Sensors that answer ("healthy") go first, in the order of the instance file, so each keeps
  the same place in its round.
- A sensor whose last request went unanswered ("suspect") is asked only after the healthy ones,
  and only when the bus is free for its whole ``read_timeout`` before the next healthy sensor is
  due (after ``FORCE_PROBE_AFTER`` rounds without such a gap it is asked anyway, or it could
  never come back). From its second unanswered request in a row it also backs off: it skips
  1, 2, 4 ... rounds, up to ``MAX_BACKOFF_S`` worth.
- A healthy sensor's poll sent more than ``tolerance(interval)`` after its usual place in the
  round (the earliest it has been sent at since the port opened), or a grid point missed
  altogether, is counted late and warned about once: the round does not fit the interval.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300.0  # the longest a silent sensor goes unasked (the HTTP poller's cap)
FORCE_PROBE_AFTER = 4  # rounds a suspect waits for a gap in the bus before it is asked anyway


def tolerance(interval: float) -> float:
    """How late a poll may come and still count as on time: the HTTP poller's rule."""
    return max(0.5, 0.1 * interval)


@dataclass(slots=True)
class Polled:
    """One sensor's place in the schedule and what happened to its read requests."""

    sensor_id: str
    interval: float
    read_timeout: float
    order: int
    k: int = 0  # the grid point it is due at next: anchor + k * interval
    polls: int = 0
    late: int = 0
    answered: int = 0
    unanswered: int = 0
    consecutive_failures: int = 0
    skip_left: int = 0  # rounds still to skip in the current backoff
    skipped_rounds: int = 0
    deferred: int = 0  # rounds its probe found no gap long enough in the bus
    deferred_in_a_row: int = 0
    base_offset: float | None = None  # its usual place in the round: the earliest seen
    last_duration: float = 0.0  # bus time its last request took

    def backoff_rounds(self) -> int:
        """Rounds to skip after the current run of unanswered requests: none after the first
        (a lone miss on a noisy line; skipping would leave 3 intervals without a reading, when
        the aggregator marks it offline), then 1, 2, 4 ... up to ``MAX_BACKOFF_S``."""
        if self.consecutive_failures < 2:
            return 0
        cap = max(1, int(MAX_BACKOFF_S // self.interval) - 1)
        return int(min(2.0 ** min(self.consecutive_failures - 2, 30), cap))

    def view(self) -> dict[str, Any]:
        return {
            "read_timeout": self.read_timeout, "polls": self.polls, "late_polls": self.late,
            "answered": self.answered, "unanswered": self.unanswered,
            "consecutive_failures": self.consecutive_failures,
            "backoff": {"state": ("backing_off" if self.skip_left else
                                  "suspect" if self.consecutive_failures else "ok"),
                        "rounds": self.backoff_rounds(), "rounds_left": self.skip_left},
            "skipped_rounds": self.skipped_rounds, "deferred_probes": self.deferred,
        }


class PortSchedule:
    """Which sensor of a port to ask next, and when. ``next_poll`` is called by the port's one
    poll thread; ``answered``/``unanswered`` also by threads doing fresh reads."""

    def __init__(self, name: str, sensors: list[tuple[str, float, float]], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``sensors``: (sensor_id, interval, read_timeout) in the instance file's order."""
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self.polled = {sid: Polled(sid, interval, timeout, order)
                       for order, (sid, interval, timeout) in enumerate(sensors)}
        self._anchor = clock()
        self.late_polls = 0
        self._warned = False

    def restart(self) -> None:
        """The port (re)opened: a new grid from now, every sensor asked once in the first
        round (a board that was replugged may have been fixed), failure runs kept."""
        with self._lock:
            self._anchor = self._clock()
            for p in self.polled.values():
                p.k, p.skip_left, p.deferred_in_a_row, p.base_offset = 0, 0, 0, None

    def _due(self, p: Polled) -> float:
        # From the grid index, not by adding intervals up: no rounding drift over months.
        return self._anchor + p.k * p.interval

    def next_poll(self) -> tuple[str | None, float]:
        """``(sensor_id, 0)`` to ask now, or ``(None, seconds)`` to wait before asking again."""
        with self._lock:
            while True:
                now = self._clock()
                due = [p for p in self.polled.values() if self._due(p) <= now]
                if not due:
                    return None, min(self._due(p) for p in self.polled.values()) - now
                healthy = [p for p in due if not p.consecutive_failures]
                if healthy:
                    p = min(healthy, key=lambda q: (self._due(q), q.order))
                    self._take(p, now)
                    return p.sensor_id, 0.0
                p = min(due, key=lambda q: (self._due(q), q.order))
                if p.skip_left:
                    p.skip_left -= 1
                    p.skipped_rounds += 1
                    p.k += 1
                    continue
                upcoming = min((self._due(q) for q in self.polled.values()
                                if not q.consecutive_failures), default=math.inf)
                if upcoming - now < p.read_timeout and p.deferred_in_a_row < FORCE_PROBE_AFTER:
                    p.deferred += 1
                    p.deferred_in_a_row += 1
                    p.k += 1
                    continue
                p.deferred_in_a_row = 0
                self._take(p, now)
                return p.sensor_id, 0.0

    def _take(self, p: Polled, now: float) -> None:
        offset = now - self._due(p)
        missed = int(offset // p.interval)  # grid points that passed while it waited: late
        p.polls += 1
        p.k += missed + 1
        if p.consecutive_failures:
            return  # a probe goes wherever there is room; only the others have a place
        late = missed
        if not missed:
            if p.base_offset is not None and offset - p.base_offset > tolerance(p.interval):
                late = 1
            # Its usual place in the round is the earliest it has been asked at: a place
            # taken from the previous round would let a round that overruns a little every
            # time creep along unreported.
            p.base_offset = offset if p.base_offset is None else min(p.base_offset, offset)
        if late:
            p.late += late
            self.late_polls += late
            self._warn_late(p, offset)

    def _warn_late(self, p: Polled, offset: float) -> None:
        if self._warned:
            return
        self._warned = True
        busy = sum(q.last_duration for q in self.polled.values() if not q.skip_left)
        log.warning(
            "polls on %s run late: %s was asked %.2f s after its grid point; the last round "
            "took about %.2f s of bus time for %d sensors against an interval of %g s (an "
            "unanswered request holds the bus for its read_timeout: sensors x read_timeout "
            "must fit the interval). Late polls are counted on /health and /sensors; said "
            "once.", self.name, p.sensor_id, offset, busy, len(self.polled), p.interval)

    def answered(self, sensor_id: str, duration: float) -> int:
        """The sensor answered a request; returns how many in a row it had left unanswered."""
        with self._lock:
            p = self.polled[sensor_id]
            before = p.consecutive_failures
            p.answered += 1
            p.consecutive_failures = p.skip_left = p.deferred_in_a_row = 0
            p.last_duration = duration
            return before

    def unanswered(self, sensor_id: str) -> bool:
        """A request went unanswered; True when it is the first of an outage (say it once)."""
        with self._lock:
            p = self.polled[sensor_id]
            p.unanswered += 1
            p.consecutive_failures += 1
            p.skip_left = p.backoff_rounds()
            p.last_duration = p.read_timeout
            return p.consecutive_failures == 1

    def view(self, sensor_id: str) -> dict[str, Any]:
        with self._lock:
            return self.polled[sensor_id].view()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"late_polls": self.late_polls,
                    "polls": sum(p.polls for p in self.polled.values()),
                    "backing_off": sorted(p.sensor_id for p in self.polled.values()
                                          if p.consecutive_failures)}
