"""The state aggregator's Flask app factory."""

from __future__ import annotations

import atexit
import gc

from flask import Flask

from shared import openapi
from shared.compact import detached
from shared.config import load_config
from shared.instance import Instance
from shared.internal import protect
from shared.rest import RestClient
from shared.settings import Settings
from shared.web import install_error_handlers

from .core import Aggregator
from .history.routes import bp as history_bp
from .history.service import History
from .master import token_routes  # noqa: F401  (its routes join master control's blueprint)
from .master.routes import MasterControl, build_master
from .master.routes import bp as master_bp
from .outbox.service import Outbox
from .persist import RegistryStore
from .registry import InstanceRegistry
from .routes import bp
from .system import SystemSampler


def build_aggregator(settings: Settings, instance: Instance | InstanceRegistry,
                     outbox: Outbox | None = None) -> Aggregator:
    registry = instance if isinstance(instance, InstanceRegistry) else InstanceRegistry.of(
        instance, poll_interval=settings.poll_interval, update_interval=settings.update_interval)
    return Aggregator(
        registry,
        handlers={
            "serial": RestClient(settings.serial_handler, name="serial-handler",
                                 secret=settings.internal_secret),
            "http": RestClient(settings.http_poller, name="http-poller",
                               secret=settings.internal_secret),
        },
        cache_ttl=settings.cache_ttl if settings.cache_ttl is not None else registry.cache_ttl,
        poll_interval=settings.poll_interval,
        update_interval=settings.update_interval,
        store=RegistryStore(settings.data_dir / "registry.json"),
        max_devices=settings.max_devices,
        changelog_capacity=settings.changelog_max,
        changelog_max_bytes=int(settings.changelog_max_mb * 2**20),
        outbox=outbox,
    )


def create_app(aggregator: Aggregator | None = None,
               master: MasterControl | None = None, history: History | None = None, *,
               secret: str | None = None) -> Flask:
    """The app; without an ``aggregator`` it builds one (and master control and the readings
    history) from the environment and starts it, behind the instance's internal secret (a
    test's app answers only with ``secret`` when it gives one)."""
    system: SystemSampler | None = None
    if aggregator is None:
        def load() -> tuple[Settings, InstanceRegistry]:
            settings, instance = load_config("state-aggregator")
            return settings, InstanceRegistry.of(instance, poll_interval=settings.poll_interval,
                                                 update_interval=settings.update_interval)

        settings, registry = detached(load)  # the instance file's models are gone by then
        secret = settings.internal_secret
        outbox = Outbox.from_settings(settings) if settings.outbox_enabled else None
        aggregator = build_aggregator(settings, registry, outbox)
        if outbox is not None:
            outbox.start()
            atexit.register(outbox.stop)
        aggregator.start()
        system = SystemSampler(aggregator, data_dir=settings.data_dir,
                               interval=settings.update_interval or registry.update_interval)
        system.start()
        master = build_master(settings, aggregator)
        master.service.start()
        if settings.history_enabled:
            history = History.from_settings(settings)
            history.start()
            # On a clean stop, what waits in the writer's queue still reaches the disk.
            atexit.register(history.stop)
    if history is not None:
        aggregator.history_sink = history.append
    app = Flask(__name__)
    if secret is not None:
        protect(app, secret)
    app.extensions["aggregator"] = aggregator
    if aggregator.outbox is not None:
        app.extensions["outbox"] = aggregator.outbox
    if system is not None:
        app.extensions["hub_system"] = system
    if master is not None:
        app.extensions["master"] = master
    if history is not None:
        app.extensions["history"] = history
    app.register_blueprint(bp)
    app.register_blueprint(master_bp)
    app.register_blueprint(history_bp)
    install_error_handlers(app)
    openapi.install(app, title="sensor-hub state-aggregator (internal)")
    if system is not None:  # the real process, not a test's app
        collect_less_often()
    return app


def collect_less_often() -> None:
    """Every batch of readings allocates thousands of objects: at the default threshold (700)
    the collector runs every few dozen readings and its older generations walk every device's
    state. Collect less often and keep what start-up loaded out of the walk, as the bridge does:
    a quarter to a third less CPU per ingested reading here (bench/ingest_cost.py --tuned-gc)."""
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
