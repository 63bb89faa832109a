"""The LAN face of master control: ``/api/sensor-master/...`` forwarded to the aggregator's
internal ``/master/...`` (the paths after the prefix are the same). The ``web`` program holds no
master state: it authenticates and forwards; the aggregator validates and answers, and its status
and ``{error, message}`` body come back unchanged.

Credentials (``auth.py``):
- ``POST register``: the hub token (what the hub gave the probe when it provisioned it), the
  management key, or the sensor's own token. The answer carries a new **sensor token**
  (``token``, ``token_expires_at``, ``token_refresh_after``); earlier ones of that sensor stay
  good for ``SENSOR_TOKEN_OVERLAP`` seconds.
- ``GET config/{s}``, ``POST heartbeat``, ``POST data``, ``POST commands/{id}/ack``: that sensor's
  token (``Authorization: Bearer <token>`` or ``X-Token``), for that sensor only (403 for
  another; a body without ``sensor_id`` gets the token's).
- ``POST token/refresh``: a sensor token that is still good → a new one.
- everything else is management: ``X-API-Key`` equal to ``MASTER_API_KEY`` (503 "management
  disabled" without that setting, never open). ``GET/DELETE sensors/{s}/tokens[/{id}]`` list
  and revoke a sensor's tokens.
The aggregator's routes for the bridge and for this program (``changes``, ``sensor-configs``,
``sensors/{s}/deliver``, ``tokens/...``) are not served here."""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Blueprint, Response, request

from shared.errors import ServiceError
from shared.jsonutil import JSONDecodeError, dumps, loads
from shared.openapi import ANY_JSON, Operation, describe, described_rules, methods_of, openapi_path
from shared.rest import RestClient
from shared.web import error_response, json_response

from .auth import Credentials, presented_key, presented_token
from .errors import LanError

log = logging.getLogger(__name__)

PREFIX = "/api/sensor-master"
_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,64}")
# What a sensor token opens: the sensor's own check-ins.
SENSOR_ROUTES = [("POST", re.compile(r"heartbeat|data")),
                 ("GET", re.compile(r"config/[^/]+")),
                 ("POST", re.compile(r"commands/[^/]+/ack"))]
REGISTER = "register"
REFRESH = "token/refresh"
INTERNAL_ONLY = re.compile(r"changes|sensor-configs|sensors/[^/]+/deliver|tokens(/.*)?")
FORWARD_TIMEOUT_S = 10.0
# Larger than the probe API's limit: a batch uploaded after a long offline period, or a template
# with a 64 KiB config. The aggregator checks each part's own limit.
MAX_BODY = 2 * 1024 * 1024
FORWARDED = {200: "the aggregator's answer", 201: "created", 304: "the sensor has this config",
             400: "bad id or body", 401: "no valid credential for this route (it says which)",
             403: "a valid credential that does not grant this", 404: "no such route or item",
             409: "refused", 413: "body too large", 422: "invalid body", 429: "rate limited",
             503: "management disabled, or master control not answering"}
SENSOR_TOKEN_HOW = ("the sensor's token from its register answer, as Authorization: Bearer "  # noqa: S105 (how to send one)
                    "<token> (or X-Token)")


def is_sensor_route(method: str, path: str) -> bool:
    """A route that a sensor token opens."""
    return any(method == m and pattern.fullmatch(path) for m, pattern in SENSOR_ROUTES)


def is_sensor_side(method: str, path: str) -> bool:
    """What sensors call (their rate budget is ingest's, not management's)."""
    return is_sensor_route(method, path) or (method == "POST" and path in (REGISTER, REFRESH))


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _error(status: int, error: str, message: str) -> _Refused:
    return _Refused(error_response(status, error, message, ok=False))


