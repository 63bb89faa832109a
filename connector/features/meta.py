"""``meta/request/{kind}`` -> ``meta/{kind}``: devices_list, info, health, rebirth. Unknown kinds
and malformed requests get an error answer (never retained, so the last good answer stays)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from shared import CONNECTOR_TYPE, __version__
from shared.errors import ServiceError, TopicError
from shared.models import MetaRequestIn
from shared.timeutil import iso
from shared.topics import META_KINDS

from .base import Feature, Route
from .commands import BadRequest, decode
from .state import StateFeature
from .status import StatusFeature

log = logging.getLogger(__name__)

PROCESSES = ["serial-handler", "http-poller", "state-aggregator", "mqtt-bridge"]


class MetaFeature(Feature):
    name = "meta"

    def __init__(self, ctx: Any, *, state: StateFeature, status: StatusFeature) -> None:
        super().__init__(ctx)
        self._state = state
        self._status = status
        self._answers: dict[str, Callable[[], dict[str, Any]]] = {
            "devices_list": self.devices_list, "info": self.info,
            "health": self._status.health, "rebirth": self.rebirth,
        }
        assert set(self._answers) == set(META_KINDS)

    def routes(self) -> list[Route]:
        return [(f"{self.ctx.topics.root}/meta/request/+", self._on_request)]

    def _on_request(self, topic: str, payload: bytes, retained: bool) -> None:
        if retained:
            return  # a stale request left on the broker is not a request
        try:
            route = self.ctx.topics.parse(topic)
        except TopicError as exc:
            log.warning("ignoring %s: %s", topic, exc)
            return
        if route is None:
            return
        self.ctx.executor.submit(self._answer, route.target, payload)

    def _answer(self, kind: str, payload: bytes) -> None:
        topic = self.ctx.topics.meta(kind)
        try:
            req = decode(payload, MetaRequestIn, allow_empty=True)
        except BadRequest as exc:
            self._error(topic, None, f"invalid meta request: {exc}")
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
        body = {**({"id": req.id} if req.id else {}), "timestamp": iso(), **body}
        self.ctx.publisher.json(topic, body, qos=1, retain=kind in ("devices_list", "info"))

    def _error(self, topic: str, req_id: str | None, message: str) -> None:
        log.warning("%s: %s", topic, message)
        body = {**({"id": req_id} if req_id else {}), "timestamp": iso(), "error": message}
        self.ctx.publisher.json(topic, body, qos=1)

    # --- answers -------------------------------------------------------------------------------
    def devices_list(self) -> dict[str, Any]:
        instance = self.ctx.instance.instance_id
        body = self.ctx.aggregator.get("/devices")
        return {"devices": [{
            "device_id": d["device_id"], "global_id": f"{instance}_{d['device_id']}",
            "name": d["name"], "model": d["model"], "source": d["source"],
            "enabled": d["enabled"], "online": d["online"],
            "last_seen": iso(d["last_seen"]) if d["last_seen"] else None,
        } for d in body["devices"]]}

    def info(self) -> dict[str, Any]:
        mirror = self.ctx.mirror
        online = sum(1 for d in mirror.devices.values() if d.get("online"))
        return {
            "instance_id": self.ctx.instance.instance_id,
            "friendly_name": self.ctx.instance.friendly_name,
            "connector_type": CONNECTOR_TYPE, "version": __version__,
            "uptime": round(time.time() - self.ctx.started, 1),
            "processes": PROCESSES,
            "counts": {"devices": len(mirror.devices), "online": online,
                       "offline": len(mirror.devices) - online, "groups": len(mirror.groups)},
            "mqtt": {"client_id": self.ctx.client_id, "base_topic": self.ctx.topics.root},
        }

    def rebirth(self) -> dict[str, Any]:
        return {"republished": self._state.republish_all()}
