"""The one place every outgoing message passes through: it renders payloads (orjson, ISO
timestamps added by the callers) and hands them to the MQTT client. ``last`` is the newest
message's ``Delivery``, per thread: the state feature commits its position in the aggregator's
durable log once the message that ended a page is acknowledged (PUBACK for QoS 1, on the socket
for QoS 0). Per thread, because another feature's message (a QoS 0 one, say) published after the
page may be acknowledged before the page's own."""

from __future__ import annotations

import logging
import threading
from typing import Any

from shared.jsonutil import dumps
from shared.mqtt import Delivery, MqttClient

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, client: MqttClient, *, default_qos: int, state_retain: bool) -> None:
        self._client = client
        self.default_qos = default_qos
        self.state_retain = state_retain
        self.published = 0
        self._local = threading.local()

    def json(self, topic: str, payload: Any, *, qos: int | None = None, retain: bool = False) -> None:
        self.raw(topic, dumps(payload), qos=qos, retain=retain)

    def text(self, topic: str, payload: str, *, qos: int | None = None, retain: bool = False) -> None:
        self.raw(topic, payload.encode(), qos=qos, retain=retain)

    def raw(self, topic: str, payload: bytes, *, qos: int | None = None, retain: bool = False) -> None:
        qos = self.default_qos if qos is None else qos
        sent = self._client.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0 or getattr(self._local, "last", None) is None:
            # The broker acknowledges a session's QoS>0 messages in order: its PUBACK of this
            # one says every message before it arrived. A QoS 0 one says only that it was
            # written to the socket, so it stands in only where nothing acknowledged does.
            self._local.last = sent
        self.published += 1

    @property
    def last(self) -> Delivery | None:
        """The newest QoS>0 message this thread published (a QoS 0 one when it published no
        other; ``None``: none yet)."""
        last: Delivery | None = getattr(self._local, "last", None)
        return last

    @property
    def unacknowledged(self) -> int:
        """QoS>0 messages handed to paho and not yet acknowledged by the broker."""
        return self._client.unacknowledged
