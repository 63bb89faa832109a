"""The dashboard's live feed, free of Flask: the web worker follows the aggregator's change log
with a cursor of its own (the same long poll the bridge uses) and fans the changes out to the
browsers that hold a Server-Sent Events stream.

Fan-out is by coalescing, not by queueing every change: a subscriber holds the *set* of devices
that changed since it last sent them, and a device is sent at most once per ``min_gap`` seconds
(its latest row then). So a client's backlog is bounded by the number of devices, however fast
readings arrive, and a slow client never makes the follower wait. Past ``max_dirty`` devices the
subscriber is told to reload instead.

The feed follows the log only while someone looks (a stream is open, or a page was rendered in
the last ``linger_s`` seconds): an unwatched hub pays nothing for its dashboard. Charts start from
the readings history and go on with what arrived while the feed was following.

SSE ids are ``{epoch}:{seq}`` of the change log: a browser's ``Last-Event-ID`` is its cursor in
the aggregator's durable log (``outbox.db``), whose epoch and numbering survive restarts of the
aggregator and of this program. A reconnecting client is sent the devices that changed after it:
from a ring of the last ``ring`` changes while that holds the position (no request), else from the
log itself (``/changes/devices``: one request answered from the aggregator's memory or disk, a
list of at most every device, and the gap's newest 1,000 events, errors and command results,
which join the recent lists: the feed may not have followed them). The log keeps the newest
``OUTBOX_REPLAY`` published changes for this; a position older than that, or from another epoch
(a log that was not durable, or a new file), is told to reload (the page is a snapshot). Each
device is sent as its current row: the browser's backlog is a set of devices, never a queue of
readings, whatever the gap was.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.errors import ServiceError
from shared.rest import RestClient

log = logging.getLogger(__name__)

RESET = "reset"
WAIT_S = 20  # the long poll's wait; the aggregator caps it at 30
RECENT = 20  # events and errors kept per device


def numeric(values: dict[str, Any]) -> dict[str, float]:
    """The values a chart can draw (booleans count as 0/1: a relay's state over time)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, int | float) and math.isfinite(value):  # bool is an int: 0/1
            out[key] = float(value)
    return out


@dataclass(eq=False)  # compared and hashed by identity: kept in a set
class Subscriber:
    """One SSE client: the devices to send, when each was last sent, and a reset flag."""

    device: str | None = None  # only this device (a device page), else every device
    min_gap: float = 1.0
    max_dirty: int = 20_000
    clock: Callable[[], float] = time.monotonic
    dirty: dict[str, None] = field(default_factory=dict)  # an ordered set
    sent_at: dict[str, float] = field(default_factory=dict)
    reset: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)

    def mark(self, device_id: str) -> None:
        if self.device is not None and device_id != self.device:
            return
        with self.cond:
            if device_id in self.dirty:
                return  # already due: coalesced with the change before
            if len(self.dirty) >= self.max_dirty:
                self.reset = True
            else:
                self.dirty[device_id] = None
            self.cond.notify()

    def resync(self) -> None:
        with self.cond:
            self.reset = True
            self.cond.notify()

    def take(self, timeout: float) -> list[str] | str:
        """The devices due now (waits up to ``timeout`` for one), or ``RESET``."""
        deadline = self.clock() + timeout
        with self.cond:
            while True:
                if self.reset:
                    return RESET
                now = self.clock()
                due = [d for d in self.dirty if now - self.sent_at.get(d, -math.inf) >= self.min_gap]
                if due:
                    for d in due:
                        del self.dirty[d]
                        self.sent_at[d] = now
                    return due
                wake = deadline
                if self.dirty:  # the earliest a throttled device becomes due
                    wake = min(wake, min(self.sent_at[d] for d in self.dirty) + self.min_gap)
                if now >= deadline:
                    return []
                self.cond.wait(max(0.0, wake - now))


