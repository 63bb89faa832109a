"""The change log the bridge long-polls: every state, error, event, availability and registry
change, and every command's result, gets a sequence number; ``since(seq)`` returns all that
came after, waiting up to a deadline when there is nothing yet. One request carries as many
changes as have piled up, so the bridge makes a constant number of calls however many devices
there are.

The log holds the shared change models themselves (``StateChange`` ...), built once when the
change happens and written as JSON only at the REST edge.

A restart gives a new ``epoch``; a consumer whose epoch or position is gone gets ``resync`` and
reloads the snapshot.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from shared.models import (
    AvailabilityChange,
    CommandChange,
    DeviceChange,
    ErrorChange,
    EventChange,
    StateChange,
)

AnyChange = (StateChange | ErrorChange | EventChange | AvailabilityChange | DeviceChange
             | CommandChange)
C = TypeVar("C", StateChange, ErrorChange, EventChange, AvailabilityChange, DeviceChange,
            CommandChange)


class ChangeLog:
    def __init__(self, capacity: int = 200_000) -> None:
        self.epoch = uuid.uuid4().hex[:12]
        self._capacity = capacity
        self._items: list[AnyChange] = []
        self._first = 1  # seq of self._items[0]
        self._seq = 0
        self._cond = threading.Condition()  # on an RLock: a batch holds it around its appends
        self._batching = 0

    @property
    def seq(self) -> int:
        return self._seq

    def append(self, make: Callable[[int], C]) -> C:
        """Add the change ``make(seq)`` builds with the next sequence number (the models are
        frozen, so the number goes in as it is built) and wake the waiting readers."""
        with self._cond:
            change = make(self._seq + 1)
            self._seq += 1
            self._items.append(change)
            if len(self._items) > 2 * self._capacity:  # amortised trim
                drop = len(self._items) - self._capacity
                del self._items[:drop]
                self._first += drop
            if not self._batching:
                self._cond.notify_all()
            return change

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Appends made inside wake the readers once, at the end (an ingest of 1,000 readings
        would otherwise notify 1,000 times)."""
        with self._cond:
            self._batching += 1
            try:
                yield
            finally:
                self._batching -= 1
                if not self._batching:
                    self._cond.notify_all()

    def since(self, seq: int, *, limit: int = 10_000,
              wait: float = 0.0) -> tuple[int, bool, list[AnyChange]]:
        """``(last_seq, resync, changes)`` for everything after ``seq``."""
        with self._cond:
            if wait > 0 and seq >= self._seq:
                self._cond.wait_for(lambda: self._seq > seq, timeout=wait)
            if seq > self._seq or seq + 1 < self._first:
                return self._seq, True, []
            start = seq + 1 - self._first
            items = self._items[start : start + limit]
            last = items[-1].seq if items else self._seq
            return last, False, items

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()
