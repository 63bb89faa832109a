"""Device state, per-property values, availability, errors and events.

A feed thread long-polls the aggregator's change log (one request carries every change that has
piled up) and publishes each change; after a restart of either side it reloads the snapshot.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pydantic import ValidationError

from shared.errors import ServiceError
from shared.models import (
    AvailabilityChange,
    ChangesPage,
    DeviceChange,
    ErrorChange,
    EventChange,
    Snapshot,
    StateChange,
)
from shared.timeutil import iso

from .base import Feature

log = logging.getLogger(__name__)

LONG_POLL_S = 20


class StateFeature(Feature):
    name = "state"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one publisher of device topics at a time
        self.epoch: str | None = None
        self.seq = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="state-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def on_connect(self) -> None:
        if self.ctx.mirror.synced:
            self.republish_all()

    # --- the feed ----------------------------------------------------------------------------
    def _run(self) -> None:
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
        snap = Snapshot.model_validate(self.ctx.aggregator.get("/snapshot", timeout=30.0))
        mirror = self.ctx.mirror
        with self._lock:
            mirror.devices = {d.info.device_id: d.info.model_dump() for d in snap.devices}
            mirror.states = {d.info.device_id: d.state.model_dump()
                             for d in snap.devices if d.state is not None}
            mirror.groups = snap.groups
            mirror.synced = True
            self.epoch, self.seq = snap.epoch, snap.seq
        log.info("snapshot: %d devices, %d with state", len(mirror.devices), len(mirror.states))
        self.republish_all()

    def _follow(self) -> None:
        body = self.ctx.aggregator.get(
            "/changes", params={"since": self.seq, "epoch": self.epoch, "wait": LONG_POLL_S},
            timeout=LONG_POLL_S + 10.0,
        )
        page = ChangesPage.model_validate(body)
        if page.resync:
            log.info("state-aggregator restarted or the change log moved on: resyncing")
            self.epoch = None
            return
        with self._lock:
            for change in page.changes:
                self._apply(change)
            self.seq = page.seq

    def _apply(self, change: Any) -> None:
        mirror = self.ctx.mirror
        if isinstance(change, StateChange):
            mirror.states[change.device_id] = change.model_dump()
            self._publish_state(change.device_id, change.ts, change.values, change.sampled)
        elif isinstance(change, AvailabilityChange):
            info = mirror.devices.get(change.device_id)
            if info is not None:
                info["online"] = change.online
            self._publish_availability(change.device_id, change.online)
        elif isinstance(change, ErrorChange):
            self.ctx.publisher.json(self.ctx.topics.error(change.device_id), {
                "timestamp": iso(change.ts), "error_code": change.error_code,
                "message": change.message, "severity": change.severity}, qos=1)
        elif isinstance(change, EventChange):
            payload: dict[str, Any] = {"timestamp": iso(change.ts), "event": change.event}
            if change.data is not None:
                payload["data"] = change.data
            self.ctx.publisher.json(self.ctx.topics.events(change.device_id), payload, qos=1)
        elif isinstance(change, DeviceChange):
            self.epoch = None  # the registry changed shape: reload it whole

    # --- publishing ----------------------------------------------------------------------------
    def _publish_state(self, device_id: str, ts: float, values: dict[str, Any],
                       sampled: list[str]) -> None:
        topics, pub = self.ctx.topics, self.ctx.publisher
        pub.json(topics.state(device_id), {"device_id": device_id, "timestamp": iso(ts), **values},
                 retain=pub.state_retain)
        for prop in sampled:
            if prop in values:
                pub.json(topics.state_property(device_id, prop), values[prop], retain=True)

    def _publish_availability(self, device_id: str, online: bool) -> None:
        self.ctx.publisher.text(self.ctx.topics.availability(device_id),
                                "online" if online else "offline", qos=1, retain=True)

    def republish_all(self) -> int:
        """Availability and state of every device (rebirth, reconnect, new snapshot)."""
        mirror = self.ctx.mirror
        with self._lock:
            for device_id, info in mirror.devices.items():
                self._publish_availability(device_id, bool(info["online"]))
                state = mirror.states.get(device_id)
                if state is not None:
                    self._publish_state(device_id, state["ts"], state["values"],
                                        list(state["values"]))
            return len(mirror.devices)
