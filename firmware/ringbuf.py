"""The offline buffer: readings that could not be delivered, in a fixed-size ring in flash.

One data file of ``slots`` fixed-size records (so the file never grows and a slot is rewritten in
place, which LittleFS spreads over the flash) and a small meta file ``{head, count, dropped,
next_seq}``. When the ring is full the oldest reading goes and ``dropped`` counts it. A reading
leaves the ring only after the hub accepted it, so a reboot while the hub is away loses nothing
that was written. The meta file is written after the record: a power cut between the two loses
that one reading, it never makes one appear twice.
"""

import json

from .hal import Hal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SLOT = 192  # bytes per record: a reading with a handful of values fits with room to spare


class RecordTooLarge(ValueError):
    """Raised by ``append`` for a reading whose JSON does not fit in one slot."""


class RingBuffer:
    def __init__(self, hal: Hal, name: str, slots: int) -> None:
        self.hal = hal
        self.data_name = name + ".dat"
        self.meta_name = name + ".json"
        self.slots = slots
        meta = self._load_meta()
        self.head = meta["head"]
        self.count = meta["count"]
        self.dropped = meta["dropped"]
        self.next_seq = meta["next_seq"]

    def _load_meta(self) -> "dict[str, Any]":
        fresh = {"head": 0, "count": 0, "dropped": 0, "next_seq": 1, "slots": self.slots}
        raw = self.hal.read(self.meta_name)
        meta = None
        if raw is not None:
            try:
                meta = json.loads(raw)
            except ValueError:
                meta = None
        size_ok = self.hal.exists(self.data_name)
        if not isinstance(meta, dict) or meta.get("slots") != self.slots or not size_ok:
            # A new ring (first boot, or the size changed): start empty but keep counting.
            if isinstance(meta, dict):
                fresh["dropped"] = int(meta.get("dropped", 0)) + int(meta.get("count", 0))
                fresh["next_seq"] = int(meta.get("next_seq", 1))
            self._create()
            self._save_meta(fresh)
            return fresh
        return meta

    def _create(self) -> None:
        f = self.hal.open(self.data_name, "wb")
        blank = b" " * (SLOT - 1) + b"\n"
        for _ in range(self.slots):
            f.write(blank)
        f.close()

    def _save_meta(self, meta: "dict[str, Any] | None" = None) -> None:
        if meta is None:
            meta = {"head": self.head, "count": self.count, "dropped": self.dropped,
                    "next_seq": self.next_seq, "slots": self.slots}
        self.hal.write(self.meta_name, json.dumps(meta).encode())

    def append(self, reading: "dict[str, Any]") -> int:
        """Store ``reading`` (a JSON object) at the tail; returns its sequence number."""
        seq = int(self.next_seq)
        reading["n"] = seq
        raw = json.dumps(reading).encode()
        if len(raw) > SLOT - 1:
            raise RecordTooLarge("reading of %d bytes does not fit a %d-byte slot" % (len(raw), SLOT))
        if self.count == self.slots:
            self.head = (self.head + 1) % self.slots  # oldest out
            self.count -= 1
            self.dropped += 1
        index = (self.head + self.count) % self.slots
        f = self.hal.open(self.data_name, "r+b")
        f.seek(index * SLOT)
        f.write(raw + b" " * (SLOT - 1 - len(raw)) + b"\n")
        f.close()
        self.count += 1
        self.next_seq += 1
        self._save_meta()
        return seq

    def peek(self, limit: int) -> "list[Any]":
        """The oldest ``limit`` readings, oldest first (they stay until ``drop_oldest``)."""
        out = []
        f = self.hal.open(self.data_name, "rb")
        try:
            for i in range(min(limit, self.count)):
                f.seek(((self.head + i) % self.slots) * SLOT)
                raw = f.read(SLOT)
                try:
                    out.append(json.loads(raw))
                except ValueError:
                    out.append(None)  # a torn slot: the caller drops it
        finally:
            f.close()
        return out

    def drop_oldest(self, n: int) -> None:
        """The oldest ``n`` readings were delivered (or are unusable): forget them."""
        n = min(n, self.count)
        self.head = (self.head + n) % self.slots
        self.count -= n
        self._save_meta()
