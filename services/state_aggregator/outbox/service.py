"""The durable change log as the aggregator runs it: the store, and one thread that keeps it
small (deletes what every reader passed, thins what is unread past ``OUTBOX_MAX_MB`` or the
free-disk floor) and measures what is pending for ``/health`` and ``meta/health``.

Nothing here may stop live data: a store that cannot be opened, or a write the disk refuses
(``database or disk is full``), leaves the change in the aggregator's memory, where the bridge
reads it as before; ``/health`` says ``degraded`` with the reason, one log line when the
condition starts and one when it ends, and the log resumes on the next write that succeeds.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.models import Change, StateChange
from shared.settings import Settings

from ..history.writer import Conditions
from .store import OTHER_KINDS, OutboxStore, Pending

log = logging.getLogger(__name__)

THIN_ROUNDS = 8  # each round halves the unread intermediate states at most


class Outbox:
    def __init__(self, path: Path, *, max_bytes: int, min_free_bytes: int,
                 interval: float = 2.0, replay: int = 0) -> None:
        self.path = path
        self.replay = replay
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.interval = interval
        self.conditions = Conditions("outbox")
        self.store: OutboxStore | None = None
        self.thinned = 0  # intermediate states
        self.thinned_events = 0  # events, errors and command results
        self.released = 0
        self.pending = Pending(0, 0, None)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self.store = OutboxStore(path)
        except sqlite3.Error as exc:
            self.conditions.set(failure_key(exc), f"cannot open {path}: {exc}; changes are "
                                "kept in memory only")

    @classmethod
    def from_settings(cls, settings: Settings) -> Outbox:
        return cls(settings.outbox_db_path, max_bytes=int(settings.outbox_max_mb * 1e6),
                   min_free_bytes=int(settings.outbox_min_free_mb * 1e6),
                   interval=settings.outbox_check_interval, replay=settings.outbox_replay)

    @property
    def epoch(self) -> str | None:
        return None if self.store is None else self.store.epoch

    def start(self) -> None:
        if self.store is not None:
            self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)

    # --- the aggregator's side ------------------------------------------------------------------
    def append(self, changes: Sequence[tuple[Change, bytes]],
               batch: tuple[str, int, int] | None) -> bool:
        """Store ``changes``; ``False`` when they stay in memory only (the disk refused)."""
        if self.store is None:
            return False
        try:
            self.store.append(changes, batch=batch)
        except sqlite3.Error as exc:
            key = failure_key(exc)
            self.conditions.set(key, f"{self.path}: {exc}; live data still flows from memory, "
                                "a restart of the aggregator or the bridge may lose what is "
                                "not stored")
            self._wake.set()
            return False
        for key in ("disk_full", "write_failed"):
            self.conditions.clear(key)
        return True

    def since(self, seq: int, limit: int, *,
              before: int | None = None) -> list[tuple[int, bytes]] | None:
        """Stored changes after ``seq`` as ``(seq, JSON)``; ``None`` when there is no store."""
        if self.store is None:
            return None
        try:
            return self.store.since(seq, limit, before=before)
        except sqlite3.Error as exc:
            self.conditions.set("read_failed", f"{self.path}: {exc}")
            return None

    def states(self) -> list[StateChange]:
        return [] if self.store is None else self.store.states()

    def batch_answers(self, newest: int) -> list[tuple[str, int, int]]:
        return [] if self.store is None else self.store.batch_answers(newest)

    def last_seq(self) -> int:
        return 0 if self.store is None else self.store.last_seq()

    # --- readers --------------------------------------------------------------------------------
    def commit(self, reader: str, seq: int) -> None:
        """A reader's position; ``sqlite3.Error`` when it cannot be stored."""
        if self.store is None:
            raise sqlite3.OperationalError("the outbox has no store")
        self.store.commit(reader, seq)
        self._wake.set()

    def cursor(self, reader: str) -> int | None:
        return None if self.store is None else self.store.cursors().get(reader)

    # --- keeping it small -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.maintain()
            except sqlite3.Error as exc:
                self.conditions.set(failure_key(exc), f"{self.path}: {exc}")

    def maintain(self) -> None:
        """Release what every reader passed, thin what is unread while over the limits,
        measure what is pending."""
        store = self.store
        if store is None:
            return
        cursors = store.cursors()
        after = min(cursors.values()) if cursors else 0
        if cursors:
            # The newest ``replay`` published changes stay for the dashboard's browsers that
            # reconnect (their Last-Event-ID), unless the disk is short of space.
            short = self._short_of_space()
            upto = after if short or not self.replay else min(after, store.last_seq() - self.replay)
            if upto > store.floor:
                self.released += store.release(upto)
                if short:
                    store.give_back()  # the space the window held, back to the filesystem
        pending = store.pending(after)
        why = self._over(pending)
        if why is None:
            self.conditions.clear("over_limit")
        else:
            self.conditions.set("over_limit", f"{why}: unpublished intermediate states are "
                                "thinned (every n-th kept; the newest per device, availability "
                                "always), and when that is not enough, events, errors and "
                                "command results too")
            pending, exhausted = self._thin(store, after, ("state",), pending)
            if exhausted and self._over(pending) is not None:
                # A log full of events, errors or command results: bounded too, the same way,
                # but only once no intermediate state is left to give.
                pending, _ = self._thin(store, after, OTHER_KINDS, pending)
        store.checkpoint()
        self.pending = pending

    def _thin(self, store: OutboxStore, after: int, kinds: tuple[str, ...],
              pending: Pending) -> tuple[Pending, bool]:
        """Halve the unread rows of ``kinds`` (stratified) until under the limits; counted.
        Each round hands the freed pages back to the filesystem, so the free-disk floor sees
        what it gained before the next (without, a disk short of space thinned every round and
        then the events too). Also says whether nothing of ``kinds`` was left to thin."""
        for _ in range(THIN_ROUNDS):
            removed = store.thin(after, 2, kinds=kinds)
            if kinds == ("state",):
                self.thinned += removed
            else:
                self.thinned_events += removed
            if removed:
                store.give_back()
            pending = store.pending(after)
            if removed == 0:
                return pending, True
            if self._over(pending) is None:
                break
        return pending, False

    def _short_of_space(self) -> bool:
        free = free_bytes(self.path.parent)
        return free is not None and free < self.min_free_bytes

    def devices_between(self, since: int, until: int) -> list[str] | None:
        """The devices with a change after ``since`` up to ``until`` as the disk has them;
        ``None`` when the log no longer holds all of that range (released)."""
        if self.store is None or since < self.store.floor:
            return None
        try:
            return self.store.devices_between(since, until)
        except sqlite3.Error as exc:
            self.conditions.set("read_failed", f"{self.path}: {exc}")
            return None

    def notes_between(self, since: int, until: int, limit: int) -> list[bytes] | None:
        """``OutboxStore.notes_between``; ``None`` when the log no longer holds the range."""
        if self.store is None or since < self.store.floor:
            return None
        try:
            return self.store.notes_between(since, until, limit)
        except sqlite3.Error as exc:
            self.conditions.set("read_failed", f"{self.path}: {exc}")
            return None

    def floor(self) -> int | None:
        """Everything after this seq is on disk (thinning aside); ``None`` without a store."""
        return None if self.store is None else self.store.floor

    def _over(self, pending: Pending) -> str | None:
        if pending.bytes > self.max_bytes:
            return (f"{pending.bytes / 1e6:.1f} MB unpublished, more than OUTBOX_MAX_MB="
                    f"{self.max_bytes / 1e6:g}")
        free = free_bytes(self.path.parent)
        if free is not None and free < self.min_free_bytes:
            return (f"{free / 1e6:.1f} MB free on {self.path.parent}, less than "
                    f"OUTBOX_MIN_FREE_MB={self.min_free_bytes / 1e6:g}")
        return None

    def health(self) -> dict[str, Any]:
        """``outbox`` of ``/health``: ``pending`` changes no reader has passed, the age of the
        oldest, how many intermediate states (``thinned``) and events, errors and command results
        (``thinned_events``) were thinned, and ``state``/``reasons``."""
        problems = {k: v for k, v in self.conditions.active().items() if k != "over_limit"}
        oldest = self.pending.oldest_ts
        body: dict[str, Any] = {
            "state": "degraded" if problems else "ok", "reasons": list(problems.values()),
            "pending": self.pending.rows,
            "oldest_age_s": round(max(0.0, time.time() - oldest), 3) if oldest else 0.0,
            "thinned": self.thinned, "thinned_events": self.thinned_events, "path": str(self.path)}
        if "over_limit" in self.conditions.active():
            body["thinning"] = self.conditions.active()["over_limit"]
        if self.store is not None:
            body["file_bytes"] = self.store.file_bytes()
            # A dashboard browser whose Last-Event-ID is at or past this replays from the log.
            body["replay_from"] = self.store.floor
        return body


def failure_key(exc: sqlite3.Error) -> str:
    """The condition a failed write is: a full disk, or another failure."""
    return "disk_full" if "full" in str(exc).lower() else "write_failed"


def free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None
