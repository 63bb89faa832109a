"""The change log the bridge long-polls: every state, error, event, availability and registry
change, and every command's result, gets a sequence number; ``since(seq)`` returns all that
came after, waiting up to a deadline when there is nothing yet. One request carries as many
changes as have piled up, so the bridge makes a constant number of calls however many devices
there are.

The shared change models (``StateChange`` ...) are built once when the change happens and kept
as their JSON, one after the other in one buffer with an array of where each ends (a ``bytes``
object each cost about 40 bytes more a change, and thousands of small objects kept among the
ingest's short-lived ones): ``/changes`` joins them as they are, and nothing is encoded again
per reader. The log is bounded by count
and by bytes (``CHANGELOG_MAX``, ``CHANGELOG_MAX_MB``): past either, the oldest changes go (down
to three quarters of the bound, so trimming is rare), and a reader that falls behind them gets
``resync`` and reloads the snapshot, which holds every device's last state.

With an outbox (the durable log, ``outbox/``) every change is on disk before the batch that made
it ends, and so before the handler is answered and before a reader can see it; the ``epoch`` and
the numbering go on across a restart, and a position older than memory holds is read from disk
(a reader resuming after a restart, or one that fell behind the bounds).
Without one (or with a store that cannot be opened) a restart gives a new ``epoch``; a consumer
whose epoch or position is gone gets ``resync`` and reloads the snapshot.
"""

from __future__ import annotations

import threading
import uuid
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from pydantic import TypeAdapter

from shared.jsonutil import loads
from shared.models import (
    AvailabilityChange,
    Change,
    CommandChange,
    DeviceChange,
    ErrorChange,
    EventChange,
    StateChange,
    to_json,
)

from .outbox.service import Outbox

AnyChange = (StateChange | ErrorChange | EventChange | AvailabilityChange | DeviceChange
             | CommandChange)
C = TypeVar("C", StateChange, ErrorChange, EventChange, AvailabilityChange, DeviceChange,
            CommandChange)


_CHANGES: TypeAdapter[list[AnyChange]] = TypeAdapter(list[Change])
KEEP = 0.75  # a trim keeps this share of each bound
NOTE_KINDS = frozenset({"event", "error", "command"})  # what a dashboard lists per device


@dataclass(slots=True)
class Batch:
    """One ``batch()``: the handler batch it applies (``key``: id, accepted, rejected), and
    whether its changes reached the disk (``durable``, set when it ends)."""

    key: tuple[str, int, int] | None = None
    durable: bool = False


