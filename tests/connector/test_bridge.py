"""The bridge in-process against a real mosquitto and a real aggregator served over HTTP:
reconnects after the broker goes away, and two bridges of one instance do not fight."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from connector.bridge import Bridge
from services.state_aggregator.app import create_app
from services.state_aggregator.core import Aggregator
from shared.instance import Instance, parse_instance
from shared.models import ReadingObs
from shared.rest import RestClient
from shared.settings import Settings
from tests.helpers import (
    Broker,
    Subscriber,
    free_port,
    retained,
    start_broker,
    unique_base,
    wait_for,
)

INSTANCE: Instance = parse_instance({
    "instance_id": "br", "friendly_name": "bridge test",
    "config": {"sensors": [{"sensor_id": "s1", "sensor_type": "climate",
                            "source": {"type": "serial", "port": "sim://a?ids=s1"}}]},
})


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = start_broker(tmp_path)  # its own broker: this test stops and restarts it
    yield b
    b.stop()


@pytest.fixture
def aggregator() -> Iterator[tuple[Aggregator, str]]:
    dead = RestClient("http://127.0.0.1:9", name="serial-handler", timeout=0.2)
    agg = Aggregator(INSTANCE, handlers={"serial": dead}, cache_ttl=10, poll_interval=5)
    server = make_server("127.0.0.1", free_port(), create_app(agg), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield agg, f"http://127.0.0.1:{server.server_port}"
    agg.stop()
    server.shutdown()


def make_bridge(broker: Broker, url: str, base: str, tmp_path: Path) -> Bridge:
    settings = Settings(instance_name="br", mqtt_host=broker.host, mqtt_port=broker.port,
                        mqtt_base_topic=base, state_aggregator_url=url,
                        hub_run_dir=tmp_path / "run", mqtt_keepalive=5)
    bridge = Bridge(settings, INSTANCE)
    bridge.start()
    return bridge


def test_reconnects_and_republishes_after_the_broker_restarts(
        broker: Broker, aggregator: tuple[Aggregator, str], tmp_path: Path) -> None:
    agg, url = aggregator
    base = unique_base()
    root = f"{base}/v1/instances/br"
    bridge = make_bridge(broker, url, base, tmp_path)
    try:
        agg.ingest([ReadingObs(device_id="s1", ts=time.time(), values={"temperature": 20.5})])
        assert retained(broker.host, broker.port, f"{root}/devices/s1/state").json()[
            "temperature"] == 20.5
        broker.restart()  # persistence off: the broker forgets every retained message
        # The bridge reconnects by itself, says online again and republishes the states.
        assert retained(broker.host, broker.port, f"{root}/status", timeout=20).text == "online"
        assert retained(broker.host, broker.port, f"{root}/devices/s1/state",
                        timeout=20).json()["temperature"] == 20.5
        assert retained(broker.host, broker.port, f"{root}/devices/s1/availability").text == "online"
    finally:
        bridge.stop()
    assert retained(broker.host, broker.port, f"{root}/status",
                    where=lambda m: m.text == "offline").text == "offline"


def test_two_bridges_of_one_instance_do_not_kick_each_other(
        broker: Broker, aggregator: tuple[Aggregator, str], tmp_path: Path) -> None:
    _, url = aggregator
    base = unique_base()
    sub = Subscriber(broker.host, broker.port).subscribe(f"{base}/v1/instances/br/status")
    first = make_bridge(broker, url, base, tmp_path / "a")
    second = make_bridge(broker, url, base, tmp_path / "b")
    try:
        assert first.client.client_id != second.client.client_id
        assert first.client.connected.wait(10) and second.client.connected.wait(10)
        wait_for(lambda: len(sub.on(f"{base}/v1/instances/br/status")) >= 2,
                 what="each bridge announcing online once")
        online_count = len(sub.on(f"{base}/v1/instances/br/status"))
        assert online_count == 2
        # A fight would show as a stream of reconnects (each one announces online again).
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert first.client.connected.is_set() and second.client.connected.is_set()
            time.sleep(0.1)
        assert len(sub.on(f"{base}/v1/instances/br/status")) == online_count
    finally:
        first.stop()
        second.stop()
        sub.close()