class Forwarder:
    """Checks each LAN request's credential and forwards it to the aggregator."""

    def __init__(self, aggregator: RestClient, creds: Credentials) -> None:
        self.aggregator = aggregator
        self.creds = creds

    def call(self, method: str, path: str, body: bytes | None = None,
             params: dict[str, Any] | None = None) -> Any:
        """The aggregator's answer (``None`` for a 304); its 4xx reach the client as they are,
        its absence as a 503 (internal addresses stay in the log)."""
        try:
            return self.aggregator.request(method, f"/master/{path}", body=body,
                                           params=params or None, timeout=FORWARD_TIMEOUT_S)
        except ServiceError as exc:
            if 400 <= exc.status < 500 and isinstance(exc.body, dict):
                raise _Refused(json_response({**exc.body, "ok": False}, exc.status)) from exc
            log.warning("sensor-master request not served: %s", exc)
            raise _error(503, "not_ready", "master control is not answering right now; send "
                         "the request again") from exc

    def token_call(self, path: str, token: str) -> Any:
        try:
            return self.call("POST", path, dumps({"token": token}))
        except _Refused as refused:
            if refused.response.status_code == 422:  # a malformed token is an invalid one
                raise _error(401, "invalid_token", "the sensor token is not valid") from None
            raise

    def token_sensor(self, token: str | None) -> str:
        """The sensor a presented sensor token belongs to; 401 without a good one."""
        if token is None:
            raise _error(401, "unauthorized", f"this route needs {SENSOR_TOKEN_HOW}")
        return str(self.token_call("tokens/verify", token)["sensor_id"])

    @staticmethod
    def body_object() -> dict[str, Any] | None:
        """The JSON object body, or ``None`` when it is not one (the aggregator says why)."""
        try:
            data = loads(request.get_data(cache=True) or b"null")
        except JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    def own_body(self, sensor_id: str) -> bytes | None:
        """The body, bound to the token's sensor: another ``sensor_id`` is 403, none gets it."""
        body = self.body_object()
        if body is None:
            return request.get_data() or None
        given = body.get("sensor_id")
        if given is not None and given != sensor_id:
            raise _error(403, "forbidden", "this sensor token is not valid for that sensor_id")
        return dumps({**body, "sensor_id": sensor_id})

    def authorize(self, path: str) -> bytes | None:
        """Check the credential the route needs; the body to forward."""
        method = request.method
        raw = request.get_data() if method in ("POST", "PATCH", "PUT") else None
        if method == "POST" and path == REGISTER:
            token, key = presented_token(), presented_key()
            if key is not None or self.creds.is_hub_token(token):
                self.creds.require_hub(token, key=key, management_too=True)
                return raw or None
            if token is None:
                raise LanError(401, "unauthorized", "registering needs the hub token as the "
                               "X-Token header (or Authorization: Bearer), or the sensor's "
                               "own token")
            return self.own_body(self.token_sensor(token))  # re-registering with its own token
        if is_sensor_route(method, path):
            sensor_id = self.token_sensor(presented_token())
            if path.startswith("config/") and path.split("/")[1] != sensor_id:
                raise _error(403, "forbidden", "this sensor token is not valid for that sensor")
            return self.own_body(sensor_id) if method == "POST" else None
        self.creds.require_management(presented_key(), presented_token())
        return raw or None

    def refresh(self) -> Response:
        token = presented_token()
        if token is None:
            raise _error(401, "unauthorized", f"a refresh needs {SENSOR_TOKEN_HOW}")
        return json_response(self.token_call("tokens/refresh", token), 201)

    def forward(self, path: str) -> Response:
        parts = path.split("/")
        bad = next((p for p in parts if not _SEGMENT.fullmatch(p)), None)
        if bad is not None:
            # Ids follow the contract: a '+', '#', '..' or empty segment never reaches the core.
            return error_response(400, "invalid_id", f"invalid id {bad!r} in the path: must "
                                  "match [A-Za-z0-9_-]{1,64}", ok=False)
        if INTERNAL_ONLY.fullmatch(path):
            return error_response(404, "not_found", f"no route {PREFIX}/{path}", ok=False)
        if request.method == "POST" and path == REFRESH:
            return self.refresh()
        body = self.authorize(path)
        params = dict(request.args)
        etag = request.headers.get("If-None-Match")
        if etag:
            params["if_none_match"] = etag
        try:
            answer = self.call(request.method, path, body, params)
        except _Refused as refused:
            # An ack of another sensor's command looks like one of a command that does not exist.
            if path.startswith("commands/") and refused.response.status_code == 409 and \
                    b"wrong_sensor" in refused.response.get_data():
                raise _error(404, "unknown_command", f"no command {parts[1]!r} for this "
                             "sensor") from None
            raise
        if answer is None:  # 304: the sensor has this config already
            return Response(status=304, headers={"ETag": etag or ""})
        if request.method == "POST" and path == REGISTER and isinstance(answer, dict):
            answer = {**answer, **self.call("POST", "tokens/issue",
                                            dumps({"sensor_id": answer["sensor_id"]}))}
        resp = Response(dumps(answer), status=201 if _created(request.method, path) else 200,
                        mimetype="application/json")
        if isinstance(answer, dict) and isinstance(answer.get("config_hash"), str) and \
                path.startswith("config/"):
            resp.headers["ETag"] = f'"{answer["config_hash"]}"'
        return resp


def make_blueprint(aggregator: RestClient, creds: Credentials) -> Blueprint:
    bp = Blueprint("sensor_master", __name__, url_prefix=PREFIX)
    forwarder = Forwarder(aggregator, creds)

    @bp.before_request
    def _body_limit() -> None:
        request.max_content_length = MAX_BODY  # Flask 3.1: this request's own limit

    @bp.route("/<path:path>", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
    @describe(body=ANY_JSON, body_required=False, responses=FORWARDED)
    def route(path: str) -> Response:
        try:
            return forwarder.forward(path)
        except _Refused as refused:
            return refused.response

    return bp


def forwarded_operations() -> dict[str, dict[str, Operation]]:
    """The aggregator's master routes as this blueprint serves them (a prefix swap), for the
    OpenAPI description: the catch-all rule forwards each one, with the same body and answers."""
    from flask import Flask

    from services.state_aggregator.master import token_routes  # noqa: F401  (joins master_bp)
    from services.state_aggregator.master.routes import bp as master_bp

    internal = Flask(__name__)
    internal.register_blueprint(master_bp)
    out: dict[str, dict[str, Operation]] = {}
    for rule, op in described_rules(internal):
        path = rule.rule.removeprefix(f"{master_bp.url_prefix}/")
        if op is None or INTERNAL_ONLY.fullmatch(openapi_path(path)):
            continue
        for method in methods_of(rule):
            out.setdefault(f"{PREFIX}/{path}", {})[method] = Operation(
                body=op.body, query=op.query, body_required=op.body_required,
                responses={**op.responses, 401: FORWARDED[401], 403: FORWARDED[403],
                           429: FORWARDED[429], 503: "master control not answering"})
    out[f"{PREFIX}/{REFRESH}"] = {"post": Operation(
        body_required=False, responses={201: "a new sensor token", 401: "no sensor token, or not a good one",
                   429: FORWARDED[429]})}
    return out


def _created(method: str, path: str) -> bool:
    # The aggregator says 201 for these; the REST client keeps only the body.
    return method == "POST" and path in ("instances", "configs", "command", "groups")
