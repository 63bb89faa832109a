"""Instance status and health: ``status`` (``online`` after every connect, ``offline`` as Last
Will and on clean shutdown), ``meta/health`` (on change and at least every 60 s), and the status
file the container's health check reads."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from shared.errors import ServiceError
from shared.jsonutil import dumps
from shared.processes import HANDLERS
from shared.timeutil import iso

from ..context import BridgeContext
from .base import Feature
from .state import StateFeature

log = logging.getLogger(__name__)

CHECK_EVERY_S = 5.0
REPUBLISH_EVERY_S = 60.0


class StatusFeature(Feature):
    name = "status"

    def __init__(self, ctx: BridgeContext, *, state: StateFeature) -> None:
        super().__init__(ctx)
        self._state = state
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._last: dict[str, Any] | None = None
        self._last_at = 0.0
        self.connected = False

    def start(self) -> None:
        self.ctx.settings.hub_run_dir.mkdir(parents=True, exist_ok=True)
        threading.Thread(target=self._loop, name="health", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.connected = False
        self._write_status_file()

    def announce_online(self) -> None:
        """Runs on the bridge's session thread once the subscriptions are acknowledged."""
        self.ctx.publisher.text(self.ctx.topics.status, "online", qos=1, retain=True)
        self.connected = True
        self._write_status_file()

    def connection_lost(self) -> None:
        self.connected = False
        self._write_status_file()

    def on_connect(self) -> None:
        self._last = None  # republish health after a reconnect
        self._wake.set()

    # --- health --------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        processes = {"mqtt-bridge": "running", "state-aggregator": "down"}
        processes.update(dict.fromkeys((h.name for h in HANDLERS), "unknown"))
        devices = {"online": 0, "offline": 0}
        reasons: list[str] = []
        durable: dict[str, Any] | None = None
        try:
            body = self.ctx.aggregator.get("/health", timeout=3.0)
            processes["state-aggregator"] = "running"
            processes.update(body.get("handlers", {}))
            devices = body.get("devices", devices)
            history = body.get("history") or {}
            reasons += [f"history: {r}" for r in history.get("reasons", [])]
            durable = body.get("outbox")
            if isinstance(durable, dict):
                reasons += [f"outbox: {r}" for r in durable.get("reasons", [])]
            else:
                durable = None
        except ServiceError as exc:
            log.debug("health: %s", exc)
        reasons += [f"{name} is {v}" for name, v in processes.items() if v != "running"]
        if not self.ctx.mirror.synced:
            state = "starting"
        elif reasons:
            state = "degraded"
        else:
            state = "online"
        # The real backlog: changes of the aggregator's durable log this bridge has not
        # delivered (paho's count of unacknowledged messages is bounded by the send window and
        # says little).
        health: dict[str, Any] = {
            "state": state, "processes": processes, "outbox": self._state.outbox(durable),
            "devices": devices, "started": iso(self.ctx.started)}
        if reasons:
            health["reasons"] = reasons
        return health

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:
                log.exception("health check failed")
            self._wake.wait(CHECK_EVERY_S)
            self._wake.clear()

    def _tick(self) -> None:
        self._write_status_file()
        if not self.connected:
            return
        health = self.health()
        now = time.monotonic()
        if _meaning(health) != _meaning(self._last) or now - self._last_at >= REPUBLISH_EVERY_S:
            if self._last is not None and health["state"] != self._last["state"]:
                log.info("instance health: %s -> %s", self._last["state"], health["state"])
            self._last, self._last_at = health, now
            self.ctx.publisher.json(self.ctx.topics.meta("health"),
                                    {**health, "timestamp": iso()}, qos=1, retain=True)

    def _write_status_file(self) -> None:
        """``{HUB_RUN_DIR}/mqtt-bridge.json``: read by ``python -m shared.healthcheck`` and the
        dashboard's hub page."""
        path = self.ctx.settings.hub_run_dir / "mqtt-bridge.json"
        tmp = path.with_suffix(".tmp")
        try:
            # The outbox too: the dashboard's hub page reads this file, not MQTT.
            tmp.write_bytes(dumps({"connected": self.connected, "client_id": self.ctx.client_id,
                                   "pid": os.getpid(), "updated": time.time(),
                                   "error": self.ctx.client.last_error,
                                   "outbox": self._state.outbox()}))
            tmp.replace(path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)


def _meaning(health: dict[str, Any] | None) -> Any:
    """What makes a health worth republishing at once: not the backlog's exact figures, which
    move with every reading under load, only whether there is one."""
    if health is None:
        return None
    return {**health, "outbox": health["outbox"]["pending"] > 0}
