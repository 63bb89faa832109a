"""``meta/request/{kind}`` -> ``meta/{kind}``: devices_list, info, health, rebirth, history (a
bounded window of one device's stored readings, from the aggregator's history). Unknown kinds
and malformed requests get an error answer (never retained, so the last good answer stays).

Meta requests have a worker of their own, so no command, however slow its device, delays
them; a flood of requests beyond its queue is answered "busy" through the answers queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from shared import CONNECTOR_TYPE, __version__
from shared.errors import ServiceError
from shared.history_models import HistoryRequestIn
from shared.models import DeviceInfo, MetaRequestIn
from shared.processes import PROCESS_NAMES
from shared.timeutil import iso
from shared.topics import META_KINDS, Route, RouteKind

from ..context import BridgeContext
from ..workers import Workers
from .base import Feature, Inbound
from .commands import BadRequest, decode, guess_id
from .state import StateFeature
from .status import StatusFeature

log = logging.getLogger(__name__)

META_QUEUE = 32
RETAINED_ANSWERS = ("devices_list", "info")


class MetaFeature(Feature):
    name = "meta"

    def __init__(self, ctx: BridgeContext, *, state: StateFeature, status: StatusFeature,
                 on_rebirth: Callable[[], None] | None = None) -> None:
        super().__init__(ctx)
        self._state = state
        self._on_rebirth = on_rebirth  # discovery republishes its configs too (the contract)
        self._status = status
        self._workers = Workers("meta", size=1, capacity=META_QUEUE)
        self._answers: dict[str, Callable[[], dict[str, Any]]] = {
            "devices_list": self.devices_list, "info": self.info, "health": self._status.health,
        }
        assert {*self._answers, "rebirth", "history"} == set(META_KINDS)

    def handlers(self) -> dict[RouteKind, Inbound]:
        return {"meta_request": self._on_request}

    def start(self) -> None:
        self._workers.start()

    def stop(self) -> None:
        self._workers.stop()

    def _on_request(self, route: Route, payload: bytes, retained: bool) -> None:
        if retained:
            return  # a stale request left on the broker is not a request
        kind = route.target
        if not self._workers.offer(lambda: self._answer(kind, payload)):
            self.ctx.answers.json(self.ctx.topics.meta(kind), self._error_body(
                guess_id(payload), "busy: too many meta requests queued; try again"))

    def _answer(self, kind: str, payload: bytes) -> None:
        topic = self.ctx.topics.meta(kind)
        if kind == "history":
            self._history(topic, payload)
            return
        try:
            req = decode(payload, MetaRequestIn, allow_empty=True)
        except BadRequest as exc:
            self._error(topic, guess_id(payload), f"invalid meta request: {exc}")
            return
        if kind == "rebirth":
            if self._on_rebirth is not None:
                self._on_rebirth()
            # The state publisher republishes in order with everything else and answers after.
            self._state.rebirth(lambda count: self._publish(
                topic, kind, req.id, {"republished": count}))
            return
        answer = self._answers.get(kind)
        if answer is None:
            self._error(topic, req.id, f"unknown meta request {kind!r}; "
                                       f"known: {', '.join(META_KINDS)}")
            return
        try:
            body = answer()
        except ServiceError as exc:
            self._error(topic, req.id, str(exc))
            return
        self._publish(topic, kind, req.id, body)

    def _publish(self, topic: str, kind: str, req_id: str | None, body: dict[str, Any]) -> None:
        body = {**({"id": req_id} if req_id else {}), "timestamp": iso(), **body}
        self.ctx.publisher.json(topic, body, qos=1, retain=kind in RETAINED_ANSWERS)

    @staticmethod
    def _error_body(req_id: str | None, message: str) -> dict[str, Any]:
        return {**({"id": req_id} if req_id else {}), "timestamp": iso(), "error": message}

    def _error(self, topic: str, req_id: str | None, message: str) -> None:
        log.warning("%s: %s", topic, message)
        self.ctx.publisher.json(topic, self._error_body(req_id, message), qos=1)

    # --- answers -------------------------------------------------------------------------------
    def _history(self, topic: str, payload: bytes) -> None:
        """One page of a device's stored readings in the window; ``truncated`` when the window
        holds more than ``limit`` (the LAN's ``/api/readings`` pages through the rest)."""
        try:
            req = decode(payload, HistoryRequestIn)
        except BadRequest as exc:
            self._error(topic, guess_id(payload), f"invalid history request: {exc}")
            return
        window = {"device_id": req.device_id, "start": iso(req.start), "end": iso(req.end)}
        try:
            page = self.ctx.aggregator.get("/history/readings", params={
                "device_id": req.device_id, "start_date": window["start"],
                "end_date": window["end"], "limit": req.limit})
        except ServiceError as exc:
            self._error(topic, req.id, f"history not available: {exc}")
            return
        self._publish(topic, "history", req.id, {
            **window, "readings": page["readings"], "count": page["count"],
            "truncated": page["next_cursor"] is not None})

    def devices_list(self) -> dict[str, Any]:
        instance = self.ctx.instance.instance_id
        body = self.ctx.aggregator.get("/devices")
        devices = [DeviceInfo.model_validate(d) for d in body["devices"]]
        return {"devices": [{
            "device_id": d.device_id, "global_id": f"{instance}_{d.device_id}",
            "name": d.name, "model": d.model, "source": d.source,
            "enabled": d.enabled, "online": d.online,
            "last_seen": iso(d.last_seen) if d.last_seen else None,
        } for d in devices]}

    def info(self) -> dict[str, Any]:
        counts = self.ctx.mirror.counts()
        return {
            "instance_id": self.ctx.instance.instance_id,
            "friendly_name": self.ctx.instance.friendly_name,
            "connector_type": CONNECTOR_TYPE, "version": __version__,
            "uptime": round(time.time() - self.ctx.started, 1),
            "processes": list(PROCESS_NAMES),
            "counts": counts,
            "mqtt": {"client_id": self.ctx.client_id, "base_topic": self.ctx.topics.root},
            "dropped_answers": self.ctx.answers.dropped,
        }
