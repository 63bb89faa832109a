"""The one place every outgoing message passes through: it renders payloads (orjson, ISO
timestamps added by the callers) and hands them to the MQTT client. The durable outbox will sit
here, so that nothing the hub accepted is lost while the broker is away."""

from __future__ import annotations

import logging
from typing import Any

from shared.jsonutil import dumps
from shared.mqtt import MqttClient

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, client: MqttClient, *, default_qos: int, state_retain: bool) -> None:
        self._client = client
        self.default_qos = default_qos
        self.state_retain = state_retain
        self.published = 0

    def json(self, topic: str, payload: Any, *, qos: int | None = None, retain: bool = False) -> None:
        self.raw(topic, dumps(payload), qos=qos, retain=retain)

    def text(self, topic: str, payload: str, *, qos: int | None = None, retain: bool = False) -> None:
        self.raw(topic, payload.encode(), qos=qos, retain=retain)

    def raw(self, topic: str, payload: bytes, *, qos: int | None = None, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=self.default_qos if qos is None else qos,
                             retain=retain)
        self.published += 1

    @property
    def unacknowledged(self) -> int:
        """QoS>0 messages handed to paho and not yet acknowledged by the broker."""
        return self._client.unacknowledged
