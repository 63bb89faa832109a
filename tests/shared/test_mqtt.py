"""The paho wrapper against a real mosquitto: the send window honours the broker's Receive
Maximum (which paho ignores), and handlers cannot kill the network thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from paho.mqtt.enums import MQTTErrorCode

from shared.mqtt import MqttClient, SendWindow, Will
from tests.helpers import Broker, Subscriber, retained, start_broker, unique_base, wait_for


def test_the_window_follows_the_brokers_receive_maximum(tmp_path: Path) -> None:
    # mosquitto advertises max_inflight_messages to MQTT 5 clients as Receive Maximum.
    broker = start_broker(tmp_path, extra="max_inflight_messages 5\n")
    base = unique_base()
    sub = Subscriber(broker.host, broker.port).subscribe(f"{base}/#")
    client = MqttClient(host=broker.host, port=broker.port, client_id=f"{base}-pub")
    try:
        client.start()
        assert client.connected.wait(10)
        assert client.window.limit == 5
        for i in range(500):
            client.publish(f"{base}/m", str(i), qos=1)
        wait_for(lambda: len(sub.on(f"{base}/m")) == 500, what="all 500 messages")
        assert [m.text for m in sub.on(f"{base}/m")] == [str(i) for i in range(500)]
        assert client.window.peak <= 5
        wait_for(lambda: client.unacknowledged == 0, what="every message acknowledged")
    finally:
        client.stop()
        sub.close()
        broker.stop()


def test_window_blocks_at_the_limit_and_never_on_request() -> None:
    window = SendWindow(10)
    window.follow_broker(2)
    assert window.acquire() and window.acquire()
    assert not window.acquire(block=False)
    released = threading.Timer(0.05, window.release)
    released.start()
    assert window.acquire()  # waits for the release
    window.follow_broker(70_000)
    assert window.limit == 10  # never above our own ceiling


def test_a_failing_handler_does_not_stop_the_client(tmp_path: Path) -> None:
    broker = start_broker(tmp_path)
    base = unique_base()
    seen: list[str] = []

    def bad(_topic: str, payload: bytes, _retained: bool) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        seen.append(payload.decode())

    client = MqttClient(host=broker.host, port=broker.port, client_id=f"{base}-sub",
                        subscriptions=[(f"{base}/in", 1)],
                        will=Will(f"{base}/status", "offline"))
    client.route(f"{base}/in", bad)
    try:
        client.start()
        assert client.connected.wait(10)
        from tests.helpers import publish
        publish(broker.host, broker.port, f"{base}/in", b"boom")
        publish(broker.host, broker.port, f"{base}/in", b"after")
        wait_for(lambda: seen == ["after"], what="the next message handled")
    finally:
        client.stop()
        broker.stop()


def test_a_full_window_on_the_network_thread_drops_and_counts_never_a_thread(
        tmp_path: Path) -> None:
    # On paho's network thread no PUBACK can be read while a handler runs, so the window never
    # frees there: the client must neither block nor start a thread per message (a flood of
    # bad commands once made thousands).
    broker = start_broker(tmp_path, extra="max_inflight_messages 5\n")
    base = unique_base()
    threads: list[int] = []

    def handler(_topic: str, _payload: bytes, _retained: bool) -> None:
        before = threading.active_count()
        for i in range(50):
            client.publish(f"{base}/out", str(i), qos=1)
        threads.append(threading.active_count() - before)

    client = MqttClient(host=broker.host, port=broker.port, client_id=f"{base}-c",
                        subscriptions=[(f"{base}/in", 1)], on_message=handler)
    try:
        client.start()
        assert client.connected.wait(10)
        from tests.helpers import publish
        publish(broker.host, broker.port, f"{base}/in", b"go")
        wait_for(lambda: threads, what="the handler to run")
        assert threads == [0]
        assert client.dropped_on_network_thread == 45
        wait_for(lambda: client.unacknowledged == 0, what="the five sent acknowledged")
    finally:
        client.stop()
        broker.stop()


def test_stop_waits_for_nothing_when_the_broker_is_gone(tmp_path: Path) -> None:
    broker = start_broker(tmp_path)
    base = unique_base()
    client = MqttClient(host=broker.host, port=broker.port, client_id=f"{base}-c",
                        will=Will(f"{base}/status", "offline"))
    client.start()
    assert client.connected.wait(10)
    broker.stop()
    wait_for(lambda: not client.connected.is_set(), what="the client to notice")
    began = time.monotonic()
    client.stop(final=[(f"{base}/status", "offline", 1, True)])
    assert time.monotonic() - began < 1.0


@dataclass
class Connected:
    broker: Broker
    client: MqttClient
    base: str


@pytest.fixture
def connected(tmp_path: Path) -> Iterator[Connected]:
    """A client connected to a broker of its own (the test may stop and restart it)."""
    broker = start_broker(tmp_path)
    base = unique_base()
    client = MqttClient(host=broker.host, port=broker.port, client_id=f"{base}-c")
    client.start()
    try:
        assert client.connected.wait(10)
        yield Connected(broker, client, base)
    finally:
        client.stop()
        broker.stop()


def test_a_message_published_while_disconnected_is_acknowledged_after_the_reconnection(
        connected: Connected) -> None:
    # paho's own is_published raises for such a message even after its PUBACK (its rc stays
    # NO_CONN): the bridge's committed cursor depends on this answer.
    broker, client, base = connected.broker, connected.client, connected.base
    before = client.publish(f"{base}/m", "before", qos=1)
    wait_for(lambda: before.acknowledged, what="the message sent while connected")
    broker.stop()
    wait_for(lambda: not client.connected.is_set(), what="the client to notice")
    kept = client.publish(f"{base}/m", "kept", qos=1, retain=True)
    dropped = client.publish(f"{base}/m", "dropped", qos=0)  # paho keeps no QoS 0 offline
    assert kept.rc == MQTTErrorCode.MQTT_ERR_NO_CONN
    assert dropped.rc == MQTTErrorCode.MQTT_ERR_NO_CONN
    assert not kept.acknowledged and client.unacknowledged == 1
    broker.restart()
    assert client.connected.wait(10)
    wait_for(lambda: kept.acknowledged, what="the kept message acknowledged")
    assert client.unacknowledged == 0
    assert retained(broker.host, broker.port, f"{base}/m").text == "kept"
    assert not dropped.acknowledged


def test_a_qos0_message_is_acknowledged_once_written(connected: Connected) -> None:
    broker, client, base = connected.broker, connected.client, connected.base
    sub = Subscriber(broker.host, broker.port).subscribe(f"{base}/#")
    try:
        sent = [client.publish(f"{base}/q0", str(i), qos=0) for i in range(200)]
        wait_for(lambda: all(s.acknowledged for s in sent), what="every QoS 0 message written")
        wait_for(lambda: len(sub.on(f"{base}/q0")) == 200, what="all 200 received")
        assert client.unacknowledged == 0
    finally:
        sub.close()
