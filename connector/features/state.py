"""Device state, per-property values, availability, errors and events.

Two threads and a short queue between them. The feed thread long-polls the aggregator's change
log (one request carries every change that has piled up) and reloads the snapshot after a
restart of either side; the publisher thread applies each item to the mirror and publishes it.
The publisher is the only writer of device topics, and it publishes only on a live session
(connected, ``online`` out): a reconnection, a new snapshot and a rebirth each ask for a full
republish, and a republish that the current session already had is not repeated (a restart of
the bridge used to publish every topic twice: once for the snapshot, once for the connection).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from shared.errors import ServiceError
from shared.models import Change, ChangesPage, Snapshot

from ..context import BridgeContext
from .base import Feature
from .device_topics import DeviceTopics

log = logging.getLogger(__name__)

LONG_POLL_S = 20
QUEUE_PAGES = 4  # pages fetched ahead of the publisher; beyond that the aggregator keeps them


@dataclass(frozen=True, slots=True)
class _Loaded:
    """A snapshot, and the changes it took in while the aggregator made the bridge wait for it
    (``folded``): the snapshot holds only their end result."""

    snapshot: Snapshot
    folded: list[Change]


@dataclass(frozen=True, slots=True)
class _Republish:
    """Everything again for the session ``generation`` (unless it already had it)."""

    generation: int


@dataclass(frozen=True, slots=True)
class _Rebirth:
    """Everything again, whatever was published before; ``done`` gets the device count."""

    done: Callable[[int], None]


_Item = _Loaded | ChangesPage | _Republish | _Rebirth


class StateFeature(Feature):
    name = "state"

    def __init__(self, ctx: BridgeContext) -> None:
        super().__init__(ctx)
        self.devices = DeviceTopics(ctx)
        self._stop = threading.Event()
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=QUEUE_PAGES)
        self._session = threading.Condition()
        self._session_gen = 0  # the connection whose ``online`` is out (set by on_connect)
        self._full_gen = 0  # the session that last had every device published
        self.epoch: str | None = None
        self.seq = 0
        # The backlog: changes taken from the aggregator and not yet published.
        self._backlog_lock = threading.Lock()
        self._pages: deque[ChangesPage] = deque()
        self._position = 0  # index of the next change to publish in self._pages[0]
        self._pending = 0

    def start(self) -> None:
        threading.Thread(target=self._feed, name="state-feed", daemon=True).start()
        threading.Thread(target=self._publish_loop, name="state-publish", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        with self._session:
            self._session.notify_all()

    def on_connect(self) -> None:
        generation = self.ctx.client.generation
        with self._session:
            self._session_gen = generation
            self._session.notify_all()
        self._put(_Republish(generation))

    def rebirth(self, done: Callable[[int], None]) -> None:
        """Republish every device; ``done(count)`` runs on the publisher thread afterwards."""
        self._put(_Rebirth(done))

    def outbox(self) -> dict[str, Any]:
        """``meta/health``'s ``outbox``: changes still to publish and the age of the oldest."""
        with self._backlog_lock:
            pending = self._pending
            oldest = (self._pages[0].changes[self._position].ts
                      if pending and self._pages else None)
        return {"pending": pending,
                "oldest_age_s": round(max(0.0, time.time() - oldest), 3) if oldest else 0.0,
                "thinned": 0}

    # --- the feed thread -----------------------------------------------------------------------
    def _feed(self) -> None:
        backoff = 0.5
        failing = False
        while not self._stop.is_set():
            try:
                if self.epoch is None:
                    self._load_snapshot()
                self._follow()
                if failing:
                    log.info("state-aggregator is reachable again")
                failing, backoff = False, 0.5
            except (ServiceError, ValidationError) as exc:
                if not failing:
                    log.warning("cannot follow the state-aggregator: %s", exc)
                failing = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _load_snapshot(self) -> None:
        # The body validated straight from JSON: one pass instead of decode, then validate.
        snap = Snapshot.model_validate_json(self.ctx.aggregator.get_bytes("/snapshot",
                                                                          timeout=30.0))
        folded = self._folded(snap)
        self.epoch, self.seq = snap.epoch, snap.seq
        self._put(_Loaded(snap, folded))

    def _folded(self, snap: Snapshot) -> list[Change]:
        """The changes between the position the snapshot was asked at and the one it was made
        at. A restarted aggregator answers only after its warm-up (up to seconds): a device
        registered meanwhile, its first states, its events would otherwise reach MQTT only as
        the snapshot's last state, and its events and errors never."""
        seq = snap.seq if snap.asked_seq is None else snap.asked_seq
        folded: list[Change] = []
        while seq < snap.seq:
            page = ChangesPage.model_validate_json(self.ctx.aggregator.get_bytes(
                "/changes", params={"since": seq, "epoch": snap.epoch}, timeout=30.0))
            if page.resync or not page.changes:
                break  # the aggregator restarted again: _follow finds out and resyncs
            folded.extend(c for c in page.changes if c.seq <= snap.seq)
            seq = page.seq
        if folded:
            log.info("%d changes came in while the snapshot was made: published before it",
                     len(folded))
        return folded

    def _follow(self) -> None:
        page = ChangesPage.model_validate_json(self.ctx.aggregator.get_bytes(
            "/changes", params={"since": self.seq, "epoch": self.epoch, "wait": LONG_POLL_S},
            timeout=LONG_POLL_S + 10.0,
        ))
        if page.resync:
            log.info("state-aggregator restarted or the change log moved on: resyncing")
            self.epoch = None
            return
        if page.changes:
            with self._backlog_lock:
                self._pages.append(page)
                self._pending += len(page.changes)
            self._put(page)
        self.seq = page.seq

    def _put(self, item: _Item) -> None:
        """Queue for the publisher, waiting while it is behind (back-pressure on the feed)."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # --- the publisher thread --------------------------------------------------------------------
    def _publish_loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                generation = self._wait_for_session()
                if generation is None:
                    return
                self._handle(item, generation)
            except Exception:
                log.exception("publishing %s failed", type(item).__name__)

    def _wait_for_session(self) -> int | None:
        """The current session's generation once it is live (connected and ``online`` out);
        device topics published without one would go out again on the connection."""
        client = self.ctx.client
        with self._session:
            while not self._stop.is_set():
                if client.connected.is_set() and self._session_gen == client.generation:
                    return self._session_gen
                self._session.wait(0.2)
        return None

    def _handle(self, item: _Item, generation: int) -> None:
        if isinstance(item, _Loaded):
            self.devices.replay(item.folded, item.snapshot)
            changed = self.devices.load(item.snapshot)
            if self._full_gen < generation:
                self._publish_all(generation)
            else:  # a resync within a session that has everything: only what differs
                for rec in changed:
                    self.devices.publish_device(rec)
                self.devices.flush()
        elif isinstance(item, ChangesPage):
            self._publish_page(item)
        elif isinstance(item, _Republish):
            if self.ctx.mirror.synced and self._full_gen < item.generation:
                self._publish_all(generation)
        else:
            item.done(self._publish_all(generation))

    def _publish_all(self, generation: int) -> int:
        self._full_gen = generation
        return self.devices.publish_all()

    def _publish_page(self, page: ChangesPage) -> None:
        n = len(page.changes)

        def done(i: int) -> None:
            # The backlog figure every 64 changes: a lock per change costs more than it tells.
            if (i + 1) % 64 and i + 1 != n:
                return
            with self._backlog_lock:
                self._pending -= i + 1 - self._position
                self._position = i + 1

        self.devices.apply_batch(page.changes, done)
        with self._backlog_lock:
            self._pages.popleft()
            self._position = 0
