"""Forwarding the readings history to a central store (issue 11 part 3; the seed's bulk sync).

With ``FORWARD_URL`` set, one thread reads the history in the order it was stored, from after
its cursor (the last row id the central store acknowledged, kept in the history's own
``reader_cursors`` table: the seed's ``is_synced`` mark as one number), and sends it in batches
of ``FORWARD_BATCH`` to ``POST {FORWARD_URL}/readings/bulk``. Only a 2xx answer moves the
cursor; anything else (the central store down, slow, refusing) is retried with backoff from 1 s
doubling to ``FORWARD_RETRY_MAX``, and a restart resumes from the committed cursor.

That is at-least-once on the wire; the receiving end makes it exactly once: a sensor-hub stores
a reading once per (device_id, reading id or timestamp), and the timestamp travels with every
microsecond. Another sensor-hub is a valid target: ``FORWARD_URL=http://central:8088/api`` posts
to its LAN API's ``/api/readings/bulk``, ``FORWARD_TOKEN`` being its hub token.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from shared.jsonutil import dumps
from shared.timeutil import iso

from .store import HistoryStore, StoreError, iso_us

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # how often an idle forwarder looks for new readings
BACKLOG_EVERY_S = 5.0  # the backlog is counted at most this often (a COUNT over the rest)
TIMEOUT = (5.0, 30.0)  # connect, read


class ForwardError(Exception):
    """The central store did not take a batch: unreachable, too slow, or an answer other than
    2xx (its status and message in the text)."""


def display_url(url: str) -> str:
    """``url`` without user, password or query, for logs and ``/health``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class Forwarder:
    def __init__(self, store: HistoryStore, url: str, *, token: str | None = None,
                 batch: int = 360, retry_max: float = 60.0) -> None:
        self._store = store
        self.url = url.rstrip("/")
        self.target = f"{self.url}/readings/bulk"
        # The cursor is per target: pointed at another central store, forwarding starts over.
        self.reader = f"forward {display_url(self.url)}"
        self._batch = batch
        self._retry_max = retry_max
        self._session = requests.Session()
        self._session.headers["Content-Type"] = "application/json"
        if token:
            # A sensor-hub reads X-Token; other stores commonly a bearer token.
            self._session.headers["X-Token"] = token
            self._session.headers["Authorization"] = f"Bearer {token}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cursor: int | None = None
        self._delay = 0.0
        self._backlog: int | None = None
        self._backlog_at = 0.0
        self.counters = {"forwarded": 0, "batches": 0, "failures": 0, "central_duplicates": 0}
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="history-forwarder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._session.close()

    # --- one round ------------------------------------------------------------------------------
    def step(self) -> int:
        """Send the next batch, if any; the number of readings the central store took.
        ``ForwardError`` or ``StoreError`` when it could not."""
        if self._cursor is None:
            self._cursor = self._store.cursor_of(self.reader)
        readings = self._store.after(self._cursor, self._batch)
        if not readings:
            self._backlog = 0
            return 0
        self._count_backlog(force=self._backlog is None)  # while failing too: /health shows it
        answer = self._send(readings)
        last = int(readings[-1]["id"])
        self._cursor = last
        self.counters["forwarded"] += len(readings)
        self.counters["batches"] += 1
        if isinstance(answer.get("duplicates"), int):
            self.counters["central_duplicates"] += answer["duplicates"]
        self.last_success = time.time()
        try:
            self._store.commit_cursor(self.reader, last)
        except StoreError as exc:
            # Kept in memory; after a restart this batch is sent again and the central store
            # counts it as duplicates, which is why resending is safe.
            log.warning("forward cursor not saved (%s); continuing from memory", exc)
        if self._backlog is not None:
            self._backlog = max(0, self._backlog - len(readings))
        return len(readings)

    def _send(self, readings: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"readings": [{
            "device_id": r["device_id"],
            # Every microsecond: readings without an id of their own are keyed by it.
            "ts_utc": iso_us(r["ts_us"], digits=6),
            "ts_local": r["ts_local"],
            **({"reading_id": r["reading_id"]} if r["reading_id"] else {}),
            "payload": r["payload"],
        } for r in readings]}
        try:
            resp = self._session.post(self.target, data=dumps(body), timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise ForwardError(f"{display_url(self.target)} unreachable: "
                               f"{type(exc).__name__}: {exc}") from exc
        if not 200 <= resp.status_code < 300:
            raise ForwardError(f"{display_url(self.target)} answered {resp.status_code}: "
                               f"{resp.text[:300].strip()}")
        try:
            answer = resp.json()
        except ValueError:
            return {}
        return answer if isinstance(answer, dict) else {}

    def _count_backlog(self, *, force: bool) -> None:
        now = time.monotonic()
        if force or now - self._backlog_at >= BACKLOG_EVERY_S:
            self._backlog = self._store.count_after(self._cursor or 0)
            self._backlog_at = now

    # --- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.step()
            except (ForwardError, StoreError) as exc:
                self._failed(str(exc))
                self._stop.wait(self._delay)
                continue
            if self.last_error is not None and sent:
                log.info("forwarding to %s works again (%d readings)", display_url(self.url),
                         sent)
                self.last_error = None
            self._delay = 0.0
            if sent < self._batch:  # caught up: look again in a moment
                self._stop.wait(IDLE_POLL_S)

    def _failed(self, message: str) -> None:
        self.counters["failures"] += 1
        if self.last_error is None:  # one log line when failing starts, not one per retry
            log.warning("forwarding to %s failed, retrying with backoff: %s",
                        display_url(self.url), message)
        self.last_error, self.last_error_at = message, time.time()
        base = min(self._retry_max, max(1.0, self._delay * 2))
        self._delay = base * random.uniform(0.8, 1.0)

    def health(self) -> dict[str, Any]:
        return {
            "url": display_url(self.target),
            "state": "retrying" if self.last_error is not None else "ok",
            "backlog": self._backlog,
            "cursor": self._cursor,
            "batch": self._batch,
            **self.counters,
            "last_success": iso(self.last_success) if self.last_success else None,
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at) if self.last_error_at else None,
            "retry_in_s": round(self._delay, 1) if self.last_error is not None else None,
        }
