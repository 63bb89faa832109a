"""The bridge: builds the context, the MQTT client and the features, and runs them. Each
feature starts in its own try/except that names it, so one bad feature cannot take the bridge
down.

Inbound messages are routed in one place: the topic is parsed once (``Topics.parse``) and
dispatched by its kind to the one feature handler of that kind. The bridge subscribes to exactly
the kinds that running features handle, so every filter has a handler and every handler a filter.
"""

from __future__ import annotations

import logging
import secrets
import signal
import threading
from pathlib import Path
from types import FrameType

from shared.compact import give_back_soon
from shared.instance import Instance
from shared.mqtt import MqttClient, Tls, Will
from shared.rest import RestClient
from shared.settings import Settings
from shared.topics import RouteError, RouteKind, Topics

from .answers import Answers
from .context import BridgeContext
from .features.base import Feature, Inbound
from .features.commands import CommandsFeature, guess_id, meta_error
from .features.discovery import DiscoveryFeature
from .features.master import MasterFeature
from .features.meta import MetaFeature
from .features.state import StateFeature
from .features.status import StatusFeature
from .publisher import Publisher

log = logging.getLogger(__name__)


def make_client_id(settings: Settings) -> str:
    """Unique per process start, so two overlapping containers never kick each other off."""
    return f"{settings.mqtt_client_prefix}-{settings.instance_name}-{secrets.token_hex(3)}"


def slim(instance: Instance) -> Instance:
    """``instance`` without its sensors: the bridge learns its devices from the aggregator."""
    return instance.model_copy(update={"config": instance.config.model_copy(
        update={"sensors": []})})


def broker_tls(settings: Settings) -> Tls | None:
    """The TLS settings of the broker connection (``MQTT_TLS`` and its files), or None."""
    if not settings.mqtt_tls:
        return None

    def name(path: Path | None) -> str | None:
        return str(path) if path is not None else None

    return Tls(ca_file=name(settings.mqtt_ca_file), cert_file=name(settings.mqtt_cert_file),
               key_file=name(settings.mqtt_key_file), insecure=settings.mqtt_tls_insecure)


class Bridge:
    def __init__(self, settings: Settings, instance: Instance) -> None:
        topics = Topics(settings.mqtt_base_topic, settings.instance_name,
                        ha_prefix=settings.ha_discovery_prefix)
        client_id = make_client_id(settings)
        self.client = MqttClient(
            host=settings.mqtt_host, port=settings.broker_port, client_id=client_id,
            keepalive=settings.mqtt_keepalive, username=settings.mqtt_username,
            password=settings.mqtt_password.get_secret_value() if settings.mqtt_password else None,
            tls=broker_tls(settings),
            will=Will(topics.status, "offline", qos=1, retain=True),
            on_ready=self._on_ready, on_lost=self._on_lost, on_message=self._on_message,
        )
        publisher = Publisher(self.client, default_qos=settings.mqtt_qos,
                              state_retain=settings.mqtt_retain)
        self.ctx = BridgeContext(
            settings=settings, instance=instance, topics=topics, client=self.client,
            publisher=publisher, answers=Answers(publisher),
            aggregator=RestClient(settings.state_aggregator, name="state-aggregator",
                                  secret=settings.internal_secret),
            client_id=client_id,
        )
        self.state = StateFeature(self.ctx)
        self.status = StatusFeature(self.ctx, state=self.state)
        self.discovery = DiscoveryFeature(self.ctx)
        self.features: list[Feature] = [
            self.status, self.state, CommandsFeature(self.ctx),
            MetaFeature(self.ctx, state=self.state, status=self.status,
                        on_rebirth=self.discovery.republish),
            self.discovery,
            MasterFeature(self.ctx),
        ]
        # The features took what they need of the sensors (discovery: their declared
        # properties); the instance file's sensor models (about 2.3 KB a sensor) are let go.
        self.ctx.instance = slim(instance)
        give_back_soon()
        self.running: list[Feature] = []
        self.dispatch: dict[RouteKind, Inbound] = {}
        self._stopped = threading.Event()
        self._stop_requested = threading.Event()
        self._session_cond = threading.Condition()
        self._ready_count = 0  # connections made ready by the client, counted on its thread

    def start(self) -> None:
        self.ctx.answers.start()
        for feature in self.features:
            try:
                handlers = feature.handlers()
                if taken := handlers.keys() & self.dispatch.keys():
                    raise RuntimeError(f"another feature already handles {sorted(taken)}")
                feature.start()
                self.dispatch.update(handlers)
                self.running.append(feature)
            except Exception:
                log.exception("feature %r failed to start; the bridge goes on without it",
                              feature.name)
        self.client.subscriptions = [(self.ctx.topics.filter(kind), 1) for kind in self.dispatch]
        threading.Thread(target=self._session, name="session", daemon=True).start()
        self.client.start()

    # --- inbound -------------------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """paho's network thread: one parse, then the handler of the topic's kind."""
        try:
            route = self.ctx.topics.parse(topic)
        except RouteError as exc:
            if not retained:  # a stale message left on the broker is not a request
                log.debug("bad inbound topic %s: %s", topic, exc)
                self.ctx.answers.json(self.ctx.topics.meta_error, meta_error(
                    "INVALID_TOPIC", str(exc), topic=topic, req_id=guess_id(payload)))
            return
        handler = self.dispatch.get(route.kind) if route is not None else None
        if handler is None:
            log.debug("no handler for %s", topic)
            return
        handler(route, payload, retained)  # type: ignore[arg-type]  # route is not None here

    # --- the session: what follows each (re)connection ------------------------------------------
    def _on_ready(self) -> None:
        # paho's thread must not wait for the send window: the session thread publishes.
        with self._session_cond:
            self._ready_count += 1
            self._session_cond.notify_all()

    def _session(self) -> None:
        """After each connection: ``online`` (the subscriptions are in place), then each
        feature's ``on_connect``. Runs on its own thread, one connection at a time."""
        handled = 0
        while not self._stopped.is_set():
            with self._session_cond:
                while self._ready_count == handled and not self._stopped.is_set():
                    self._session_cond.wait()
                handled = self._ready_count
            if self._stopped.is_set() or not self.client.connected.is_set():
                continue
            self.status.announce_online()
            for feature in self.running:
                try:
                    feature.on_connect()
                except Exception:
                    log.exception("feature %r failed after connect", feature.name)

    def _on_lost(self) -> None:
        self.status.connection_lost()

    # --- stopping --------------------------------------------------------------------------------
    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        with self._session_cond:
            self._session_cond.notify_all()
        log.info("stopping: publishing offline")
        for feature in reversed(self.running):
            try:
                feature.stop()
            except Exception:
                log.exception("feature %r failed to stop", feature.name)
        self.ctx.answers.stop()
        # Bounded: with the broker away this returns within about STOP_TIMEOUT_S.
        self.client.stop(final=[(self.ctx.topics.status, "offline", 1, True)])

    def run_forever(self) -> None:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %s received", signal.Signals(signum).name)
            self._stop_requested.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        self._stop_requested.wait()
        self.stop()
