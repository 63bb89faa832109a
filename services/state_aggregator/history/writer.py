"""Readings reach the history off the ingest's hot path: ``offer`` queues the batch the
aggregator just accepted and returns; one thread writes what has piled up in one transaction.

Nothing here may stop live data: a queue full past ``max_pending`` readings drops the batch
(counted), and a write that fails (``database or disk is full``, an I/O error, a database
server that is gone) drops that batch too, counted, with one log line when the condition
starts and one when it ends.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

from shared.models import ReadingObs

from .store import HistoryStore, Row, Rows, StoreError

log = logging.getLogger(__name__)

RETRY_MAX_S = 30.0  # the longest wait between tries of an unreachable database
MAX_ROWS_PER_TX = 20_000  # one transaction per wake-up, but not one that holds the lock for long


class Conditions:
    """Named degraded conditions with their reasons; each is logged when it starts and ends,
    never once per failing write."""

    def __init__(self, what: str = "history") -> None:
        self._what = what
        self._active: dict[str, str] = {}
        self._lock = threading.Lock()

    def set(self, key: str, reason: str) -> None:
        with self._lock:
            new = key not in self._active
            self._active[key] = reason
        if new:
            log.warning("%s degraded (%s): %s", self._what, key, reason)

    def clear(self, key: str) -> bool:
        """``True`` when the condition was active."""
        with self._lock:
            reason = self._active.pop(key, None)
        if reason is not None:
            log.info("%s recovered (%s)", self._what, key)
        return reason is not None

    def active(self) -> dict[str, str]:
        with self._lock:
            return dict(self._active)


def failure_key(exc: StoreError) -> str:
    return "disk_full" if exc.full else "write_failed"


class HistoryWriter:
    def __init__(self, store: HistoryStore, rows: Rows, conditions: Conditions, *,
                 max_pending: int = 100_000,
                 on_full: Callable[[], None] | None = None) -> None:
        self._store = store
        self._rows = rows
        self._conditions = conditions
        self._max_pending = max_pending
        # Wakes retention at once when the disk fills and when it has room again, instead of
        # leaving both to the next 5-minute check.
        self._on_full = on_full
        self._queue: deque[Sequence[ReadingObs]] = deque()
        self._pending = 0
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.counters = {"stored": 0, "duplicates": 0, "dropped": 0, "failed": 0}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (within ``timeout``), then stop."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def pending(self) -> int:
        return self._pending

    def offer(self, readings: Sequence[ReadingObs]) -> None:
        """Queue a batch for the history; never blocks, never raises."""
        with self._cv:
            if self._pending + len(readings) > self._max_pending:
                self.counters["dropped"] += len(readings)
                full = True
            else:
                self._queue.append(readings)
                self._pending += len(readings)
                self._cv.notify()
                full = False
        if full:
            self._conditions.set("queue_full", f"more than {self._max_pending} readings wait "
                                 "for the history's disk; newer ones are not stored")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything offered so far is written (tests, shutdown)."""
        with self._cv:
            return self._cv.wait_for(lambda: self._pending == 0, timeout)

    def _take(self) -> list[ReadingObs] | None:
        with self._cv:
            self._cv.wait_for(lambda: self._queue or self._stop)
            if not self._queue:
                return None
            batch: list[ReadingObs] = []
            while self._queue and len(batch) < MAX_ROWS_PER_TX:
                batch.extend(self._queue.popleft())
            return batch

    def _run(self) -> None:
        try:
            self._store.upgrade()
        except StoreError as exc:
            self._conditions.set("upgrade", f"schema upgrade failed: {exc}; the history runs on "
                                 "the old schema")
        self._reach()
        delay = 0.0
        while (batch := self._take()) is not None:
            if not self.write(batch):
                # The database is unreachable: the batch goes back to the head of the queue
                # (still counted as pending, so offers past HISTORY_QUEUE are dropped) and is
                # tried again after a wait, 0.5 s doubling to RETRY_MAX_S. Stopping meanwhile
                # loses it, counted.
                delay = min(RETRY_MAX_S, max(0.5, delay * 2))
                with self._cv:
                    self._queue.appendleft(batch)
                    if self._cv.wait_for(lambda: self._stop, delay):
                        self.counters["failed"] += self._pending
                        return
                continue
            delay = 0.0
            with self._cv:
                self._pending -= len(batch)
                self._cv.notify_all()
            if self._pending < self._max_pending // 2:
                self._conditions.clear("queue_full")

    def _reach(self) -> None:
        """A database server that was away at the start: try it again, 0.5 s doubling to
        ``RETRY_MAX_S``, until it answers, so ``/health`` recovers even with nothing to write.
        Readings that arrive meanwhile end this: the write loop retries them itself."""
        delay = 0.5
        while "unavailable" in self._conditions.active():
            with self._cv:
                if self._cv.wait_for(lambda: self._stop or bool(self._queue), delay):
                    return
            try:
                self._store.connect()
            except StoreError as exc:
                if not exc.unavailable:
                    self._conditions.set(failure_key(exc), str(exc))
                    return
                delay = min(RETRY_MAX_S, delay * 2)
                continue
            self._conditions.clear("unavailable")

    def write(self, readings: Sequence[ReadingObs]) -> bool:
        """Store ``readings``; ``False`` only when the database was unreachable and the batch
        should be tried again (any other failure drops it, counted)."""
        rows: list[Row] = [self._rows.row(r.device_id, r.ts, r.values) for r in readings]
        try:
            added = self._store.add(rows)
        except StoreError as exc:
            if exc.unavailable:
                self._conditions.set("unavailable", f"{exc}; live data still flows, the "
                                     f"history keeps {self._pending} readings queued and "
                                     "tries again")
                return False
            key = failure_key(exc)
            self.counters["failed"] += len(rows)
            self._conditions.set(key, f"{exc}; live data still flows, "
                                 "these readings are not in the history")
            if key == "disk_full" and self._on_full is not None:
                self._on_full()
            return True
        recovered = [key for key in ("disk_full", "write_failed", "unavailable")
                     if self._conditions.clear(key)]
        if "disk_full" in recovered and self._on_full is not None:
            self._on_full()  # space is back: retention measures again now, not in 5 minutes
        self.counters["stored"] += added
        self.counters["duplicates"] += len(rows) - added
        return True
