"""Retention: every ``interval`` (5 minutes; at once when a write found the disk full) the
history is measured against ``HISTORY_MAX_MB`` and ``DISK_USAGE_THRESHOLD`` (percent of the
filesystem that holds DATA_DIR; for a history in PostgreSQL only ``HISTORY_MAX_MB``, the
server's disk being the server's); past either, readings are thinned evenly across time (the seed's
stratified deletion; the newest day stays whole) until both hold again, and what was deleted is
counted for ``/health``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store import HistoryStore, StoreError
from .writer import Conditions, failure_key

log = logging.getLogger(__name__)

MAX_SHARE_PER_CHECK = 0.5  # never more than half of what may go in one check
HEADROOM = 0.9  # thin to 90 % of a limit, so the next check does not thin again at once


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int | None  # HISTORY_MAX_MB; None: no limit of its own
    disk_percent: float  # DISK_USAGE_THRESHOLD


def disk_usage(path: Path) -> tuple[int, int]:
    """``(used, total)`` bytes of the filesystem that holds ``path``."""
    usage = shutil.disk_usage(path)
    return usage.total - usage.free, usage.total


class Retention:
    def __init__(self, store: HistoryStore, limits: Limits, conditions: Conditions, *,
                 interval: float = 300.0,
                 usage: Callable[[Path], tuple[int, int]] = disk_usage) -> None:
        self._store = store
        self._limits = limits
        self._conditions = conditions
        self._interval = interval
        self._usage = usage
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.deleted = 0
        self.checks = 0
        self.last: dict[str, Any] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="history-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except StoreError as exc:
                # A database server that is away is the writer's condition to report (and to
                # clear when it answers again); the next check tries again.
                if not exc.unavailable:
                    self._conditions.set(failure_key(exc), f"retention could not thin: {exc}")
            except OSError as exc:
                self._conditions.set("retention", f"retention could not measure the disk: {exc}")
            self._wake.wait(self._interval)
            self._wake.clear()

    def share_to_delete(self) -> tuple[float, str | None]:
        """The share of the history to thin now, and why (``None``: within both limits)."""
        used = self._store.used_bytes()
        share, reason = 0.0, None
        if self._limits.max_bytes is not None and used > self._limits.max_bytes:
            share = 1 - self._limits.max_bytes * HEADROOM / used
            reason = f"history {used / 1e6:.1f} MB > HISTORY_MAX_MB {self._limits.max_bytes / 1e6:g}"
        if self._store.local_dir is None:  # a database server: its disk is not ours to measure
            return min(share, MAX_SHARE_PER_CHECK), reason
        disk_used, disk_total = self._usage(self._store.local_dir)
        percent = 100 * disk_used / disk_total if disk_total else 0.0
        if percent > self._limits.disk_percent and used > 0:
            over = disk_used - disk_total * self._limits.disk_percent / 100 * HEADROOM
            disk_share = min(1.0, over / used)
            if disk_share > share:
                share = disk_share
                reason = (f"disk {percent:.1f} % used > DISK_USAGE_THRESHOLD "
                          f"{self._limits.disk_percent:g} %")
        return min(share, MAX_SHARE_PER_CHECK), reason

    def check(self) -> int:
        """One check; the number of readings deleted."""
        started = time.monotonic()
        self.checks += 1
        share, reason = self.share_to_delete()
        deleted = self._store.thin(share) if reason is not None else 0
        self.deleted += deleted
        if deleted:
            self._store.give_back()
        self.last = {"at": time.time(), "reason": reason, "deleted": deleted,
                     "took_s": round(time.monotonic() - started, 3)}
        if deleted:
            log.info("history retention: %s; thinned %.0f %% of the readings older than a "
                     "day: %d deleted", reason, share * 100, deleted)
        if reason is not None and not deleted:
            # Past a limit with nothing older than the newest day left to thin (or the disk
            # filled by something else): say so once, in /health, not every five minutes.
            self._conditions.set("over_limit", f"{reason}; the history has nothing older than "
                                 "its newest day left to thin")
        else:
            self._conditions.clear("over_limit")
        self._conditions.clear("retention")
        return deleted
