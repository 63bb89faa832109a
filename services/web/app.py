"""The web program's Flask app factory. gunicorn calls ``create_app()`` in its worker only."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from flask import Flask, Response, request
from pydantic import SecretStr
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from shared import openapi
from shared.config import load_config
from shared.errors import ServiceError
from shared.hub_token import hub_token
from shared.processes import HTTP_POLLER, STATE_AGGREGATOR, WEB
from shared.pusher import Pusher
from shared.rest import RestClient
from shared.settings import Settings
from shared.web import ApiError, error_response, install_error_handlers

from .auth import Credentials
from .csvlog import CsvLog, resolve
from .dashboard import build_dashboard
from .dashboard import install as install_dashboard
from .errors import LanError
from .guards import install as install_guards
from .ingest import Ingest
from .master import forwarded_operations
from .master import make_blueprint as master_blueprint
from .ratelimit import RateLimits
from .readings import bp as readings_bp
from .routes import WebContext, bp
from .upstream import Upstream

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # a probe's reading is a few hundred bytes


def build_context(settings: Settings) -> tuple[WebContext, Pusher]:
    """The routes' context from the environment, and the pusher that carries the readings (the
    same batching pusher the handlers use; its source name is what the aggregator checks)."""
    secret = settings.internal_secret
    aggregator = RestClient(settings.state_aggregator, name=STATE_AGGREGATOR.name, secret=secret)
    pusher = Pusher(aggregator, source=WEB.name)
    upstream = Upstream(aggregator=aggregator,
                        poller=RestClient(settings.http_poller, name=HTTP_POLLER.name,
                                          secret=secret))
    ingest = Ingest(emit=pusher.emit, upstream=upstream,
                    csv=CsvLog(resolve(settings.csv_file, settings.data_dir)),
                    interval_s=settings.probe_interval_ms / 1000, clock=time.time)
    key = settings.master_api_key.get_secret_value() if settings.master_api_key else None
    creds = Credentials(hub_token=hub_token(settings), management_key=key)
    limits = RateLimits({"ingest": settings.rate_limit_ingest,
                         "management": settings.rate_limit_management})
    return WebContext(ingest, upstream, creds, limits), pusher


def create_app(ctx: WebContext | None = None, *, master_api_key: SecretStr | None = None) -> Flask:
    """The app; without a ``ctx`` it builds one from the environment and starts its pusher
    (and the dashboard's feed, which follows the change log only while someone looks).
    ``master_api_key`` replaces the context's management key (a test's app)."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    dashboard = None
    if ctx is None:
        settings, _ = load_config(WEB.name)
        ctx, pusher = build_context(settings)
        pusher.start()
        app.extensions["pusher"] = pusher
        dashboard = build_dashboard(settings, RestClient(settings.state_aggregator,
                                                         name=STATE_AGGREGATOR.name,
                                                         secret=settings.internal_secret))
        dashboard.feed.start()
    elif master_api_key is not None:
        ctx = replace(ctx, creds=ctx.creds.with_management_key(master_api_key.get_secret_value()))
    app.extensions["web"] = ctx
    install_guards(app, ctx.limits)
    app.register_blueprint(bp)
    app.register_blueprint(readings_bp)
    app.register_blueprint(master_blueprint(ctx.upstream.aggregator, ctx.creds))
    install_dashboard(app, dashboard)
    install_error_handlers(app)
    install_lan_error_handlers(app)
    # Under /api/: the LAN port answers no path of the internal services (their /openapi.json).
    openapi.install(app, title="sensor-hub web (LAN port)", path="/api/openapi.json",
                    extra=forwarded_operations)
    return app


def install_lan_error_handlers(app: Flask) -> None:
    """Registered after the shared handlers so these win: the LAN API answers with
    ``ok: false``, and an internal failure never shows internal addresses to the LAN."""

    @app.errorhandler(ApiError)
    def _api(exc: ApiError) -> Response:
        return error_response(exc.status, exc.error, exc.message, ok=False)

    @app.errorhandler(LanError)
    def _lan(exc: LanError) -> Response:
        return error_response(exc.status, exc.error, exc.message, ok=False)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Response:
        limit = request.max_content_length or MAX_BODY  # a route may allow more (master, bulk)
        return error_response(413, "body_too_large",
                              f"the request body is larger than {limit // 1024} KiB", ok=False)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        name = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, name, exc.description or name, ok=False)

    @app.errorhandler(ServiceError)
    def _service(exc: ServiceError) -> Response:
        log.warning("LAN request not served: %s", exc)
        return error_response(503, "not_ready", "the hub is not ready; send the request again",
                              ok=False)
