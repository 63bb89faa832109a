"""The HTTP poller's internal REST endpoints: thin routes over ``HttpPoller``, and the probe
directory and provisioning (``/probes...``), which the ``web`` program asks on behalf of the LAN."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from shared.models import CommandRequest
from shared.openapi import describe
from shared.pusher import Pusher
from shared.timeutil import iso
from shared.web import ApiError, add_readings_route, json_response, parse_body

from .core import HttpPoller
from .lan import ProbeSide
from .provisioner import ProvisionError

bp = Blueprint("http_poller", __name__)


def _poller() -> HttpPoller:
    poller: HttpPoller = current_app.extensions["http_poller"]
    return poller


@bp.get("/health")
@describe(responses={200: "the poller's health"})
def health() -> Response:
    pusher: Pusher | None = current_app.extensions.get("pusher")
    probes: ProbeSide | None = current_app.extensions.get("probes")
    return json_response({"status": "ok", "service": "http-poller", **_poller().totals(),
                          "push": pusher.stats() if pusher else None,
                          "probes": probes.status() if probes else None, "timestamp": iso()})


@bp.get("/sensors")
@describe(responses={200: "the HTTP sensors"})
def sensors() -> Response:
    return json_response({"sensors": _poller().list(), "timestamp": iso()})


add_readings_route(bp, lambda: _poller().last_readings)


@bp.get("/sensor/<sensor_id>")
@describe(responses={200: "a fresh reading", 404: "unknown sensor", 503: "the read failed"})
def read(sensor_id: str) -> Response:
    reading = _poller().read(sensor_id)
    return json_response({"sensor_id": sensor_id, "reading": reading.model_dump(),
                          "cached": False, "timestamp": iso(reading.ts)})


@bp.get("/sensor/<sensor_id>/health")
@describe(responses={200: "the sensor's poll statistics", 404: "unknown sensor"})
def sensor_health(sensor_id: str) -> Response:
    return json_response(_poller().health_of(sensor_id))


@bp.post("/sensor/<sensor_id>/command")
@describe(body=CommandRequest, responses={200: "the command's result", 400: "not JSON",
                                      404: "unknown sensor", 422: "not a command"})
def command(sensor_id: str) -> Response:
    body = parse_body(CommandRequest)
    return json_response(_poller().command(sensor_id, body).model_dump(exclude_none=True))


@bp.get("/errors")
@describe(responses={200: "recent errors"})
def errors() -> Response:
    return json_response({"errors": list(_poller().errors), "timestamp": iso()})


# --- probes (for the web program) ----------------------------------------------------------------
def _probes() -> ProbeSide:
    probes: ProbeSide | None = current_app.extensions.get("probes")
    if probes is None:
        raise ApiError(409, "disabled", "this hub's probe side is not running")
    return probes


@bp.get("/probes")
@describe(query={"ip": str}, responses={200: "the known probes", 409: "probe side not running"})
def probes() -> Response:
    """Every known probe; ``?ip=`` only the one(s) at that address."""
    ip = request.args.get("ip")
    found = [p.view() for p in _probes().directory.all() if ip is None or p.ip == ip]
    return json_response({"probes": found, "timestamp": iso()})


@bp.get("/probes/<probe_id>")
@describe(responses={200: "the probe", 404: "unknown probe", 409: "probe side not running"})
def probe(probe_id: str) -> Response:
    found = _probes().directory.get(probe_id)
    if found is None:
        raise ApiError(404, "unknown_probe", f"no probe {probe_id!r} is known (GET /api/probes)")
    return json_response({"probe": found.view()})


@bp.post("/probes/<probe_id>/provision")
@describe(responses={200: "provisioned", 404: "unknown probe", 409: "provisioning disabled",
                     502: "the probe refused or did not answer"})
def provision(probe_id: str) -> Response:
    """Push our settings to that probe now."""
    side = _probes()
    if side.provisioner is None:
        raise ApiError(409, "disabled", "provisioning is disabled on this hub")
    if side.directory.get(probe_id) is None:
        raise ApiError(404, "unknown_probe", f"no probe {probe_id!r} is known (GET /api/probes)")
    try:
        found = side.provisioner.provision(probe_id)
    except ProvisionError as exc:
        raise ApiError(502, "provision_failed", str(exc)) from exc
    return json_response({"probe": found.view(), "server_url": side.provisioner.server_url})