class Feed:
    def __init__(self, aggregator: RestClient, *, ring: int = 10_000, history: int = 600,
                 linger_s: float = 60.0, min_gap: float = 1.0) -> None:
        self._agg = aggregator
        self._ring: deque[tuple[int, str]] = deque(maxlen=ring)
        self._history_len = history
        self._linger = linger_s
        self.min_gap = min_gap
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch_until = 0.0
        self.epoch = ""
        self.seq = 0
        self.rows: dict[str, dict[str, Any]] = {}
        self.history: dict[str, deque[tuple[float, dict[str, float]]]] = {}
        self.recent: dict[str, deque[dict[str, Any]]] = {}
        self.subscribers: set[Subscriber] = set()
        self.applied = 0
        self.replays = 0  # reconnects answered from the aggregator's durable log

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dashboard-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._wake.notify_all()
            subs = list(self.subscribers)
        for sub in subs:
            sub.resync()

    def watch(self, timeout: float = 5.0) -> bool:
        """Someone looks: follow the log (for ``linger_s`` more); ``True`` once in sync."""
        with self._lock:
            self._watch_until = time.monotonic() + self._linger
            self._wake.notify_all()
        return self._synced.wait(timeout)

    def position(self) -> str:
        with self._lock:
            return f"{self.epoch}:{self.seq}"

    # --- subscribers -----------------------------------------------------------------------------
    def subscribe(self, last_event_id: str | None, *, device: str | None = None) -> Subscriber:
        """A new subscriber; the devices changed after ``last_event_id`` are due at once: from
        the ring when it still holds that position, else from the aggregator's durable log
        (``/changes/devices``). When neither holds it (another epoch, or older than the log
        keeps: ``OUTBOX_REPLAY``), the subscriber gets a reset and the page reloads."""
        sub = Subscriber(device=device, min_gap=self.min_gap)
        synced = self.watch()  # from a position of the current log, not one being loaded
        gap: tuple[str, int, int] | None = None
        with self._lock:
            self.subscribers.add(sub)  # from here on, every change applied marks it
            if not synced:
                sub.reset = True
            elif last_event_id:
                epoch, _, raw = last_event_id.partition(":")
                seq = int(raw) if raw.isdigit() else -1
                oldest = self._ring[0][0] if self._ring else self.seq + 1
                if epoch != self.epoch or seq > self.seq or seq < 0:
                    sub.reset = True  # not a position of this log
                elif seq < oldest - 1 and seq < self.seq:
                    gap = (self.epoch, seq, self.seq)  # the ring moved past it: ask the log
                else:
                    for s, device_id in self._ring:
                        if s > seq:
                            sub.mark(device_id)
        if gap is not None:
            self.replays += 1
            devices = self._replay(*gap)
            if devices is None:
                sub.resync()
            else:
                for device_id in devices:
                    sub.mark(device_id)
        return sub

    def _replay(self, epoch: str, since: int, until: int) -> list[str] | None:
        """The devices the durable log says changed after ``since`` up to ``until``; the
        events, errors and command results among those changes join the devices' recent lists
        (the feed may not have followed them: it was unwatched, or this program restarted).
        ``None`` when the log no longer holds that range or cannot be asked."""
        try:
            answer = self._agg.get("/changes/devices", params={
                "since": since, "until": until, "epoch": epoch}, timeout=10.0)
        except ServiceError as exc:
            log.warning("dashboard feed: cannot replay from the log: %s", exc)
            return None
        if not answer.get("complete"):
            return None
        with self._lock:
            for change in answer.get("notes", []):
                self._remember(change)
        return [str(d) for d in answer.get("devices", [])]

    def _remember(self, change: dict[str, Any]) -> None:
        """An event, error or command result into its device's recent list, in seq order and
        once (under the lock); an error newer than the row's becomes the row's."""
        device_id, seq = str(change.get("device_id")), int(change["seq"])
        row = self.rows.get(device_id)
        if row is None:
            return
        kind = change.get("kind")
        entry: dict[str, Any] = {"kind": kind, "ts": change["ts"], "seq": seq}
        if kind == "error":
            entry.update(error_code=change.get("error_code"), message=change.get("message"),
                         severity=change.get("severity"))
            if row["error"] is None or row["error"].get("seq", -1) < seq:
                row["error"] = entry
        elif kind == "event":
            entry.update(event=change.get("event"), data=change.get("data"))
        else:  # a command's result, whoever sent it (MQTT, this page, another browser)
            entry.update({k: change.get(k) for k in ("cmd_id", "values", "status", "result",
                                                     "error")})
        recent = self.recent.setdefault(device_id, deque(maxlen=RECENT))
        if not recent or recent[-1].get("seq", -1) < seq:
            recent.append(entry)  # the usual case: following the log
        elif all(e.get("seq") != seq for e in recent):
            kept = sorted([*recent, entry], key=lambda e: int(e.get("seq", -1)))
            recent.clear()
            recent.extend(kept[-RECENT:])

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self.subscribers.discard(sub)

    def rows_for(self, device_ids: list[str]) -> tuple[str, list[dict[str, Any]]]:
        """The current rows of ``device_ids`` and the position (SSE id) they are valid at."""
        with self._lock:
            rows = [self._public(d) for d in device_ids if d in self.rows]
            return f"{self.epoch}:{self.seq}", rows

    def _public(self, device_id: str) -> dict[str, Any]:
        row = dict(self.rows[device_id])
        row["recent"] = list(self.recent.get(device_id, ()))[-5:]
        return row

    def device(self, device_id: str) -> dict[str, Any] | None:
        with self._lock:
            if device_id not in self.rows:
                return None
            row = self._public(device_id)
            row["recent"] = list(self.recent.get(device_id, ()))
            row["series"] = [[ts, vals] for ts, vals in self.history.get(device_id, ())]
            return row

    def all_rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self.rows.values()]

    # --- following the change log ----------------------------------------------------------------
    def _watched(self) -> bool:
        return bool(self.subscribers) or time.monotonic() < self._watch_until

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                while not self._watched() and not self._stop.is_set():
                    self._synced.clear()  # unwatched: the next look starts from a snapshot
                    self._wake.wait(max(0.1, self._watch_until - time.monotonic())
                                    if self._watch_until else None)
            if self._stop.is_set():
                return
            try:
                if not self._synced.is_set():
                    self._load(self._agg.get("/snapshot", timeout=10.0))
                self._follow()
            except ServiceError as exc:
                log.warning("dashboard feed: %s; retrying", exc)
                self._stop.wait(1.0)

    def _load(self, snap: dict[str, Any]) -> None:
        with self._lock:
            self.epoch, self.seq = str(snap["epoch"]), int(snap["seq"])
            self.rows = {}
            for entry in snap["devices"]:
                info, state = entry["info"], entry.get("state") or {}
                self.rows[info["device_id"]] = self._row(info, state)
            for gone in set(self.history) - set(self.rows):
                del self.history[gone]
            self._ring.clear()
            subs = list(self.subscribers)
            self._synced.set()
        for sub in subs:
            sub.resync()  # their pages show what was before the gap

    @staticmethod
    def _row(info: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        return {"device_id": info["device_id"], "name": info.get("name"),
                "source": info.get("source"), "writable": info.get("writable", False),
                "units": info.get("units") or {}, "online": info.get("online", False),
                "last_seen": info.get("last_seen"), "ts": state.get("ts"),
                "values": state.get("values") or {}, "error": None}

    def _follow(self) -> None:
        page = self._agg.get("/changes", params={"since": self.seq, "epoch": self.epoch,
                                                  "wait": WAIT_S}, timeout=WAIT_S + 10.0)
        if page.get("resync"):
            self._synced.clear()
            return
        with self._lock:
            touched: dict[str, None] = {}
            for change in page["changes"]:
                self._apply(change)
                touched[str(change.get("device_id"))] = None
            self.seq = max(self.seq, int(page["seq"]))
            subs = list(self.subscribers)
        for device_id in touched:
            for sub in subs:
                sub.mark(device_id)

    def _apply(self, change: dict[str, Any]) -> None:
        """One change into the rows (under the lock)."""
        kind, device_id = change.get("kind"), str(change.get("device_id"))
        self.seq = int(change["seq"])
        self.applied += 1
        self._ring.append((self.seq, device_id))
        if kind == "device":
            action, info = change.get("action"), change.get("info")
            if action == "updated" and info and device_id in self.rows:
                kept = self.rows[device_id]  # new units or name; its values stay
                self.rows[device_id] = self._row(info, kept) | {"error": kept["error"]}
            elif action in ("added", "updated") and info:
                self.rows[device_id] = self._row(info, {})
            else:
                self.rows.pop(device_id, None)
                self.history.pop(device_id, None)
            return
        row = self.rows.get(device_id)
        if row is None:
            return
        if kind == "state":
            row["values"], row["ts"] = change["values"], change["ts"]
            row["last_seen"] = max(row["last_seen"] or 0.0, change["ts"])
            series = self.history.setdefault(device_id, deque(maxlen=self._history_len))
            series.append((change["ts"], numeric({k: change["values"][k]
                                                  for k in change.get("sampled") or change["values"]
                                                  if k in change["values"]})))
        elif kind == "availability":
            row["online"] = bool(change["online"])
        elif kind in ("error", "event", "command"):
            self._remember(change)
