"""The readings history as the aggregator runs it: the store, its writer thread and its
retention thread, one lifecycle, one health answer. The aggregator hands it every batch of
readings it accepted (``append``); the routes query it and post readings into it.

A history that cannot open its file (a full disk at start) does not stop the aggregator: it runs
without a store, says so in ``/health``, and live data flows as before.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.history_models import ReadingIn
from shared.models import ReadingObs
from shared.settings import Settings

from .retention import Limits, Retention
from .store import HistoryStore, Rows
from .writer import Conditions, HistoryWriter, failure_key

log = logging.getLogger(__name__)


class HistoryUnavailable(Exception):
    """Raised by queries and posts when the history has no store (it could not be opened)."""


class History:
    def __init__(self, path: Path, *, tz: str, limits: Limits, check_interval: float = 300.0,
                 max_pending: int = 100_000) -> None:
        self.path = path
        self.conditions = Conditions()
        self.rows = Rows(tz)
        self.store: HistoryStore | None = None
        self.writer: HistoryWriter | None = None
        self.retention: Retention | None = None
        try:
            self.store = HistoryStore(path)
        except sqlite3.Error as exc:
            self.conditions.set(failure_key(exc), f"cannot open {path}: {exc}; the aggregator "
                                "runs without a history")
            return
        self.retention = Retention(self.store, limits, self.conditions, interval=check_interval)
        self.writer = HistoryWriter(self.store, self.rows, self.conditions,
                                    max_pending=max_pending, on_full=self.retention.wake)

    @classmethod
    def from_settings(cls, settings: Settings) -> History:
        return cls(settings.history_db_path, tz=settings.tz, limits=Limits(
            max_bytes=int(settings.history_max_mb * 1e6) if settings.history_max_mb else None,
            disk_percent=settings.disk_usage_threshold),
            check_interval=settings.history_check_interval,
            max_pending=settings.history_queue)

    def start(self) -> None:
        if self.writer is not None and self.retention is not None:
            self.writer.start()
            self.retention.start()

    def stop(self) -> None:
        if self.writer is not None and self.retention is not None:
            self.retention.stop()
            self.writer.stop()

    def append(self, readings: Sequence[ReadingObs]) -> None:
        """The aggregator's ingest hook: queue the accepted readings; never blocks or raises."""
        if self.writer is not None:
            self.writer.offer(readings)

    def _store(self) -> HistoryStore:
        if self.store is None:
            raise HistoryUnavailable("; ".join(self.conditions.active().values()))
        return self.store

    def post(self, readings: Sequence[ReadingIn]) -> dict[str, int]:
        """Readings posted over REST, stored before the answer (the client learns they are
        safe); ``sqlite3.Error`` when the disk refuses them."""
        rows = [self.rows.row(r.device_id, r.ts_utc, r.payload, r.reading_id) for r in readings]
        try:
            added = self._store().add(rows)
        except sqlite3.Error as exc:
            self.conditions.set(failure_key(exc), f"{self.path}: {exc}")
            raise
        return {"received": len(rows), "stored": added, "duplicates": len(rows) - added}

    def query(self, **kwargs: Any) -> Any:
        """A page for an answer: payloads stay JSON text (``orjson.Fragment``)."""
        return self._store().query(**kwargs, raw=True)

    def latest(self, device_id: str | None) -> list[dict[str, Any]]:
        return self._store().latest(device_id, raw=True)

    def health(self) -> dict[str, Any]:
        problems = self.conditions.active()
        body: dict[str, Any] = {"state": "degraded" if problems else "ok",
                                "reasons": list(problems.values()), "path": str(self.path)}
        if self.store is not None and self.writer is not None and self.retention is not None:
            body.update({
                "file_bytes": self.store.file_bytes(),
                "pending": self.writer.pending, **self.writer.counters,
                "deleted": self.retention.deleted, "retention_checks": self.retention.checks,
                "last_retention": self.retention.last or None,
            })
        return body
