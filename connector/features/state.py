"""Device state, per-property values, availability, errors and events.

Two threads and a short queue between them. The feed thread long-polls the aggregator's change
log (one request carries every change that has piled up) and reloads the snapshot after a
restart of either side; the publisher thread applies each item to the mirror and publishes it.
The publisher is the only writer of device topics, and it publishes only on a live session
(connected, ``online`` out): a reconnection, a new snapshot and a rebirth each ask for a full
republish, and a republish that the current session already had is not repeated (a restart of
the bridge used to publish every topic twice: once for the snapshot, once for the connection).

The bridge is a reader of the aggregator's durable log with a committed cursor: when the
message that ended a page (or a snapshot) is acknowledged by the broker (PUBACK for QoS 1,
written to the socket for QoS 0), the committer thread stores the page's last ``seq`` at the
aggregator (``POST /cursors/mqtt-bridge``). A bridge that starts again (after a crash, a kill,
a restart during a broker outage) publishes from that position, before the snapshot: what was
accepted and not yet delivered goes out, in order per device, at least once; what was delivered
is not published again (at most the last unacknowledged page). That backlog is replayed like
the live log, a page at a time through the same short queue, each page committing its position:
it is as long as the outage was, and is never held whole.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from shared.compact import give_back_soon
from shared.errors import ServiceError
from shared.models import Change, ChangesPage
from shared.mqtt import Delivery

from ..context import BridgeContext
from .base import Feature
from .device_topics import DeviceTopics, Replay, SnapshotRecords

log = logging.getLogger(__name__)

LONG_POLL_S = 20
QUEUE_PAGES = 4  # pages fetched ahead of the publisher; beyond that the aggregator keeps them
# Changes per page. Up to QUEUE_PAGES + 2 pages are in memory at once as models (about 1.5 KB a
# change): pages of the aggregator's 10,000 were a peak of tens of MB that the process kept.
PAGE_CHANGES = 1000
READER = "mqtt-bridge"  # this bridge's cursor in the aggregator's durable log
COMMIT_EVERY_S = 0.5


@dataclass(frozen=True, slots=True)
class _Sent:
    """The log position ``seq`` is delivered once ``info`` (its last message) is."""

    epoch: str
    seq: int
    info: Delivery | None


@dataclass(frozen=True, slots=True)
class _Folded:
    """One page of what ``snapshot`` took in and holds only the end result of: the changes
    that came in while the aggregator made the bridge wait for it, and those a restarted bridge
    had not delivered (from its committed cursor on). Published before the snapshot is loaded;
    once they are, everything up to ``upto`` is delivered."""

    snapshot: SnapshotRecords
    changes: list[Change]
    upto: int


@dataclass(frozen=True, slots=True)
class _Loaded:
    """A snapshot, after the pages of what it took in."""

    snapshot: SnapshotRecords


@dataclass(frozen=True, slots=True)
class _Republish:
    """Everything again for the session ``generation`` (unless it already had it)."""

    generation: int


@dataclass(frozen=True, slots=True)
class _Rebirth:
    """Everything again, whatever was published before; ``done`` gets the device count."""

    done: Callable[[int], None]


_Item = _Folded | _Loaded | ChangesPage | _Republish | _Rebirth


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
        # Positions published and waiting for the broker's acknowledgement; the committer
        # thread stores the newest acknowledged one at the aggregator.
        self._sent: deque[_Sent] = deque()
        self._sent_lock = threading.Lock()
        self._committed: tuple[str, int] | None = None
        self._resumed = False  # the committed cursor is read once, when the bridge starts
        # Where the next snapshot's fold starts when the last one broke off (the aggregator
        # went away during a long replay): the pages queued so far are not fetched again.
        self._unfolded: tuple[str, int] | None = None
        self._replay: tuple[SnapshotRecords, Replay] | None = None  # the publisher's replay in progress
        self._commit_wake = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._feed, name="state-feed", daemon=True).start()
        threading.Thread(target=self._publish_loop, name="state-publish", daemon=True).start()
        threading.Thread(target=self._commit_loop, name="state-commit", daemon=True).start()

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

    def outbox(self, durable: dict[str, Any] | None = None) -> dict[str, Any]:
        """``meta/health``'s ``outbox``: changes still to publish and the age of the oldest.
        ``durable`` is the aggregator's answer for its log (measured from this bridge's
        committed cursor, so it counts what waits on disk too); without one, this bridge's own
        backlog."""
        if durable is not None and "pending" in durable:
            return {"pending": int(durable["pending"]),
                    "oldest_age_s": float(durable.get("oldest_age_s") or 0.0),
                    "thinned": int(durable.get("thinned") or 0),
                    "thinned_events": int(durable.get("thinned_events") or 0)}
        with self._backlog_lock:
            pending = self._pending
            oldest = self._oldest_pending_ts() if pending else None
        return {"pending": pending,
                "oldest_age_s": round(max(0.0, time.time() - oldest), 3) if oldest else 0.0,
                "thinned": 0, "thinned_events": 0}

    def _oldest_pending_ts(self) -> float | None:
        """The time of the first change not yet published (under ``_backlog_lock``). The first
        page may be wholly published and not yet dropped (its last ``done`` came, the publisher
        has not popped it): the oldest is then the next page's first change."""
        position = self._position
        for page in self._pages:
            if position < len(page.changes):
                return page.changes[position].ts
            position = 0
        return None

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
        cursor = None if self._resumed else self._cursor()
        resume = cursor or self._unfolded
        # Validated straight from JSON (one pass instead of decode, then validate) and kept
        # only as the records the mirror holds.
        snap = SnapshotRecords.of(self.ctx.aggregator.get_bytes("/snapshot", timeout=30.0))
        asked = snap.seq if snap.asked_seq is None else snap.asked_seq
        if resume is not None and resume[0] == snap.epoch:
            if resume[1] < asked:
                log.info("resuming from position %d: %d changes were accepted and not yet "
                         "delivered", resume[1], asked - resume[1])
                snap = replace(snap, asked_seq=resume[1])
            if cursor is not None:
                self._committed = cursor
        self._resumed = True
        self._fold(snap)
        self._unfolded = None
        self.epoch, self.seq = snap.epoch, snap.seq
        self._put(_Loaded(snap))

    def _fold(self, snap: SnapshotRecords) -> None:
        """Queue, a page at a time, the changes between the position the snapshot was asked at
        and the one it was made at. A restarted aggregator answers only after its warm-up (up
        to seconds): a device registered meanwhile, its first states, its events would
        otherwise reach MQTT only as the snapshot's last state, and its events and errors
        never. A restarted bridge asks from its committed cursor: its whole backlog is folded
        in, as long as the outage was, so the pages go to the publisher as they come (the
        queue's back-pressure bounds what is held) and each commits its position.

        The state a device holds in the snapshot is left to ``load`` (published once, not
        twice): a page past it commits only the position before it until the snapshot is
        loaded, or a restart in between would skip it."""
        seq = snap.seq if snap.asked_seq is None else snap.asked_seq
        held = {seq for seq in snap.held.values() if seq is not None}
        safe = snap.seq  # the newest position that is delivered once the pages are
        folded = 0
        while seq < snap.seq:
            page = ChangesPage.model_validate_json(self.ctx.aggregator.get_bytes(
                "/changes", params={"since": seq, "epoch": snap.epoch, "limit": PAGE_CHANGES},
                timeout=30.0))
            if page.resync or not page.changes:
                break  # the aggregator restarted again: _follow finds out and resyncs
            changes = [c for c in page.changes if c.seq <= snap.seq]
            seq = min(page.seq, snap.seq)
            safe = min([safe, *(c.seq - 1 for c in changes if c.seq in held)])
            upto = min(seq, safe)
            self._put(_Folded(snap, changes, upto))
            self._unfolded = (snap.epoch, upto)
            folded += len(changes)
        if folded:
            log.info("%d changes came in while the snapshot was made: published before it",
                     folded)

    def _cursor(self) -> tuple[str, int] | None:
        """This bridge's committed position in the aggregator's durable log (``None`` without
        one). A bridge that has none yet starts at the log's head, and commits that before it
        asks for the snapshot: a crash before its first acknowledged page then resumes there,
        not from a later snapshot that skips what came in meanwhile."""
        body = self.ctx.aggregator.get(f"/cursors/{READER}", timeout=10.0)
        seq, epoch, head = body.get("seq"), body.get("epoch"), body.get("head")
        if not body.get("durable") or not isinstance(epoch, str):
            return None
        if isinstance(seq, int):
            return epoch, seq
        if isinstance(head, int):
            self._commit_position(epoch, head)
            return epoch, head
        return None

    def _follow(self) -> None:
        page = ChangesPage.model_validate_json(self.ctx.aggregator.get_bytes(
            "/changes", params={"since": self.seq, "epoch": self.epoch, "wait": LONG_POLL_S,
                                 "limit": PAGE_CHANGES},
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
            del item  # a page of changes, a snapshot's records: free before the trim
            give_back_soon()

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
        if isinstance(item, _Folded):
            if self._replay is None or self._replay[0] is not item.snapshot:
                self._replay = (item.snapshot, self.devices.start_replay(item.snapshot))
            replay = self._replay[1]
            if replay.generation != generation:  # a new connection: it has heard nothing yet
                replay.announced.clear()
                replay.generation = generation
            self.devices.replay(replay, item.changes)
            self._delivered(item.snapshot.epoch, item.upto)
        elif isinstance(item, _Loaded):
            self._handle_loaded(item, generation)
            self._delivered(item.snapshot.epoch, item.snapshot.seq)
        elif isinstance(item, ChangesPage):
            self._publish_page(item)
            self._delivered(item.epoch, item.seq)
        elif isinstance(item, _Republish):
            # During a replay the mirror is older than what went out: the snapshot's load
            # that ends the replay publishes everything for this session instead.
            if (self.ctx.mirror.synced and self._replay is None
                    and self._full_gen < item.generation):
                self._publish_all(generation)
        else:
            item.done(self._publish_all(generation))

    def _handle_loaded(self, item: _Loaded, generation: int) -> None:
        replay = self._replay[1] if self._replay and self._replay[0] is item.snapshot else None
        self._replay = None
        changed = self.devices.load(item.snapshot)
        if self._full_gen < generation:
            # what the replay just announced on this connection is not said twice
            self._publish_all(generation, replay.announced
                              if replay is not None and replay.generation == generation else None)
        else:  # a resync within a session that has everything: only what differs
            for rec in changed:
                self.devices.publish_device(rec)
            self.devices.flush()

    def _publish_all(self, generation: int, announced: dict[str, bool] | None = None) -> int:
        self._full_gen = generation
        return self.devices.publish_all(announced)

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

    # --- the committer thread --------------------------------------------------------------------
    def _delivered(self, epoch: str, seq: int) -> None:
        """``seq`` is published: it is delivered once the last message sent for it is."""
        with self._sent_lock:
            self._sent.append(_Sent(epoch, seq, self.ctx.publisher.last))

    def _commit_loop(self) -> None:
        while not self._stop.is_set():
            self._commit_wake.wait(COMMIT_EVERY_S)
            self._commit_wake.clear()
            try:
                self.commit()
            except Exception:  # the next round tries again; the thread must live on
                log.exception("committing the published position failed")

    def commit(self) -> None:
        """Store the newest acknowledged position at the aggregator. The broker acknowledges a
        session's messages in order; a QoS 0 message lost with its connection is never
        "published", so a later acknowledged one moves the cursor past it."""
        with self._sent_lock:
            acked = [i for i, s in enumerate(self._sent) if s.info is None or s.info.acknowledged]
            if not acked:
                return
            newest = self._sent[acked[-1]]
            for _ in range(acked[-1] + 1):
                self._sent.popleft()
        if self._committed != (newest.epoch, newest.seq):
            self._commit_position(newest.epoch, newest.seq)

    def _commit_position(self, epoch: str, seq: int) -> None:
        try:
            self.ctx.aggregator.post(f"/cursors/{READER}", {"epoch": epoch, "seq": seq},
                                     timeout=5.0)
        except ServiceError as exc:
            # The next acknowledged page commits a newer position; until then a restart of the
            # bridge publishes a little more again (at least once), never less.
            log.debug("cannot commit the position %d: %s", seq, exc)
            return
        self._committed = (epoch, seq)

