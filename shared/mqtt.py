"""The paho-mqtt wrapper. Only the bridge (``connector/``) uses it, and nothing else touches paho.

What it adds to paho: the v2 callback API, a Last Will, ``TCP_NODELAY`` (a QoS 1 round trip is
about 88 ms with Nagle and under 1 ms without), a send window that keeps unacknowledged QoS>0
messages far below paho's 16-bit message ids, subscriptions that complete before ``on_ready``
runs, and handlers that cannot kill the network thread.

paho's own in-flight limit is off by default (``max_inflight=0``): with a limit, paho walks its
message list from the start on every PUBACK to find the next queued message (``_update_inflight``,
about a tenth of the bridge's CPU under load, and the reason a large limit is slow); without
one it sends at once and never walks, and the send window alone bounds what is unacknowledged.
The window follows the broker's Receive Maximum (mosquitto 2.0 advertises 20), which paho
ignores: MQTT 5 lets a broker disconnect a client that has more unacknowledged (0x93).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from shared.topics import check_publish_topic

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes, bool], None]
"""A message handler: ``(topic, payload, retained)``."""


class SendWindow:
    """How many QoS>0 messages may be unacknowledged at once. The limit is the smaller of ours
    (far below paho's 16-bit message ids) and the broker's MQTT 5 Receive Maximum, which paho
    does not honour by itself: a strict broker disconnects a client that exceeds it."""

    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition()
        self._ceiling = limit
        self.limit = limit
        self.used = 0
        self.peak = 0

    def follow_broker(self, receive_maximum: int) -> None:
        with self._cond:
            self.limit = max(1, min(self._ceiling, receive_maximum))
            self._cond.notify_all()

    def acquire(self, *, block: bool = True) -> bool:
        with self._cond:
            if block:
                self._cond.wait_for(lambda: self.used < self.limit)
            elif self.used >= self.limit:
                return False
            self.used += 1
            self.peak = max(self.peak, self.used)
            return True

    def release(self) -> None:
        with self._cond:
            self.used -= 1
            # Wake the publishers only once half the window is free: waking them on every
            # PUBACK costs a thread switch per message (measured: a quarter of the throughput
            # and 60 % more bridge CPU with mosquitto's window of 20); half-window bursts don't.
            if self.used <= self.limit // 2:
                self._cond.notify_all()


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: str
    qos: int = 1
    retain: bool = True


class MqttClient:
    """One connection to the broker, reconnecting by itself with backoff."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        keepalive: int = 60,
        username: str | None = None,
        password: str | None = None,
        will: Will | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_ready: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        max_inflight: int = 0,
        send_window: int = 10_000,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self._keepalive = keepalive
        self._subscriptions = list(subscriptions)
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._pending_sub_mid: int | None = None
        self.connected = threading.Event()
        self.window = SendWindow(send_window)
        self._windowed: set[int] = set()
        self._net_thread: threading.Thread | None = None
        self._stopping = False

        # MQTT 5, for "retain as published": under 3.1.1 a retained message published while
        # we are subscribed arrives with retain=0, so a retained command could not be refused.
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
        )
        if username:
            client.username_pw_set(username, password)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(0)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_publish = self._handle_publish
        client.on_message = self._handle_unrouted
        self._client = client
        self._acks_lock: threading.RLock = client._out_message_mutex

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        log.info("connecting to mqtt://%s:%s as %s", self.host, self.port, self.client_id)
        self._client.connect_async(self.host, self.port, keepalive=self._keepalive,
                                   clean_start=True)
        self._client.loop_start()
        self._net_thread = getattr(self._client, "_thread", None)

    def stop(self, final: Sequence[tuple[str, str | bytes, int, bool]] = (),
             timeout: float = 5.0) -> None:
        """Publish ``final`` messages (waiting for them while connected), then disconnect."""
        infos = [self.publish(t, p, qos=q, retain=r) for t, p, q, r in final]
        if self.connected.is_set():
            for info in infos:
                try:
                    info.wait_for_publish(timeout)
                except (RuntimeError, ValueError):
                    log.warning("final message %s was not delivered before shutdown", info.mid)
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()

    # --- publishing --------------------------------------------------------------------------
    def publish(
        self, topic: str, payload: str | bytes, *, qos: int = 0, retain: bool = False
    ) -> paho.MQTTMessageInfo:
        """Queue one message. For QoS>0 it waits for room in the send window; on paho's own
        thread, which must never block, a message that finds the window full is handed to a
        thread that waits (rare: a few status and response messages are published there)."""
        check_publish_topic(topic)
        took = qos > 0
        if took:
            on_net_thread = threading.current_thread() is self._net_thread
            if not self.window.acquire(block=not on_net_thread):
                threading.Thread(target=self.publish, args=(topic, payload),
                                 kwargs={"qos": qos, "retain": retain}, daemon=True).start()
                return paho.MQTTMessageInfo(0)
        # paho calls on_publish while holding this re-entrant lock, so holding it across
        # publish() means a fast PUBACK cannot be handled before the mid is recorded, and
        # taking a lock of our own here instead would deadlock against on_publish.
        with self._acks_lock:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
            if took:
                if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    self._windowed.add(info.mid)
                else:
                    self.window.release()
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.error("publish to %s failed: %s", topic, paho.error_string(info.rc))
        return info

    @property
    def unacknowledged(self) -> int:
        """QoS>0 messages handed to paho and not yet acknowledged by the broker."""
        with self._acks_lock:
            return len(self._windowed)

    # --- subscribing -------------------------------------------------------------------------
    def route(self, topic_filter: str, handler: Handler) -> None:
        """Call ``handler`` for messages matching ``topic_filter``; its exceptions are logged."""

        def dispatch(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
            try:
                handler(msg.topic, bytes(msg.payload), bool(msg.retain))
            except Exception:
                log.exception("handler for %s failed on a message to %s", topic_filter, msg.topic)

        self._client.message_callback_add(topic_filter, dispatch)

    # --- paho callbacks (network thread) -------------------------------------------------------
    def _handle_connect(
        self, client: paho.Client, _u: Any, _flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        # Absent means 65535 (MQTT 5, 3.2.2.3.3).
        self.window.follow_broker(int(getattr(props, "ReceiveMaximum", 65535)))
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._subscriptions:
            self._ready()
            return
        rc, mid = client.subscribe([
            (topic_filter, SubscribeOptions(qos=qos, retainAsPublished=True))
            for topic_filter, qos in self._subscriptions
        ])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("subscribe failed: %s", paho.error_string(rc))
        self._pending_sub_mid = mid

    def _handle_subscribe(
        self, _c: paho.Client, _u: Any, mid: int, codes: list[ReasonCode], _props: Any
    ) -> None:
        if mid != self._pending_sub_mid:
            return
        for (topic_filter, _qos), code in zip(self._subscriptions, codes, strict=False):
            if code.is_failure:
                log.error("broker refused subscription %s: %s", topic_filter, code)
        self._ready()

    def _ready(self) -> None:
        log.info("connected to mqtt://%s:%s", self.host, self.port)
        self.connected.set()
        if self._on_ready is not None:
            try:
                self._on_ready()
            except Exception:
                log.exception("on_ready failed")

    def _handle_disconnect(
        self, _c: paho.Client, _u: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if self._stopping:
            log.info("disconnected from mqtt://%s:%s", self.host, self.port)
        elif was:
            log.warning("lost the broker (%s); reconnecting with backoff", reason)
            if self._on_lost is not None:
                try:
                    self._on_lost()
                except Exception:
                    log.exception("on_lost failed")

    def _handle_publish(
        self, _c: paho.Client, _u: Any, mid: int, _reason: ReasonCode, _props: Any
    ) -> None:
        with self._acks_lock:  # already held by paho here; re-entrant
            if mid in self._windowed:
                self._windowed.discard(mid)
                self.window.release()

    def _handle_unrouted(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        log.debug("no handler for %s", msg.topic)
