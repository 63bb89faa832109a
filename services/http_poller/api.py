"""The LAN-facing probe API (``/api/...`` on ``HOST:PORT``): ingest, health, the probe list and
provisioning on demand. It is its own Flask app, served on its own socket (see ``lan.py``), so
nothing of the internal 127.0.0.1 endpoints is reachable from the LAN.

With ``SERVER_TOKEN`` set every endpoint but ``/api/health`` needs the token. Answers are
``{ok: true, ...}`` or ``{ok: false, error, message, timestamp}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from shared.timeutil import iso
from shared.web import ApiError, error_response, install_error_handlers, json_object_body, json_response

from .ingest import Ingest, IngestError
from .probes import ProbeDirectory
from .provisioner import Provisioner, ProvisionError

MAX_BODY = 64 * 1024
bp = Blueprint("lan_api", __name__, url_prefix="/api")


@dataclass
class LanContext:
    ingest: Ingest
    directory: ProbeDirectory
    provisioner: Provisioner | None


def _ctx() -> LanContext:
    ctx: LanContext = current_app.extensions["lan"]
    return ctx


def _body() -> dict[str, Any]:
    """The JSON object body (empty for a GET); 400/422 with a message when it is not one."""
    return {} if request.method == "GET" else json_object_body()


@bp.before_request
def _authorize() -> None:
    if request.endpoint == "lan_api.health":
        return
    token = request.headers.get("X-Token") or request.args.get("token")
    if token is None:
        given = _body().get("token")
        token = given if isinstance(given, str) else None
    _ctx().ingest.check_token(token)


@bp.get("/health")
def health() -> Response:
    return json_response({"ok": True, "time": iso()})


@bp.route("/ingest", methods=["GET", "POST"])
def ingest() -> Response:
    if request.method == "GET":
        payload: dict[str, Any] = request.args.to_dict()
        result = _ctx().ingest.accept(payload, remote_ip=request.remote_addr, text_ok=True)
    else:
        result = _ctx().ingest.accept(_body(), remote_ip=request.remote_addr)
    return json_response(result)


@bp.get("/probes")
def probes() -> Response:
    return json_response({"ok": True, "probes": _ctx().directory.views()})


@bp.post("/provision")
def provision() -> Response:
    """``{probe_id}`` (or ``{id}``): push our settings to that probe now."""
    ctx = _ctx()
    body = _body()
    probe_id = body.get("probe_id", body.get("id", request.args.get("probe_id")))
    if not isinstance(probe_id, str) or not probe_id:
        raise ApiError(422, "invalid_body", "probe_id is required (see GET /api/probes)")
    if ctx.provisioner is None:
        raise ApiError(409, "disabled", "provisioning is disabled on this hub")
    if ctx.directory.get(probe_id) is None:
        raise ApiError(404, "unknown_probe", f"no probe {probe_id!r} is known (GET /api/probes)")
    try:
        probe = ctx.provisioner.provision(probe_id)
    except ProvisionError as exc:
        raise ApiError(502, "provision_failed", str(exc)) from exc
    return json_response({"ok": True, "probe": probe.view(),
                          "server_url": ctx.provisioner.server_url})


def create_lan_app(ctx: LanContext) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["lan"] = ctx
    app.register_blueprint(bp)
    install_error_handlers(app)

    # Registered after the shared handlers so these win: the LAN API answers with ``ok: false``.
    @app.errorhandler(ApiError)
    def _api(exc: ApiError) -> Response:
        return error_response(exc.status, exc.error, exc.message, ok=False)

    @app.errorhandler(IngestError)
    def _ingest(exc: IngestError) -> Response:
        return error_response(exc.status, exc.error, exc.message, ok=False)

    return app
