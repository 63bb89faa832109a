"""The serial handler's Flask app factory."""

from __future__ import annotations

from flask import Flask

from shared import openapi
from shared.compact import detached
from shared.config import load_config
from shared.internal import protect
from shared.pusher import Pusher
from shared.rest import RestClient
from shared.settings import Settings
from shared.web import install_error_handlers

from .core import SerialHandler, SerialPlan
from .routes import bp


def create_app(handler: SerialHandler | None = None, *, secret: str | None = None) -> Flask:
    """The app; without a ``handler`` it builds one from the environment, pushing to the
    aggregator, and starts its port workers, behind the instance's internal secret (a test's
    app answers only with ``secret`` when it gives one)."""
    app = Flask(__name__)
    if handler is None:
        def load() -> tuple[Settings, SerialPlan]:
            settings, instance = load_config("serial-handler")
            return settings, SerialPlan.of(instance, settings.update_interval)

        settings, plan = detached(load)  # the instance file's models are gone by then
        secret = settings.internal_secret
        pusher = Pusher(RestClient(settings.state_aggregator, name="state-aggregator",
                                   secret=secret),
                        source="serial-handler")
        handler = SerialHandler(plan, pusher.emit)
        pusher.start()
        handler.start()
        app.extensions["pusher"] = pusher
    if secret is not None:
        protect(app, secret)
    app.extensions["serial_handler"] = handler
    app.register_blueprint(bp)
    install_error_handlers(app)
    openapi.install(app, title="sensor-hub serial-handler (internal)")
    return app
