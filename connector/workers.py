"""Bounded work for the bridge: a fixed set of threads behind a bounded queue, never a thread per
message. ``offer`` never blocks: it is called on paho's network thread, which must keep reading
the socket; a full queue is refused (and counted) so the caller can answer "busy" or drop.

A flood of bad input used to make a thread per message (10,000 malformed commands, about 8,000
threads, no state published for minutes): everything the network thread hands on now goes
through one of these.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Job = Callable[[], None]


class Workers:
    """``size`` threads named ``{name}-N`` running jobs from a queue of at most ``capacity``."""

    def __init__(self, name: str, *, size: int, capacity: int) -> None:
        self.name = name
        self.size = size
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=capacity)
        self._threads: list[threading.Thread] = []
        self.refused = 0
        self.done = 0

    def start(self) -> None:
        for i in range(self.size):
            thread = threading.Thread(target=self._run, name=f"{self.name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Let the threads finish their current job and end (they are daemons: a job stuck on
        a slow service never holds the process)."""
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break  # daemons: the process ends without them

    def offer(self, job: Job) -> bool:
        """Queue ``job``; ``False`` (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.refused += 1
            return False
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job()
            except Exception:
                log.exception("%s: a job failed", self.name)
            self.done += 1
