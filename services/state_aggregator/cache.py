"""A thread-safe TTL cache with hit/miss statistics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Hit(Generic[V]):
    value: V
    age: float


class TTLCache(Generic[V]):
    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._data: dict[str, tuple[V, float]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.expired = 0

    def put(self, key: str, value: V) -> None:
        with self._lock:
            self._data[key] = (value, self._clock())

    def get(self, key: str) -> Hit[V] | None:
        """The entry while it is younger than ``ttl``; an expired entry is dropped."""
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                age = self._clock() - entry[1]
                if age < self.ttl:
                    self.hits += 1
                    return Hit(entry[0], age)
                del self._data[key]
                self.expired += 1
            self.misses += 1
            return None

    def clear(self) -> int:
        with self._lock:
            n = len(self._data)
            self._data.clear()
            return n

    def stats(self) -> dict[str, float | int]:
        with self._lock:
            now = self._clock()
            live = sum(1 for _, t in self._data.values() if now - t < self.ttl)
            total = self.hits + self.misses
            return {
                "ttl": self.ttl,
                "size": len(self._data),
                "live": live,
                "hits": self.hits,
                "misses": self.misses,
                "expired": self.expired,
                "hit_ratio": round(self.hits / total, 4) if total else 0.0,
            }
