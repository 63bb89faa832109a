"""The probe API on the LAN port: thin routes over ``Ingest`` and ``Upstream``.

``/api/health`` is open; pushing readings (``/api/ingest``) needs the hub token, listing probes
the hub token or the management key, removing and provisioning probes the management key
(``auth.py``). Answers are ``{ok: true, ...}`` or ``{ok: false, error, message, timestamp}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, request

from shared.openapi import describe
from shared.timeutil import iso
from shared.topics import ID_RE
from shared.web import ApiError, json_object_body, json_response

from .auth import Credentials, presented_key, presented_token
from .errors import LanError
from .ingest import Ingest
from .ratelimit import RateLimits
from .upstream import Upstream

bp = Blueprint("probe_api", __name__, url_prefix="/api")
# A probe's reading: what the firmware sends; other numeric fields are readings too.
PROBE_READING = {"type": "object", "required": ["temperature_c"], "properties": {
    "temperature_c": {"type": "number"}, "probe_id": {"type": "string"},
    "token": {"type": "string"}, "humidity": {"type": "number"}, "rssi": {"type": "number"},
    "uptime_s": {"type": "number"}}}
PROBE_BATCH = {"type": "object", "required": ["batch"], "properties": {
    "probe_id": {"type": "string"}, "token": {"type": "string"},
    "batch": {"type": "array", "minItems": 1, "maxItems": 500, "items": {
        "type": "object", "required": ["temperature_c"], "properties": {
            **PROBE_READING["properties"],  # type: ignore[dict-item]
            "timestamp": {"oneOf": [{"type": "string", "format": "date-time"},
                                    {"type": "number"}]}}}}}}
AUTH = {401: "token missing", 403: "wrong token"}


@dataclass
class WebContext:
    ingest: Ingest
    upstream: Upstream
    creds: Credentials
    limits: RateLimits


def _ctx() -> WebContext:
    ctx: WebContext = current_app.extensions["web"]
    return ctx


def _body() -> dict[str, Any]:
    """The JSON object body (empty for a GET or DELETE); 400/422 when it is not one."""
    return {} if request.method in ("GET", "DELETE") else json_object_body()


def _probe_id(raw: object) -> str:
    if not isinstance(raw, str) or not ID_RE.fullmatch(raw):
        raise LanError(422, "invalid_body",
                       "probe_id is required: [A-Za-z0-9_-]{1,64} (see GET /api/probes)")
    return raw


@bp.before_request
def _authorize() -> None:
    creds = _ctx().creds
    if request.endpoint == "probe_api.health":
        return
    if request.endpoint == "probe_api.ingest":
        # Probe firmware sends X-Token; a query parameter or a JSON field also do (older ones).
        token = presented_token() or request.args.get("token")
        if token is None and request.method == "POST":
            try:
                given = _body().get("token")
            except ApiError:  # not a JSON object: no token in it (the route would say why)
                given = None
            token = given if isinstance(given, str) else None
        creds.require_hub(token)
    elif request.endpoint == "probe_api.probes":
        creds.require_hub(presented_token(), key=presented_key(), management_too=True)
    else:  # removing a probe's device, provisioning: management
        creds.require_management(presented_key(), presented_token())


@bp.get("/health")
@describe(responses={200: "the LAN API answers"})
def health() -> Response:
    """``status`` ``ok`` or ``degraded`` with the ``reasons``: the CSV log's, and the
    aggregator's stores (its history and durable change log) on a full or failing disk."""
    ctx = _ctx()
    reasons = [ctx.ingest.csv.problem] if ctx.ingest.csv.problem else []
    reasons += ctx.upstream.store_problems()
    return json_response({"ok": True, "status": "degraded" if reasons else "ok",
                          "reasons": reasons, "time": iso()})


@bp.route("/ingest", methods=["GET", "POST"])
@describe(body={"oneOf": [PROBE_READING, PROBE_BATCH]},
          query={"token": str, "probe_id": str, "temperature_c": str},
          responses={200: "accepted", 400: "not JSON", **AUTH, 422: "no usable temperature",
                     503: "the hub is not ready"})
def ingest() -> Response:
    if request.method == "GET":
        payload: dict[str, Any] = request.args.to_dict()
        result = _ctx().ingest.accept(payload, remote_ip=request.remote_addr, text_ok=True)
    else:
        result = _ctx().ingest.accept(_body(), remote_ip=request.remote_addr)
    return json_response(result)


@bp.get("/probes")
@describe(responses={200: "the probes and their devices", **AUTH, 503: "the hub is not ready"})
def probes() -> Response:
    """The probes the poller discovered or was given, and the probe devices in the registry
    (a stale auto-registered one is removed with ``DELETE /api/probes/{id}``)."""
    up = _ctx().upstream
    devices = [{k: d.get(k) for k in ("device_id", "name", "online", "last_seen")}
               for d in up.probe_devices()]
    return json_response({"ok": True, "probes": up.probes(), "devices": devices})


@bp.delete("/probes/<probe_id>")
@describe(responses={200: "removed", **AUTH, 404: "unknown probe", 422: "bad probe id",
                     503: "the hub is not ready"})
def remove(probe_id: str) -> Response:
    """Remove a probe's device from the registry (it comes back with its next reading)."""
    ctx = _ctx()
    ctx.upstream.remove(_probe_id(probe_id))
    ctx.ingest.forget(probe_id)
    return json_response({"ok": True, "removed": probe_id})


@bp.post("/provision")
@describe(body={"type": "object", "properties": {"probe_id": {"type": "string"}}},
          query={"probe_id": str},
          responses={200: "provisioned", 400: "not JSON", **AUTH, 404: "unknown probe",
                     409: "provisioning disabled", 422: "no probe id", 502: "the probe refused",
                     503: "the hub is not ready"})
def provision() -> Response:
    """``{probe_id}`` (or ``{id}``): push our settings to that probe now."""
    body = _body()
    probe_id = _probe_id(body.get("probe_id", body.get("id", request.args.get("probe_id"))))
    return json_response({"ok": True, **_ctx().upstream.provision(probe_id)})
