"""What the MQTT side of master control must publish without being asked: a sensor's effective
config changed (republish the retained ``sensors/{s}/config``) or a command was queued for it
(publish ``sensors/{s}/commands`` now rather than at its next heartbeat).

A small long-poll feed, as the aggregator's change log is for device state: numbered entries,
``since(seq)`` waits up to a deadline, and a new ``epoch`` per start tells a consumer to resync
from ``/master/sensor-configs``. Master control keeps its own, so that the device data path and
master control can change apart."""

from __future__ import annotations

import threading
import uuid
from collections import deque
from typing import Any, Literal

FeedKind = Literal["config", "command"]


class Feed:
    def __init__(self, capacity: int = 20_000) -> None:
        self.epoch = uuid.uuid4().hex[:12]
        self._items: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._seq = 0
        self._cond = threading.Condition()

    @property
    def seq(self) -> int:
        return self._seq

    def append(self, kind: FeedKind, sensor_id: str, **data: Any) -> None:
        with self._cond:
            self._seq += 1
            self._items.append({"seq": self._seq, "kind": kind, "sensor_id": sensor_id, **data})
            self._cond.notify_all()

    def since(self, seq: int, *, limit: int = 5_000,
              wait: float = 0.0) -> tuple[int, bool, list[dict[str, Any]]]:
        """``(last_seq, resync, entries)`` after ``seq``; ``resync`` when they are gone."""
        with self._cond:
            if wait > 0 and seq >= self._seq:
                self._cond.wait_for(lambda: self._seq > seq, timeout=wait)
            first = self._items[0]["seq"] if self._items else self._seq + 1
            if seq > self._seq or seq + 1 < first:
                return self._seq, True, []
            items = [e for e in self._items if e["seq"] > seq][:limit]
            return (items[-1]["seq"] if items else self._seq), False, items

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()
