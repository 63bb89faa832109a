"""The bridge in-process against real parts: its own mosquitto (tests stop and restart it), a
real aggregator served over HTTP, and a real serial handler whose writable relay sits on a
pseudo-terminal with a board that never acknowledges a command (nobody reads the other end)."""

from __future__ import annotations

import os
import threading
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import BaseWSGIServer, make_server

from connector.bridge import Bridge
from services.serial_handler.app import create_app as serial_app
from services.serial_handler.core import SerialHandler
from services.state_aggregator.app import create_app as aggregator_app
from services.state_aggregator.core import Aggregator
from shared.instance import Instance, parse_instance
from shared.rest import RestClient
from shared.settings import Settings
from tests.helpers import Broker, free_port, start_broker, unique_base

SENSORS = ["s1", "s2", "s3"]


def make_instance(relay_port: str) -> Instance:
    # HTTP sensors that nobody polls (no http handler runs): their readings are ingested into
    # the aggregator by the tests, so every state on MQTT is one a test made.
    sensors: list[dict[str, Any]] = [
        {"sensor_id": s, "sensor_type": "climate", "interval": 600,
         "source": {"type": "http", "url": f"http://127.0.0.1:9/{s}"}}
        for s in SENSORS]
    sensors.append({"sensor_id": "relay", "sensor_type": "relay", "interval": 600,
                    "source": {"type": "serial", "port": relay_port, "writable": True}})
    return parse_instance({
        "instance_id": "br", "friendly_name": "bridge test",
        "config": {"sensors": sensors},
        "groups": [{"group_id": "climate", "devices": ["s1", "s2"]}],
    })


def serve(app: Any) -> BaseWSGIServer:
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Hub:
    """The aggregator (readings are ingested into it directly) and the relay's serial handler."""

    agg: Aggregator
    url: str
    instance: Instance
    base: str = field(default_factory=unique_base)
    bridges: list[Bridge] = field(default_factory=list)

    @property
    def root(self) -> str:
        return f"{self.base}/v1/instances/br"

    def bridge(self, broker: Broker, tmp_path: Path, *, start: bool = True,
               **overrides: Any) -> Bridge:
        # One DATA_DIR per test, kept across the test's bridges as across restarts (the
        # discovery ledger lives there), never the checkout's ./data.
        overrides.setdefault("data_dir", tmp_path / "data")
        overrides.setdefault("mqtt_port", broker.port)  # a test may pick the TLS listener's
        settings = Settings(instance_name="br", mqtt_host=broker.host,
                            mqtt_base_topic=self.base, state_aggregator_url=self.url,
                            hub_run_dir=tmp_path / f"run{len(self.bridges)}", mqtt_keepalive=5,
                            **overrides)
        bridge = Bridge(settings, self.instance)
        self.bridges.append(bridge)
        if start:
            bridge.start()
        return bridge


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = start_broker(tmp_path)  # its own broker: tests stop and restart it
    yield b
    b.stop()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    master, slave = os.openpty()
    tty.setraw(slave)
    link = tmp_path / "relay-tty"
    os.symlink(os.ttyname(slave), link)
    instance = make_instance(str(link))
    agg = Aggregator(instance, handlers={}, cache_ttl=10, poll_interval=5)

    def emit(obs: Any) -> None:
        agg.ingest([obs], source="serial-handler")

    handler = SerialHandler(instance, emit)
    serial_server = serve(serial_app(handler))
    agg.handlers["serial"] = RestClient(f"http://127.0.0.1:{serial_server.server_port}",
                                        name="serial-handler")
    agg_server = serve(aggregator_app(agg))
    hub = Hub(agg, f"http://127.0.0.1:{agg_server.server_port}", instance)
    handler.start()
    yield hub
    for bridge in hub.bridges:
        bridge.stop()
    handler.stop()
    agg.stop()
    agg_server.shutdown()
    serial_server.shutdown()
    os.close(master)
    os.close(slave)