class ChangeLog:
    def __init__(self, capacity: int = 100_000, max_bytes: int = 16 * 2**20, *,
                 outbox: Outbox | None = None) -> None:
        stored = outbox.epoch if outbox is not None else None
        self._outbox = outbox if stored is not None else None
        self.epoch: str = stored or uuid.uuid4().hex[:12]
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._json = bytearray()  # every change held, as its JSON, one after the other
        self._ends = array("Q")  # where each ends, counted from the first change ever held
        self._cut = 0  # how many bytes of changes the bounds dropped (where ``_json`` starts)
        self._seq = self._outbox.last_seq() if self._outbox is not None else 0
        self._first = self._seq + 1  # seq of self._items[0]
        self.trimmed = 0  # changes dropped by the bounds since start
        self._cond = threading.Condition()  # on an RLock: a batch holds it around its appends
        self._batching = 0
        self._unsaved: list[tuple[AnyChange, bytes]] = []  # this batch's changes, for the outbox
        self._batch: Batch | None = None
        self._unstored = 0  # the newest seq the disk refused (it lives in memory only)

    @property
    def durable(self) -> bool:
        return self._outbox is not None

    @property
    def seq(self) -> int:
        return self._seq

    def append(self, make: Callable[[int], C]) -> C:
        """Add the change ``make(seq)`` builds with the next sequence number (the models are
        frozen, so the number goes in as it is built) and wake the waiting readers."""
        with self._cond:
            change = make(self._seq + 1)
            data = to_json(change)  # the buffer takes a copy
            self._seq += 1
            self._json += data
            self._ends.append(self._cut + len(self._json))
            if len(self._ends) > self._capacity or len(self._json) > self._max_bytes:
                self._trim()
            if self._outbox is not None:
                # A copy of exactly its length until the batch is saved: orjson's own result
                # keeps its whole 4 KB buffer (tracemalloc: 4,098 B for a 100-byte change).
                self._unsaved.append((change, bytes(memoryview(data))))
            if not self._batching:
                self._save(None)
                self._cond.notify_all()
            return change

    def _trim(self) -> None:
        """Drop the oldest changes until both bounds have a quarter of room again."""
        keep_n, keep_bytes = int(self._capacity * KEEP), int(self._max_bytes * KEEP)
        held = len(self._ends)
        drop = max(0, held - keep_n)
        if len(self._json) > keep_bytes:  # the fewest oldest changes that leave keep_bytes
            fewest = bisect_left(self._ends, self._cut + len(self._json) - keep_bytes) + 1
            drop = max(drop, min(fewest, held - 1))  # the newest change stays, however large
        if not drop:
            return
        freed = self._ends[drop - 1] - self._cut
        del self._json[:freed]  # the front of a bytearray goes without moving the rest
        del self._ends[:drop]
        self._cut += freed
        self._first += drop
        self.trimmed += drop

    def _held(self, start: int, stop: int) -> list[bytes]:
        """The held changes from index ``start`` to ``stop`` (0: the oldest held), a ``bytes``
        each (with the lock held)."""
        ends, cut = self._ends[start:stop], self._cut
        if not ends:
            return []
        first = self._ends[start - 1] - cut if start else 0
        with memoryview(self._json) as view:  # released at once: a view stops the buffer growing
            chunk = view[first:ends[-1] - cut].tobytes()
        out: list[bytes] = []
        begin, shift = 0, cut + first
        for end in ends:
            out.append(chunk[begin:end - shift])
            begin = end - shift
        return out

    def stats(self) -> dict[str, int]:
        """What the log holds now, and its bounds (``/health``)."""
        with self._cond:
            return {"changes": len(self._ends), "bytes": len(self._json),
                    "max_changes": self._capacity, "max_bytes": self._max_bytes,
                    "trimmed": self.trimmed}

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """Appends made inside reach the disk in one transaction and wake the readers once, at
        the end (an ingest of 1,000 readings would otherwise notify 1,000 times). Readers wait
        on the same lock, so none sees a change before it is stored."""
        with self._cond:
            if not self._batching:
                self._batch = Batch()
            batch = self._batch
            assert batch is not None
            self._batching += 1
            try:
                yield batch
            finally:
                self._batching -= 1
                if not self._batching:
                    self._batch = None
                    batch.durable = self._save(batch.key)
                    self._cond.notify_all()

    def _save(self, key: tuple[str, int, int] | None) -> bool:
        """Store what was appended since the last save (with the lock held)."""
        if self._outbox is None:
            return False
        changes, self._unsaved = self._unsaved, []
        if not changes and key is None:
            return True
        stored = self._outbox.append(changes, key)
        if not stored and changes:
            self._unstored = self._seq
        return stored

    def since_json(self, seq: int, *, limit: int = 10_000,
                   wait: float = 0.0) -> tuple[int, bool, list[bytes]]:
        """``(last_seq, resync, changes as JSON)`` for everything after ``seq``: from memory, or
        from the disk when memory no longer holds it."""
        with self._cond:
            if wait > 0 and seq >= self._seq:
                self._cond.wait_for(lambda: self._seq > seq, timeout=wait)
            if seq > self._seq:
                return self._seq, True, []
            if seq + 1 >= self._first:
                start = seq + 1 - self._first
                items = self._held(start, start + limit)
                last = self._first + start + len(items) - 1 if items else self._seq
                return last, False, items
            first = self._first
        floor = self._outbox.floor() if self._outbox is not None else None
        if floor is None or seq < floor:  # released: a reader that far behind reloads
            return self._seq, True, []
        stored = self._outbox.since(seq, limit, before=first) if self._outbox is not None else None
        if stored is None:
            return self._seq, True, []
        if stored:
            return stored[-1][0], False, [body for _, body in stored]
        # The disk has nothing more before what memory holds (thinned away, or the disk was
        # full when it came in): go on from memory.
        return self.since_json(first - 1, limit=limit)

    def changed_between(self, since: int, until: int, *,
                        notes: int = 1000) -> tuple[list[str], list[bytes]] | None:
        """What a dashboard browser that reconnects with its position needs: the devices with a
        change after ``since`` up to ``until``, and the newest ``notes`` events, errors and
        command results among those changes (JSON, oldest first). From memory while it holds
        the range, else from the durable log; ``None`` when neither holds all of it (the
        browser reloads)."""
        with self._cond:
            until = min(until, self._seq)
            if since >= until:
                return [], []
            if since + 1 >= self._first:
                start = since + 1 - self._first
                items: list[bytes] | None = self._held(start, until + 1 - self._first)
            else:
                items = None
                if self._outbox is None or since < self._unstored:
                    return None  # part of the range was never on disk and memory let it go
        if items is not None:  # parsed outside the lock: appends go on meanwhile
            devices: dict[str, None] = {}
            found: list[bytes] = []
            for item in items:
                change = loads(item)
                devices[str(change["device_id"])] = None
                if change["kind"] in NOTE_KINDS:
                    found.append(item)
            return list(devices), found[-notes:] if notes else []
        assert self._outbox is not None
        changed = self._outbox.devices_between(since, until)
        noted = self._outbox.notes_between(since, until, notes) if notes else []
        if changed is None or noted is None:
            return None
        return changed, noted

    def since(self, seq: int, *, limit: int = 10_000,
              wait: float = 0.0) -> tuple[int, bool, list[AnyChange]]:
        """``since_json`` as the models (in-process readers and tests; ``/changes`` sends the
        JSON as it is)."""
        last, resync, items = self.since_json(seq, limit=limit, wait=wait)
        return last, resync, _CHANGES.validate_json(b"[" + b",".join(items) + b"]")

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()
