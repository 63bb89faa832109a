"""A restarted aggregator remembers the devices registered at run time and takes the handlers'
last readings, so probes keep being accepted and nothing flaps offline."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.serving import make_server

from services.state_aggregator.core import Aggregator
from services.state_aggregator.persist import RegistryStore
from shared.models import ReadingObs, RegisterDevice
from shared.rest import RestClient
from tests.helpers import free_port
from tests.services.state_aggregator.test_aggregator import INSTANCE


def make(store: RegistryStore | None = None, handlers: dict[str, RestClient] | None = None) -> Aggregator:
    return Aggregator(INSTANCE, handlers=handlers or {}, cache_ttl=10, poll_interval=5, store=store)


def test_registered_devices_survive_a_restart(tmp_path: Path) -> None:
    store = RegistryStore(tmp_path / "registry.json")
    first = make(store)
    first.register(RegisterDevice(device_id="probe_1", source="probe", interval=10), handler="http")
    saved = (tmp_path / "registry.json").stat().st_mtime_ns
    second = make(RegistryStore(tmp_path / "registry.json"))
    assert second.devices["probe_1"].source == "probe"
    assert (tmp_path / "registry.json").stat().st_mtime_ns == saved  # loading writes nothing
    result = second.ingest([ReadingObs(device_id="probe_1", ts=time.time(), values={"t": 21})])
    assert result == {"accepted": 1, "rejected": 0, "durable": False}


def test_a_damaged_registry_file_is_set_aside_not_fatal(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "registry.json"
    make(RegistryStore(path)).register(RegisterDevice(device_id="probe_1", source="probe"),
                                       handler="http")
    assert "probe_1" in make(RegistryStore(path)).devices  # the whole file brings it back
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # a write cut short
    agg = make(RegistryStore(path))
    assert "probe_1" not in agg.devices and "temp" in agg.devices  # started, without it
    assert (tmp_path / "registry.broken").read_bytes() == whole[: len(whole) // 2]
    assert not path.exists()
    assert "is damaged" in caplog.text


@pytest.fixture
def handler_url() -> Iterator[str]:
    """A real HTTP server that answers /sensors as a handler older than ``/readings`` does (a
    404 for that route): the warm-up takes every sensor's view at once from it."""
    app = Flask("fake-handler")
    now = time.time()

    @app.get("/sensors")
    def sensors() -> dict[str, object]:
        return {"sensors": [
            {"sensor_id": "temp", "reading": {"kind": "reading", "device_id": "temp", "ts": now,
                                              "values": {"temperature": 21.5}}},
            {"sensor_id": "relay", "reading": None},
        ]}

    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_warm_up_takes_the_handlers_last_readings(handler_url: str) -> None:
    agg = make(handlers={"serial": RestClient(handler_url, name="serial-handler")})
    agg.warm_up(deadline_s=5)
    assert agg.devices["temp"].values == {"temperature": 21.5}
    assert agg.devices["temp"].online(time.time())
    assert agg.devices["relay"].last_seen is None


def test_warm_up_gives_up_on_a_dead_handler_at_the_deadline() -> None:
    agg = make(handlers={"serial": RestClient("http://127.0.0.1:9", name="serial-handler",
                                              timeout=0.2)})
    started = time.monotonic()
    agg.warm_up(deadline_s=0.5)
    assert time.monotonic() - started < 5
    assert agg.devices["temp"].last_seen is None
