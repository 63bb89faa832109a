"""The paho wrapper against a real mosquitto: the send window honours the broker's Receive
Maximum (which paho ignores), and handlers cannot kill the network thread."""

from __future__ import annotations

import threading
from pathlib import Path

from shared.mqtt import MqttClient, SendWindow, Will
from tests.helpers import Subscriber, start_broker, unique_base, wait_for


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
