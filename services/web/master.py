"""The LAN face of master control: ``/api/sensor-master/...`` forwarded to the aggregator's
internal ``/master/...`` (the paths after the prefix are the same). The ``web`` program holds no
master state: it authenticates and forwards; the aggregator validates and answers, and its status
and ``{error, message}`` body come back unchanged.

Sensor routes (register, config, heartbeat, command ack, data) are open, as the seed's firmware
sends no secret. Every other route is management: it needs ``X-API-Key`` equal to
``MASTER_API_KEY``, and without that setting answers 503 "management disabled", never open.
The aggregator's routes for the bridge (``changes``, ``sensor-configs``, ``sensors/{s}/deliver``)
are not served here."""

from __future__ import annotations

import hmac
import logging
import re

from flask import Blueprint, Response, request
from pydantic import SecretStr

from shared.errors import ServiceError
from shared.jsonutil import dumps
from shared.openapi import ANY_JSON, Operation, describe, described_rules, methods_of, openapi_path
from shared.rest import RestClient
from shared.web import error_response, json_response

log = logging.getLogger(__name__)

PREFIX = "/api/sensor-master"
_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,64}")
SENSOR_ROUTES = [("POST", re.compile(r"register|heartbeat|data")),
                 ("GET", re.compile(r"config/[^/]+")),
                 ("POST", re.compile(r"commands/[^/]+/ack"))]
BRIDGE_ONLY = re.compile(r"changes|sensor-configs|sensors/[^/]+/deliver")
FORWARD_TIMEOUT_S = 10.0
# Larger than the probe API's limit: a batch uploaded after a long offline period, or a template
# with a 64 KiB config. The aggregator checks each part's own limit.
MAX_BODY = 2 * 1024 * 1024
FORWARDED = {200: "the aggregator's answer", 201: "created", 304: "the sensor has this config",
             400: "bad id or body", 401: "management needs X-API-Key", 404: "no such route or item",
             409: "refused", 413: "body too large", 422: "invalid body",
             503: "management disabled, or master control not answering"}


def is_sensor_route(method: str, path: str) -> bool:
    return any(method == m and pattern.fullmatch(path) for m, pattern in SENSOR_ROUTES)


def make_blueprint(aggregator: RestClient, api_key: SecretStr | None) -> Blueprint:
    bp = Blueprint("sensor_master", __name__, url_prefix=PREFIX)
    key = api_key.get_secret_value().encode() if api_key is not None else None

    @bp.before_request
    def _body_limit() -> None:
        request.max_content_length = MAX_BODY  # Flask 3.1: this request's own limit

    def refuse_management() -> Response | None:
        if key is None:
            return error_response(503, "management_disabled",
                                  "management disabled: set MASTER_API_KEY on the hub to manage "
                                  "sensors over the LAN", ok=False)
        given = request.headers.get("X-API-Key", "").encode()
        if not hmac.compare_digest(given, key):  # constant time: no guessing by timing
            return error_response(401, "unauthorized",
                                  "management needs the header X-API-Key with MASTER_API_KEY",
                                  ok=False)
        return None

    @bp.route("/<path:path>", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
    @describe(body=ANY_JSON, body_required=False, responses=FORWARDED)
    def forward(path: str) -> Response:
        parts = path.split("/")
        bad = next((p for p in parts if not _SEGMENT.fullmatch(p)), None)
        if bad is not None or BRIDGE_ONLY.fullmatch(path):
            # Ids follow the contract: a '+', '#', '..' or empty segment never reaches the core.
            return error_response(404 if bad is None else 400,
                                  "not_found" if bad is None else "invalid_id",
                                  f"no route {PREFIX}/{path}" if bad is None else
                                  f"invalid id {bad!r} in the path: must match [A-Za-z0-9_-]{{1,64}}",
                                  ok=False)
        if not is_sensor_route(request.method, path):
            refused = refuse_management()
            if refused is not None:
                return refused
        params = dict(request.args)
        etag = request.headers.get("If-None-Match")
        if etag:
            params["if_none_match"] = etag
        body = request.get_data() if request.method in ("POST", "PATCH", "PUT") else None
        try:
            answer = aggregator.request(request.method, f"/master/{path}", body=body or None,
                                        params=params or None, timeout=FORWARD_TIMEOUT_S)
        except ServiceError as exc:
            if 400 <= exc.status < 500 and isinstance(exc.body, dict):
                return json_response({**exc.body, "ok": False}, exc.status)
            # Internal addresses stay in the log; the sensor retries (or fails over).
            log.warning("sensor-master request not served: %s", exc)
            return error_response(503, "not_ready", "master control is not answering right now; "
                                  "send the request again", ok=False)
        if answer is None:  # 304: the sensor has this config already
            return Response(status=304, headers={"ETag": etag or ""})
        resp = Response(dumps(answer), status=201 if _created(request.method, path) else 200,
                        mimetype="application/json")
        if isinstance(answer, dict) and isinstance(answer.get("config_hash"), str) and \
                path.startswith("config/"):
            resp.headers["ETag"] = f'"{answer["config_hash"]}"'
        return resp

    return bp


def forwarded_operations() -> dict[str, dict[str, Operation]]:
    """The aggregator's master routes as this blueprint serves them (a prefix swap), for the
    OpenAPI description: the catch-all rule forwards each one, with the same body and answers."""
    from flask import Flask

    from services.state_aggregator.master.routes import bp as master_bp

    internal = Flask(__name__)
    internal.register_blueprint(master_bp)
    out: dict[str, dict[str, Operation]] = {}
    for rule, op in described_rules(internal):
        path = rule.rule.removeprefix(f"{master_bp.url_prefix}/")
        if op is None or BRIDGE_ONLY.fullmatch(openapi_path(path)):
            continue
        for method in methods_of(rule):
            out.setdefault(f"{PREFIX}/{path}", {})[method] = Operation(
                body=op.body, query=op.query, body_required=op.body_required,
                responses={**op.responses, 401: "management needs X-API-Key",
                           503: "master control not answering"})
    return out


def _created(method: str, path: str) -> bool:
    # The aggregator says 201 for these; the REST client keeps only the body.
    return method == "POST" and path in ("instances", "configs", "command", "groups")
