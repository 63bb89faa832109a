"""The bridge: builds the context, the MQTT client and the features, and runs them. Each
feature starts in its own try/except that names it, so one bad feature cannot take the bridge
down."""

from __future__ import annotations

import logging
import secrets
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

from shared.instance import Instance
from shared.mqtt import MqttClient, Will
from shared.rest import RestClient
from shared.settings import Settings
from shared.topics import Topics

from .context import BridgeContext
from .features.base import Feature
from .features.commands import CommandsFeature
from .features.meta import MetaFeature
from .features.state import StateFeature
from .features.status import StatusFeature
from .publisher import Publisher

log = logging.getLogger(__name__)


def make_client_id(settings: Settings) -> str:
    """Unique per process start, so two overlapping containers never kick each other off."""
    return f"{settings.mqtt_client_prefix}-{settings.instance_name}-{secrets.token_hex(3)}"


class Bridge:
    def __init__(self, settings: Settings, instance: Instance) -> None:
        topics = Topics(settings.mqtt_base_topic, settings.instance_name)
        client_id = make_client_id(settings)
        self.status: StatusFeature | None = None
        self.client = MqttClient(
            host=settings.mqtt_host, port=settings.mqtt_port, client_id=client_id,
            keepalive=settings.mqtt_keepalive, username=settings.mqtt_username,
            password=settings.mqtt_password.get_secret_value() if settings.mqtt_password else None,
            will=Will(topics.status, "offline", qos=1, retain=True),
            subscriptions=[(f, 1) for f in topics.subscriptions()],
            on_ready=self._on_ready, on_lost=self._on_lost,
        )
        self.ctx = BridgeContext(
            settings=settings, instance=instance, topics=topics,
            publisher=Publisher(self.client, default_qos=settings.mqtt_qos,
                                state_retain=settings.mqtt_retain),
            aggregator=RestClient(settings.state_aggregator, name="state-aggregator"),
            executor=ThreadPoolExecutor(max_workers=8, thread_name_prefix="bridge"),
            client_id=client_id,
        )
        self.status = StatusFeature(self.ctx)
        self.state = StateFeature(self.ctx)
        self.features: list[Feature] = [
            self.status, self.state, CommandsFeature(self.ctx),
            MetaFeature(self.ctx, state=self.state, status=self.status),
        ]
        self.running: list[Feature] = []
        self._stopped = threading.Event()

    def start(self) -> None:
        for feature in self.features:
            try:
                for topic_filter, handler in feature.routes():
                    self.client.route(topic_filter, handler)
                feature.start()
                self.running.append(feature)
            except Exception:
                log.exception("feature %r failed to start; the bridge goes on without it",
                              feature.name)
        self.client.start()

    def _on_ready(self) -> None:
        # paho's thread: publish online now (subscriptions are in place), the rest elsewhere.
        if self.status is not None:
            self.status.announce_online()
        for feature in self.running:
            self.ctx.executor.submit(self._guarded_connect, feature)

    @staticmethod
    def _guarded_connect(feature: Feature) -> None:
        try:
            feature.on_connect()
        except Exception:
            log.exception("feature %r failed after connect", feature.name)

    def _on_lost(self) -> None:
        if self.status is not None:
            self.status.connection_lost()

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("stopping: publishing offline")
        for feature in reversed(self.running):
            try:
                feature.stop()
            except Exception:
                log.exception("feature %r failed to stop", feature.name)
        self.client.stop(final=[(self.ctx.topics.status, "offline", 1, True)])
        self.ctx.executor.shutdown(wait=False, cancel_futures=True)

    def run_forever(self) -> None:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %s received", signal.Signals(signum).name)
            self._stopped_by_signal.set()

        self._stopped_by_signal = threading.Event()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        self._stopped_by_signal.wait()
        self.stop()
