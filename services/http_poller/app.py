"""The HTTP poller's Flask app factory."""

from __future__ import annotations

from flask import Flask

from shared import openapi
from shared.config import load_config
from shared.internal import protect
from shared.processes import HTTP_POLLER, STATE_AGGREGATOR
from shared.pusher import Pusher
from shared.rest import RestClient
from shared.web import install_error_handlers

from .core import HttpPoller
from .lan import ProbeSide, build_probe_side
from .routes import bp


def create_app(poller: HttpPoller | None = None, probes: ProbeSide | None = None, *,
               secret: str | None = None) -> Flask:
    """The app; without a ``poller`` it builds one (and the probe side) from the environment
    and starts them, behind the instance's internal secret (a test's app answers only with
    ``secret`` when it gives one)."""
    app = Flask(__name__)
    if poller is None:
        settings, instance = load_config(HTTP_POLLER.name)
        secret = settings.internal_secret
        pusher = Pusher(RestClient(settings.state_aggregator, name=STATE_AGGREGATOR.name,
                                   secret=secret),
                        source=HTTP_POLLER.name)
        poller = HttpPoller(instance, pusher.emit, poll_interval=settings.poll_interval,
                            workers=settings.poll_workers)
        pusher.start()
        poller.start()
        app.extensions["pusher"] = pusher
        probes = build_probe_side(settings, instance, pusher.emit)
        probes.start()
    if probes is not None:
        app.extensions["probes"] = probes
    if secret is not None:
        protect(app, secret)
    app.extensions["http_poller"] = poller
    app.register_blueprint(bp)
    install_error_handlers(app)
    openapi.install(app, title="sensor-hub http-poller (internal)")
    return app
