"""Answers to bad input (a malformed payload, an invalid id, a busy device), published by one
thread from a bounded queue. They are produced on paho's network thread, which must not block,
and a flood of bad input must not delay anything else: when the queue is full an answer is
dropped and counted (and the count logged at most every few seconds), never queued without end.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .publisher import Publisher
from .workers import Workers

log = logging.getLogger(__name__)

CAPACITY = 1000
LOG_EVERY_S = 10.0


class Answers:
    def __init__(self, publisher: Publisher, *, capacity: int = CAPACITY) -> None:
        self._publisher = publisher
        self._workers = Workers("answers", size=1, capacity=capacity)
        self.offered = 0
        self.dropped = 0
        self._logged_dropped = 0
        self._logged_at = 0.0

    def start(self) -> None:
        self._workers.start()

    def stop(self) -> None:
        self._workers.stop()

    def json(self, topic: str, body: dict[str, Any]) -> None:
        """Publish ``body`` on ``topic`` (QoS 1, not retained) from the answers thread."""
        self._offer(lambda: self._publisher.json(topic, body, qos=1))

    def clear_retained(self, topic: str) -> None:
        self._offer(lambda: self._publisher.raw(topic, b"", qos=1, retain=True))

    @property
    def pending(self) -> int:
        return self._workers.pending

    @property
    def published(self) -> int:
        return self._workers.done

    def _offer(self, job: Any) -> None:
        self.offered += 1
        if self._workers.offer(job):
            return
        self.dropped += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            log.warning("bad input arrives faster than it can be answered: %d answers dropped "
                        "(%d since the last report)", self.dropped,
                        self.dropped - self._logged_dropped)
            self._logged_at, self._logged_dropped = now, self.dropped
