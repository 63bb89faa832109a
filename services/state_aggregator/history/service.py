"""The readings history as the aggregator runs it: the store (SQLite under DATA_DIR, or
PostgreSQL with ``DATABASE_URL``), its writer thread, its retention thread and, with
``FORWARD_URL``, its forwarder: one lifecycle, one health answer. The aggregator hands it every batch of
readings it accepted (``append``); the routes query it and post readings into it.

A history that cannot open its file (a full disk at start) does not stop the aggregator: it runs
without a store, says so in ``/health``, and live data flows as before. A PostgreSQL server that
is away at the start is not that case: the store is made, the writer connects when the server
answers, and ``/health`` says ``degraded`` (``unavailable``) until then.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.history_models import ReadingIn
from shared.models import ReadingObs
from shared.settings import Settings

from .forward import Forwarder
from .retention import Limits, Retention
from .store import HistoryStore, Rows, StoreError
from .writer import Conditions, HistoryWriter, failure_key

log = logging.getLogger(__name__)


class HistoryUnavailable(Exception):
    """Raised by queries and posts when the history has no store (it could not be opened)."""


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    url: str  # FORWARD_URL
    token: str | None = None  # FORWARD_TOKEN
    batch: int = 360  # FORWARD_BATCH
    retry_max: float = 60.0  # FORWARD_RETRY_MAX


class History:
    def __init__(self, location: Path | str, *, tz: str, limits: Limits,
                 check_interval: float = 300.0, max_pending: int = 100_000,
                 forward: ForwardConfig | None = None) -> None:
        self.conditions = Conditions()
        self.rows = Rows(tz)
        self.store: HistoryStore | None = None
        self.writer: HistoryWriter | None = None
        self.retention: Retention | None = None
        self.forwarder: Forwarder | None = None
        try:
            self.store = HistoryStore(location)
        except StoreError as exc:
            self.path = str(location) if isinstance(location, Path) else "DATABASE_URL"
            self.conditions.set(failure_key(exc), f"cannot open the history: {exc}; the "
                                "aggregator runs without one")
            return
        self.path = self.store.where
        if self.store.start_error is not None:
            self.conditions.set("unavailable", f"{self.store.start_error}; live data still "
                                f"flows, up to {max_pending} readings queue for the history "
                                "while it connects again (0.5 s doubling to 30 s)")
        self.retention = Retention(self.store, limits, self.conditions, interval=check_interval)
        self.writer = HistoryWriter(self.store, self.rows, self.conditions,
                                    max_pending=max_pending, on_full=self.retention.wake)
        if forward is not None:
            self.forwarder = Forwarder(self.store, forward.url, token=forward.token,
                                       batch=forward.batch, retry_max=forward.retry_max)

    @classmethod
    def from_settings(cls, settings: Settings) -> History:
        forward = None
        if settings.forward_url:
            forward = ForwardConfig(
                settings.forward_url,
                settings.forward_token.get_secret_value() if settings.forward_token else None,
                settings.forward_batch, settings.forward_retry_max)
        return cls(settings.history_location, tz=settings.tz, limits=Limits(
            max_bytes=int(settings.history_max_mb * 1e6) if settings.history_max_mb else None,
            disk_percent=settings.disk_usage_threshold),
            check_interval=settings.history_check_interval,
            max_pending=settings.history_queue, forward=forward)

    def start(self) -> None:
        if self.writer is not None and self.retention is not None:
            self.writer.start()
            self.retention.start()
        if self.forwarder is not None:
            self.forwarder.start()

    def stop(self) -> None:
        if self.forwarder is not None:
            self.forwarder.stop()
        if self.writer is not None and self.retention is not None:
            self.retention.stop()
            self.writer.stop()
        if self.store is not None:
            self.store.close()

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
        safe); ``StoreError`` when the database refuses them."""
        rows = [self.rows.row(r.device_id, r.ts_utc, r.payload, r.reading_id) for r in readings]
        try:
            added = self._store().add(rows)
        except StoreError as exc:
            self.conditions.set(failure_key(exc), str(exc))
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
                                "reasons": list(problems.values()), "path": self.path,
                                "backend": self.store.backend.kind if self.store else None}
        if self.store is not None and self.writer is not None and self.retention is not None:
            try:
                size: int | None = self.store.file_bytes()
            except StoreError:  # a database server that is away: health answers all the same
                size = None
            body.update({
                "file_bytes": size,
                "pending": self.writer.pending, **self.writer.counters,
                "deleted": self.retention.deleted, "retention_checks": self.retention.checks,
                "last_retention": self.retention.last or None,
            })
        if self.forwarder is not None:
            body["forward"] = self.forwarder.health()
        return body
