"""The paho-mqtt wrapper. Only the bridge (``connector/``) uses it, and nothing else touches paho.

What it adds to paho: the v2 callback API, a Last Will, ``TCP_NODELAY`` (a QoS 1 round trip is
about 88 ms with Nagle and under 1 ms without), a send window that keeps unacknowledged QoS>0
messages far below paho's 16-bit message ids, subscriptions that complete before ``on_ready``
runs, handlers that cannot kill the network thread, a reconnect backoff capped low (a broker that
comes back is used again within about 2 s), and a stop that never waits on an absent broker.

Credentials and TLS (``Tls``: the broker's CA, a client certificate, verification off only when
asked) are paho's own (``username_pw_set``, ``tls_set``). A connection that fails (refused
credentials, a certificate that does not verify, no broker) is logged once per reason, with
what to check, not once per retry; ``last_error`` keeps the reason for the status file. A broker
that refuses the credentials is asked again less often (up to ``AUTH_RETRY_MAX_S``): retrying a
wrong password every second only fills the broker's log.

paho's own in-flight limit is off by default (``max_inflight=0``): with a limit, paho walks its
message list from the start on every PUBACK to find the next queued message (``_update_inflight``,
about a tenth of the bridge's CPU under load, and the reason a large limit is slow); without
one it sends at once and never walks, and the send window alone bounds what is unacknowledged.
The window follows the broker's Receive Maximum (mosquitto 2.0 advertises 20), which paho
ignores: MQTT 5 lets a broker disconnect a client that has more unacknowledged (0x93).

``publish`` answers with a ``Delivery`` whose ``acknowledged`` this client sets in paho's
``on_publish``: paho's own ``MQTTMessageInfo.is_published`` raises for a message handed over while
the connection was down, even after paho sent it on the next connection and the PUBACK came.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from shared.errors import ConfigError
from shared.topics import check_publish_topic

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes, bool], None]
"""A message handler: ``(topic, payload, retained)``."""

# Reconnect backoff: paho doubles the delay from the minimum up to the maximum. A retry is a
# refused TCP connect while the broker is down, so retrying often costs nothing, and a cap this
# low means the bridge is back within about 2 s of the broker (paho's default grows to 120 s).
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 1.5
# How long ``stop`` may wait on the broker in all (final messages, then the network thread).
STOP_TIMEOUT_S = 1.5
# After the broker refused our credentials, the retries back off up to this: the password will
# not heal by itself, but one fixed on the broker is used within this many seconds.
AUTH_RETRY_MAX_S = 30.0
# CONNACK reason codes that mean "not these credentials" (MQTT 5: 0x86, 0x87).
BAD_CREDENTIALS = (134, 135)


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

    def acquire(self, *, block: bool = True, timeout: float | None = None) -> bool:
        with self._cond:
            if block:
                if not self._cond.wait_for(lambda: self.used < self.limit, timeout=timeout):
                    return False
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


class Delivery:
    """One message handed to ``MqttClient.publish``: ``acknowledged`` turns true when the broker
    has it (its PUBACK for QoS>0 without a failure reason; for QoS 0, the packet written to the
    socket). A QoS>0 message published while disconnected goes out on the next connection and is
    acknowledged then; a QoS 0 one published while disconnected, or still unwritten when its
    connection ended, is dropped by paho and never acknowledged."""

    __slots__ = ("_info", "acknowledged", "qos")

    def __init__(self, info: paho.MQTTMessageInfo, qos: int) -> None:
        self._info = info
        self.qos = qos
        self.acknowledged = False

    @property
    def mid(self) -> int:
        return self._info.mid

    @property
    def rc(self) -> MQTTErrorCode:
        """paho's answer when the message was handed over (``MQTT_ERR_NO_CONN``: disconnected)."""
        return self._info.rc

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a message sent on the current connection (one
        handed over while disconnected is not waited for); whether it is acknowledged."""
        with contextlib.suppress(RuntimeError, ValueError):  # paho: not sent on this connection
            self._info.wait_for_publish(timeout)
        return self.acknowledged


@dataclass(frozen=True, slots=True)
class Tls:
    """TLS to the broker: ``ca_file`` the CA that signed its certificate (None: the system's),
    ``cert_file``/``key_file`` a client certificate for brokers that ask for one, ``insecure``
    accepts any certificate and host name (encryption without knowing who answers)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


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
        tls: Tls | None = None,
        will: Will | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_ready: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        on_message: Handler | None = None,
        max_inflight: int = 0,
        send_window: int = 10_000,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self._keepalive = keepalive
        self.subscriptions = list(subscriptions)
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._pending_sub_mid: int | None = None
        self.connected = threading.Event()
        self.window = SendWindow(send_window)
        self._awaiting: dict[int, Delivery] = {}  # by mid: handed to paho, not yet acknowledged
        self._windowed = 0  # how many of them hold a place in the window (QoS>0)
        self._net_thread: threading.Thread | None = None
        self._stopping = False
        self._default_handler = on_message
        self.generation = 0  # grows by one on every connection, before ``connected`` is set
        self.dropped_on_network_thread = 0
        self.url = f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"
        self.last_error: str | None = None  # why the last connection attempt failed, if it did
        self._auth_backoff = False
        self._tls = tls is not None
        self._refused = False  # this attempt's CONNACK said no (its disconnect is no news)

        # MQTT 5, for "retain as published": under 3.1.1 a retained message published while
        # we are subscribed arrives with retain=0, so a retained command could not be refused.
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
        )
        if username:
            client.username_pw_set(username, password)
        if tls is not None:
            _set_tls(client, tls)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        # paho hints int, but only doubles and compares the delays: fractions work.
        client.reconnect_delay_set(min_delay=RECONNECT_MIN_S,  # type: ignore[arg-type]
                                   max_delay=RECONNECT_MAX_S)  # type: ignore[arg-type]
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(0)
        client.on_pre_connect = self._handle_pre_connect
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_publish = self._handle_publish
        client.on_message = self._handle_message
        self._client = client
        self._acks_lock: threading.RLock = client._out_message_mutex

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        log.info("connecting to %s as %s", self.url, self.client_id)
        self._client.connect_async(self.host, self.port, keepalive=self._keepalive,
                                   clean_start=True)
        self._client.loop_start()
        self._net_thread = getattr(self._client, "_thread", None)

    def stop(self, final: Sequence[tuple[str, str | bytes, int, bool]] = (),
             timeout: float = STOP_TIMEOUT_S) -> None:
        """Publish ``final`` messages while connected, then disconnect: all within ``timeout``.

        With the broker away nothing is waited for (the Last Will says ``offline`` for us), so a
        stop never hangs until the supervisor's SIGKILL."""
        deadline = time.monotonic() + timeout
        if self.connected.is_set():
            for topic, payload, qos, retain in final:
                sent = self.publish(topic, payload, qos=qos, retain=retain,
                                    wait=max(0.0, deadline - time.monotonic()))
                if not sent.wait(max(0.0, deadline - time.monotonic())):
                    log.warning("final message to %s was not delivered before shutdown", topic)
        self._stopping = True
        self._client.disconnect()
        # paho's loop_stop joins its thread without a limit, and the thread may sit in a
        # connect attempt or still flush messages to a slow broker: join with what is left.
        thread = self._net_thread
        self._client._thread_terminate = True  # what loop_stop sets
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.2, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("the MQTT network thread did not stop within %.1f s", timeout)

    # --- publishing --------------------------------------------------------------------------
    def publish(
        self, topic: str, payload: str | bytes, *, qos: int = 0, retain: bool = False,
        wait: float | None = None,
    ) -> Delivery:
        """Queue one message; the answer tells when the broker has it. For QoS>0 it waits (up to
        ``wait`` seconds, or for good) for room in the send window. paho's own thread must never
        block, so callers hand their publishing to their own threads; a QoS>0 message published
        there that finds the window full is dropped and counted (never a thread per message: a
        flood made thousands)."""
        check_publish_topic(topic)
        took = qos > 0
        if took:
            on_net_thread = threading.current_thread() is self._net_thread
            if not self.window.acquire(block=not on_net_thread, timeout=wait):
                if on_net_thread:
                    self.dropped_on_network_thread += 1
                    log.error("send window full on the network thread: dropped a message to %s",
                              topic)
                return Delivery(_unsent(), qos)
        # paho calls on_publish for a PUBACK while holding this re-entrant lock, so holding it
        # across publish() means a fast PUBACK cannot be handled before the mid is recorded,
        # and taking a lock of our own here instead would deadlock against on_publish.
        with self._acks_lock:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
            sent = Delivery(info, qos)
            # paho reports (on_publish) every message it accepted, a QoS>0 one kept for the
            # next connection (NO_CONN) too; a QoS 0 one it could not send it drops. paho
            # numbers QoS 0 messages without looking at the QoS>0 ones it still waits for: a
            # QoS 0 twin of one (65,535 messages later) must not take its place in the count.
            accepted = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
                took and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN)
            if accepted and self._awaiting.setdefault(info.mid, sent) is sent:
                self._windowed += took
            elif took:
                self.window.release()
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.error("publish to %s failed: %s", topic, paho.error_string(info.rc))
        return sent

    @property
    def unacknowledged(self) -> int:
        """QoS>0 messages handed to paho and not yet acknowledged by the broker."""
        with self._acks_lock:
            return self._windowed

    # --- subscribing -------------------------------------------------------------------------
    def _handle_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        if self._default_handler is None:
            log.debug("no handler for %s", msg.topic)
            return
        try:
            self._default_handler(msg.topic, bytes(msg.payload), bool(msg.retain))
        except Exception:
            log.exception("handler failed on a message to %s", msg.topic)

    def route(self, topic_filter: str, handler: Handler) -> None:
        """Call ``handler`` for messages matching ``topic_filter``; its exceptions are logged."""

        def dispatch(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
            try:
                handler(msg.topic, bytes(msg.payload), bool(msg.retain))
            except Exception:
                log.exception("handler for %s failed on a message to %s", topic_filter, msg.topic)

        self._client.message_callback_add(topic_filter, dispatch)

    # --- paho callbacks (network thread) -------------------------------------------------------
    def _handle_pre_connect(self, _c: paho.Client, _u: Any) -> None:
        """paho has just dropped the QoS 0 packets the last connection had not written (and
        cannot queue new ones before it connects): they will never be acknowledged."""
        with self._acks_lock:
            lost = [mid for mid, sent in self._awaiting.items() if sent.qos == 0]
            for mid in lost:
                del self._awaiting[mid]

    def _handle_connect(
        self, client: paho.Client, _u: Any, _flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._refused = True
            self._failed(f"the broker refused the connection: {reason}",
                         bad_credentials=reason.value in BAD_CREDENTIALS)
            return
        # Absent means 65535 (MQTT 5, 3.2.2.3.3).
        self.window.follow_broker(int(getattr(props, "ReceiveMaximum", 65535)))
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.subscriptions:
            self._ready()
            return
        rc, mid = client.subscribe([
            (topic_filter, SubscribeOptions(qos=qos, retainAsPublished=True))
            for topic_filter, qos in self.subscriptions
        ])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("subscribe failed: %s", paho.error_string(rc))
        self._pending_sub_mid = mid

    def _handle_subscribe(
        self, _c: paho.Client, _u: Any, mid: int, codes: list[ReasonCode], _props: Any
    ) -> None:
        if mid != self._pending_sub_mid:
            return
        for (topic_filter, _qos), code in zip(self.subscriptions, codes, strict=False):
            if code.is_failure:
                log.error("broker refused subscription %s: %s", topic_filter, code)
        self._ready()

    def _handle_connect_fail(self, _c: paho.Client, _u: Any) -> None:
        """paho calls this inside its ``except OSError`` around the connect: the exception
        being handled is why (refused, unreachable, a TLS handshake that failed)."""
        exc = sys.exc_info()[1]
        self._failed(f"cannot connect: {exc or 'unknown error'}",
                     tls_failed=isinstance(exc, ssl.SSLError))

    def _failed(self, why: str, *, bad_credentials: bool = False, tls_failed: bool = False) -> None:
        """One log line per reason: a retry that fails the same way again is not news."""
        if why == self.last_error:
            log.debug("%s: %s (again)", self.url, why)
            return
        self.last_error = why
        hint = ""
        if bad_credentials:
            hint = "; check MQTT_USERNAME and MQTT_PASSWORD (retrying less often)"
            if not self._auth_backoff:
                self._auth_backoff = True
                self._client.reconnect_delay_set(min_delay=RECONNECT_MIN_S,  # type: ignore[arg-type]
                                                 max_delay=AUTH_RETRY_MAX_S)  # type: ignore[arg-type]
        elif tls_failed:
            hint = ("; check MQTT_CA_FILE (the CA that signed the broker's certificate), "
                    "MQTT_CERT_FILE/MQTT_KEY_FILE, and that MQTT_PORT is the broker's TLS port")
        log.error("%s: %s%s", self.url, why, hint)

    def _ready(self) -> None:
        if self.last_error is not None:
            log.info("connected to %s (the last attempt had failed: %s)", self.url,
                     self.last_error)
        else:
            log.info("connected to %s", self.url)
        self.last_error = None
        if self._auth_backoff:
            self._auth_backoff = False
            self._client.reconnect_delay_set(min_delay=RECONNECT_MIN_S,  # type: ignore[arg-type]
                                             max_delay=RECONNECT_MAX_S)  # type: ignore[arg-type]
        self.generation += 1
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
        refused, self._refused = self._refused, False
        if self._stopping:
            log.info("disconnected from %s", self.url)
        elif not was and not refused:
            # In without a CONNACK: a TLS broker that wanted a client certificate drops the
            # connection only after the handshake (TLS 1.3), when it reads our CONNECT.
            self._failed(f"the broker closed the connection before accepting it ({reason})",
                         tls_failed=self._tls)
        elif was:
            log.warning("lost the broker (%s); reconnecting every %.1f s at most", reason,
                        RECONNECT_MAX_S)
            if self._on_lost is not None:
                try:
                    self._on_lost()
                except Exception:
                    log.exception("on_lost failed")

    def _handle_publish(
        self, _c: paho.Client, _u: Any, mid: int, reason: ReasonCode, _props: Any
    ) -> None:
        # paho holds this lock already for a PUBACK (re-entrant); for a QoS 0 message written
        # to the socket it does not, and waiting here lets publish() record the mid first.
        with self._acks_lock:
            sent = self._awaiting.pop(mid, None)
            if sent is None:
                return
            sent.acknowledged = not reason.is_failure
            if sent.qos > 0:
                self._windowed -= 1
                self.window.release()


def _set_tls(client: paho.Client, tls: Tls) -> None:
    """paho's TLS with our settings; a file that is missing or not a certificate or key is a
    ``ConfigError`` that names the setting."""
    try:
        client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                       cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"MQTT TLS: cannot use MQTT_CA_FILE={tls.ca_file} MQTT_CERT_FILE={tls.cert_file} "
            f"MQTT_KEY_FILE={tls.key_file}: {exc}") from exc
    if tls.insecure:
        log.warning("MQTT_TLS_INSECURE: the broker's certificate and host name are not checked")


def _unsent() -> paho.MQTTMessageInfo:
    """The info of a message that never reached paho."""
    info = paho.MQTTMessageInfo(0)
    info.rc = MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
    return info
