"""The HTTP poller's internal REST endpoints: thin routes over ``HttpPoller``."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from shared.models import CommandRequest
from shared.pusher import Pusher
from shared.timeutil import iso
from shared.web import json_response, parse_body

from .core import HttpPoller
from .lan import ProbeSide

bp = Blueprint("http_poller", __name__)


def _poller() -> HttpPoller:
    poller: HttpPoller = current_app.extensions["http_poller"]
    return poller


@bp.get("/health")
def health() -> Response:
    pusher: Pusher | None = current_app.extensions.get("pusher")
    probes: ProbeSide | None = current_app.extensions.get("probes")
    return json_response({"status": "ok", "service": "http-poller", **_poller().totals(),
                          "push": pusher.stats() if pusher else None,
                          "probes": probes.status() if probes else None, "timestamp": iso()})


@bp.get("/sensors")
def sensors() -> Response:
    return json_response({"sensors": _poller().list(), "timestamp": iso()})


@bp.get("/sensor/<sensor_id>")
def read(sensor_id: str) -> Response:
    reading = _poller().read(sensor_id)
    return json_response({"sensor_id": sensor_id, "reading": reading.model_dump(),
                          "cached": False, "timestamp": iso(reading.ts)})


@bp.get("/sensor/<sensor_id>/health")
def sensor_health(sensor_id: str) -> Response:
    return json_response(_poller().health_of(sensor_id))


@bp.post("/sensor/<sensor_id>/command")
def command(sensor_id: str) -> Response:
    body = parse_body(CommandRequest)
    return json_response(_poller().command(sensor_id, body).model_dump(exclude_none=True))


@bp.get("/errors")
def errors() -> Response:
    return json_response({"errors": list(_poller().errors), "timestamp": iso()})
