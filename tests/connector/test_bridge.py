"""The bridge's connection to the broker, against a real mosquitto: it reconnects and
republishes after the broker comes back (within about 2 s, whatever the outage lasted), two
bridges of one instance do not fight, and a stop never waits on an absent broker."""

from __future__ import annotations

import time
from pathlib import Path

from shared.models import ReadingObs
from shared.mqtt import RECONNECT_MAX_S
from tests.connector.conftest import Hub
from tests.helpers import Broker, Subscriber, retained, wait_for


def test_reconnects_and_republishes_after_the_broker_restarts(
        broker: Broker, hub: Hub, tmp_path: Path) -> None:
    bridge = hub.bridge(broker, tmp_path)
    root = hub.root
    hub.agg.ingest([ReadingObs(device_id="s1", ts=time.time(), values={"temperature": 20.5})])
    assert retained(broker.host, broker.port, f"{root}/devices/s1/state").json()[
        "temperature"] == 20.5
    broker.restart()  # persistence off: the broker forgets every retained message
    # The bridge reconnects by itself, says online again and republishes the states.
    assert retained(broker.host, broker.port, f"{root}/status", timeout=20).text == "online"
    assert retained(broker.host, broker.port, f"{root}/devices/s1/state",
                    timeout=20).json()["temperature"] == 20.5
    assert retained(broker.host, broker.port, f"{root}/devices/s1/availability").text == "online"
    bridge.stop()
    assert retained(broker.host, broker.port, f"{root}/status",
                    where=lambda m: m.text == "offline").text == "offline"


def test_reconnects_within_2_s_of_the_broker_coming_back_after_a_long_outage(
        broker: Broker, hub: Hub, tmp_path: Path) -> None:
    bridge = hub.bridge(broker, tmp_path)
    assert bridge.client.connected.wait(10)
    broker.stop()
    wait_for(lambda: not bridge.client.connected.is_set(), what="the bridge to notice")
    # Down long enough for an uncapped backoff to have grown well past 2 s (1, 2, 4, 8 s...).
    outage_end = time.monotonic() + 6 * RECONNECT_MAX_S
    while time.monotonic() < outage_end:
        assert not bridge.client.connected.is_set()
        time.sleep(0.2)
    broker.restart()  # same port; returns once it listens
    back = time.monotonic()
    wait_for(bridge.client.connected.is_set, timeout=10, what="the bridge to reconnect")
    assert time.monotonic() - back < 2.0
    assert retained(broker.host, broker.port, f"{hub.root}/status").text == "online"


def test_stopping_with_the_broker_down_does_not_wait_for_it(
        broker: Broker, hub: Hub, tmp_path: Path) -> None:
    bridge = hub.bridge(broker, tmp_path)
    assert bridge.client.connected.wait(10)
    for i in range(50):  # unacknowledged messages in flight when the broker goes
        hub.agg.ingest([ReadingObs(device_id="s1", ts=time.time() + i, values={"t": i})])
    broker.stop()
    wait_for(lambda: not bridge.client.connected.is_set(), what="the bridge to notice")
    began = time.monotonic()
    bridge.stop()
    assert time.monotonic() - began < 2.0


def test_two_bridges_of_one_instance_do_not_kick_each_other(
        broker: Broker, hub: Hub, tmp_path: Path) -> None:
    status = f"{hub.root}/status"
    sub = Subscriber(broker.host, broker.port).subscribe(status)
    first = hub.bridge(broker, tmp_path)
    second = hub.bridge(broker, tmp_path)
    try:
        assert first.client.client_id != second.client.client_id
        assert first.client.connected.wait(10) and second.client.connected.wait(10)
        wait_for(lambda: len(sub.on(status)) >= 2, what="each bridge announcing online once")
        online_count = len(sub.on(status))
        assert online_count == 2
        # A fight would show as a stream of reconnects (each one announces online again).
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert first.client.connected.is_set() and second.client.connected.is_set()
            time.sleep(0.1)
        assert len(sub.on(status)) == online_count
    finally:
        sub.close()
