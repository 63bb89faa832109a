"""The serial handler's REST endpoints: thin routes over ``SerialHandler``."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from shared.models import CommandRequest
from shared.openapi import describe
from shared.pusher import Pusher
from shared.timeutil import iso
from shared.web import add_readings_route, json_response, parse_body

from .core import SerialHandler

bp = Blueprint("serial_handler", __name__)


def _handler() -> SerialHandler:
    handler: SerialHandler = current_app.extensions["serial_handler"]
    return handler


@bp.get("/health")
@describe(responses={200: "the handler's health"})
def health() -> Response:
    pusher: Pusher | None = current_app.extensions.get("pusher")
    return json_response({"status": "ok", "service": "serial-handler", **_handler().health(),
                          "push": pusher.stats() if pusher else None, "timestamp": iso()})


@bp.get("/sensors")
@describe(responses={200: "the serial sensors"})
def sensors() -> Response:
    return json_response({"sensors": _handler().sensor_list(), "timestamp": iso()})


add_readings_route(bp, lambda: _handler().last_readings)


@bp.get("/sensor/<sensor_id>")
@describe(query={"properties": str},
          responses={200: "a fresh reading", 404: "unknown sensor", 503: "the read failed"})
def read(sensor_id: str) -> Response:
    """A fresh read; ``?properties=a,b`` keeps only those values. 503 when it fails."""
    wanted = [p for p in request.args.get("properties", "").split(",") if p]
    reading = _handler().read(sensor_id, wanted or None)
    return json_response({"sensor_id": sensor_id, "reading": reading.model_dump(),
                          "cached": False, "timestamp": iso(reading.ts)})


@bp.get("/sensor/<sensor_id>/cached")
@describe(responses={200: "the last reading", 404: "unknown sensor or none yet"})
def cached(sensor_id: str) -> Response:
    reading = _handler().cached(sensor_id)
    return json_response({"sensor_id": sensor_id, "reading": reading.model_dump(),
                          "cached": True, "timestamp": iso(reading.ts)})


@bp.post("/sensor/<sensor_id>/command")
@describe(body=CommandRequest, responses={200: "the command's result", 400: "not JSON",
                                      404: "unknown sensor", 422: "not a command"})
def command(sensor_id: str) -> Response:
    body = parse_body(CommandRequest)
    return json_response(_handler().command(sensor_id, body).model_dump(exclude_none=True))


@bp.get("/errors")
@describe(responses={200: "recent errors and counters"})
def errors() -> Response:
    """The most recent errors (bad lines among them) and how many of each code were seen."""
    return json_response({**_handler().errors_view(), "timestamp": iso()})
