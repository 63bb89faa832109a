"""The discovery feature in the real bridge, against a real mosquitto and a real aggregator served
over HTTP: what a subscriber to the discovery prefix finds retained, across restarts with a
changed instance file and mode, Home Assistant coming online, and a device added at run time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from werkzeug.serving import make_server

from connector.bridge import Bridge
from connector.features import discovery as discovery_module
from connector.features.discovery import CHECK_EVERY_S, DiscoveryFeature
from connector.ha.builder import DeviceView
from services.state_aggregator.app import create_app
from services.state_aggregator.core import Aggregator
from shared.instance import Instance, parse_instance
from shared.models import ReadingObs, RegisterDevice
from shared.rest import RestClient
from shared.settings import Settings
from tests.connector.ha import ha_rules
from tests.helpers import Broker, Subscriber, free_port, publish, unique_base, wait_for


def instance(*sensors: str) -> Instance:
    return parse_instance({
        "instance_id": "ha", "friendly_name": "HA test",
        "config": {"sensors": [
            {"sensor_id": s, "sensor_type": "climate",
             "properties": {"temperature": {"unit": "°C", "device_class": "temperature"}},
             "source": {"type": "serial", "port": f"sim://{s}?ids={s}"}} for s in sensors]},
    })


@dataclass
class Run:
    """One life of the instance: an aggregator for an instance file and a bridge in front."""

    agg: Aggregator
    bridge: Bridge
    server: Any

    @property
    def discovery(self) -> DiscoveryFeature:
        return next(f for f in self.bridge.features if isinstance(f, DiscoveryFeature))

    def stop(self) -> None:
        self.bridge.stop()
        self.agg.stop()
        self.server.shutdown()


@pytest.fixture
def ids() -> tuple[str, str]:
    """A base topic and a discovery prefix no other test uses."""
    return unique_base(), f"ha{unique_base()}"


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.stop()


def start(runs: list[Run], mosquitto: Broker, ids: tuple[str, str], data: Path, inst: Instance,
          *, mode: str = "entity") -> Run:
    dead = RestClient("http://127.0.0.1:9", name="serial-handler", timeout=0.2)
    agg = Aggregator(inst, handlers={"serial": dead}, cache_ttl=10, poll_interval=5)
    server = make_server("127.0.0.1", free_port(), create_app(agg), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = Settings(instance_name="ha", mqtt_host=mosquitto.host, mqtt_port=mosquitto.port,
                        mqtt_base_topic=ids[0], state_aggregator_url=f"http://127.0.0.1:{server.server_port}",
                        hub_run_dir=data / "run", data_dir=data, ha_discovery_prefix=ids[1],
                        ha_discovery_mode=mode)
    bridge = Bridge(settings, inst)
    bridge.start()
    run = Run(agg, bridge, server)
    runs.append(run)
    return run


def stop(runs: list[Run], run: Run) -> None:
    runs.remove(run)
    run.stop()


def retained_under(mosquitto: Broker, topic_filter: str) -> dict[str, bytes]:
    """Every non-empty retained message under ``topic_filter``, as a new subscriber (Home
    Assistant starting) receives them."""
    sub = Subscriber(mosquitto.host, mosquitto.port).subscribe(topic_filter)
    try:
        # Retained messages follow the SUBACK at once; wait until a poll adds nothing new.
        seen = -1
        while len(sub.messages) != seen:
            seen = len(sub.messages)
            time.sleep(0.2)
        return {m.topic: m.payload for m in sub.messages if m.retain and m.payload}
    finally:
        sub.close()


def retained_configs(mosquitto: Broker, prefix: str) -> dict[str, dict[str, Any]]:
    return {t: orjson.loads(p) for t, p in retained_under(mosquitto, f"{prefix}/#").items()}


def wait_configs(mosquitto: Broker, prefix: str, expect: set[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}

    def exact() -> bool:
        nonlocal found
        found = retained_configs(mosquitto, prefix)
        return set(found) == expect

    try:
        wait_for(exact, timeout=20, interval=0.1, what="the retained discovery configs")
    except AssertionError:
        raise AssertionError(f"retained {sorted(found)}\nexpected {sorted(expect)}") from None
    return found


def valid(found: dict[str, dict[str, Any]], prefix: str, root: str) -> None:
    for topic, payload in found.items():
        for component, config in ha_rules.entities(topic, payload, prefix):
            assert not ha_rules.entity_problems(component, config, root=root), (topic, payload)


def entity_topics(prefix: str, *devices: str, extra: tuple[str, ...] = ()) -> set[str]:
    hub = {f"{prefix}/binary_sensor/ha/status/config"} | {
        f"{prefix}/sensor/ha/{k}/config" for k in ("health", "devices_online", "outbox_backlog",
                                                   "started")}
    per_device = {f"{prefix}/sensor/ha_{d}/{k}/config" for d in devices
                  for k in ("temperature", "last_error")}
    return hub | per_device | set(extra)


def reading(device: str, **values: Any) -> ReadingObs:
    return ReadingObs(device_id=device, ts=time.time(), values=values)


def test_a_restart_with_a_changed_instance_file_leaves_no_ghosts(
        mosquitto: Broker, ids: tuple[str, str], runs: list[Run], tmp_path: Path) -> None:
    base, prefix = ids
    root = f"{base}/v1/instances/ha"
    first = start(runs, mosquitto, ids, tmp_path, instance("s1", "s2"))
    first.agg.ingest([reading("s1", temperature=20.5, humidity=40.0),
                      reading("s2", temperature=19.0)])
    found = wait_configs(mosquitto, prefix, entity_topics(
        prefix, "s1", "s2", extra=(f"{prefix}/sensor/ha_s1/humidity/config",)))
    valid(found, prefix, root)
    assert found[f"{prefix}/sensor/ha_s1/temperature/config"]["state_topic"] == \
        f"{root}/devices/s1/state"
    wait_for(lambda: set(retained_under(mosquitto, f"{root}/devices/s2/#")) >= {
        f"{root}/devices/s2/state", f"{root}/devices/s2/availability",
        f"{root}/devices/s2/state/temperature"}, what="s2's retained device topics")
    stop(runs, first)

    # s2 is gone from the file and s1 no longer reports humidity: both vanish from the broker,
    # s2's own state, availability and property topics too.
    second = start(runs, mosquitto, ids, tmp_path, instance("s1"))
    second.agg.ingest([reading("s1", temperature=21.0)])
    valid(wait_configs(mosquitto, prefix, entity_topics(prefix, "s1")), prefix, root)
    wait_for(lambda: not retained_under(mosquitto, f"{root}/devices/s2/#"), timeout=10,
             what="s2's retained device topics cleared")
    assert f"{root}/devices/s1/state" in retained_under(mosquitto, f"{root}/devices/s1/#")
    ledger = (tmp_path / "ha_discovery.json").read_text()
    assert "ha_s2" not in ledger and "ha_s1/temperature" in ledger
    stop(runs, second)

    # Device discovery replaces the entity configs; off clears everything it published.
    third = start(runs, mosquitto, ids, tmp_path, instance("s1"), mode="device")
    third.agg.ingest([reading("s1", temperature=21.0)])
    found = wait_configs(mosquitto, prefix, {f"{prefix}/device/ha/config",
                                             f"{prefix}/device/ha_s1/config"})
    valid(found, prefix, root)
    assert set(found[f"{prefix}/device/ha_s1/config"]["components"]) == {"temperature",
                                                                           "last_error"}
    stop(runs, third)
    off = start(runs, mosquitto, ids, tmp_path, instance("s1"), mode="off")
    wait_configs(mosquitto, prefix, set())
    assert off.discovery.rounds >= 1


@pytest.mark.parametrize("pack_after", [discovery_module.PACK_AFTER, 1])
def test_home_assistant_online_and_a_new_device_are_answered(
        mosquitto: Broker, ids: tuple[str, str], runs: list[Run], tmp_path: Path,
        pack_after: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also with every round packing what it keeps (``Ledger.pack``, after rounds of at least
    ``PACK_AFTER`` configs): the rounds after it plan from the packed ledger and fingerprints."""
    monkeypatch.setattr(discovery_module, "PACK_AFTER", pack_after)
    base, prefix = ids
    run = start(runs, mosquitto, ids, tmp_path, instance("s1"))
    run.agg.ingest([reading("s1", temperature=20.5)])
    wait_configs(mosquitto, prefix, entity_topics(prefix, "s1"))
    sub = Subscriber(mosquitto.host, mosquitto.port).subscribe(f"{prefix}/+/+/+/config")
    try:
        # Home Assistant restarted: it says online (not retained) and gets every config again.
        publish(mosquitto.host, mosquitto.port, f"{prefix}/status", "online")
        expect = entity_topics(prefix, "s1")
        wait_for(lambda: {m.topic for m in sub.messages} >= expect, timeout=15,
                 what="every config again after Home Assistant's online")
        # A probe registered at run time appears with its properties and its reboot event.
        run.agg.register(RegisterDevice(device_id="p1", source="probe", interval=10,
                                        units={"temperature": "°C"}))
        run.agg.ingest([reading("p1", temperature=22.0, rssi=-60)])
        event = f"{prefix}/event/ha_p1/event/config"
        config = sub.wait(event, timeout=15).json()
        assert config["event_types"] == ["probe_rebooted"]
        found = wait_configs(mosquitto, prefix, expect | {
            event, f"{prefix}/sensor/ha_p1/temperature/config", f"{prefix}/sensor/ha_p1/rssi/config",
            f"{prefix}/sensor/ha_p1/last_error/config"})
        valid(found, prefix, f"{base}/v1/instances/ha")
        # meta/request/rebirth republishes discovery with everything else.
        sub.clear()
        publish(mosquitto.host, mosquitto.port, f"{base}/v1/instances/ha/meta/request/rebirth",
                b"{}")
        wait_for(lambda: {m.topic for m in sub.messages} >= set(found), timeout=15,
                 what="every config again after a rebirth")
    finally:
        sub.close()
    assert (run.discovery.packs > 0) == (pack_after == 1)  # few configs: no pack by default


def test_a_republish_due_before_the_mirror_is_synced_waits_instead_of_spinning(
        mosquitto: Broker, ids: tuple[str, str], tmp_path: Path) -> None:
    """A restarted bridge connects, then replays its backlog before the snapshot syncs the
    mirror. The republish that the connection asked for is due all that time and cannot start:
    the discovery thread must sleep until it can, not wait 0 s again and again (that busy loop
    held the GIL from the publisher: the replay ran at a tenth of its speed)."""
    settings = Settings(instance_name="ha", mqtt_host=mosquitto.host, mqtt_port=mosquitto.port,
                        mqtt_base_topic=ids[0], state_aggregator_url="http://127.0.0.1:9",
                        hub_run_dir=tmp_path / "run", data_dir=tmp_path,
                        ha_discovery_prefix=ids[1])
    bridge = Bridge(settings, instance("s1"))  # not started: nothing connects or syncs
    discovery = next(f for f in bridge.features if isinstance(f, DiscoveryFeature))
    assert discovery.next_wait() == CHECK_EVERY_S  # nothing due
    discovery.on_connect()  # a full republish, due now
    assert not bridge.ctx.mirror.synced
    assert discovery.next_wait() == CHECK_EVERY_S
    bridge.ctx.mirror.synced = True  # the snapshot is loaded: the republish goes at once
    assert discovery.next_wait() == 0.0


def test_a_round_holds_the_views_of_one_chunk_of_devices_at_a_time(
        mosquitto: Broker, ids: tuple[str, str], runs: list[Run], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pass of a round builds the devices' views (and their configs) a chunk at a time and
    lets go of them before the next: the views of 10,000 devices at once, with the signature's
    JSON of them all, were a peak that the bridge kept. Every device is discovered all the
    same."""
    live, most, made = 0, 0, 0

    class Counted(DeviceView):
        __slots__ = ()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            nonlocal live, most, made
            live, made = live + 1, made + 1
            most = max(most, live)

        def __del__(self) -> None:
            nonlocal live
            live -= 1

    chunk = 10
    monkeypatch.setattr(discovery_module, "DeviceView", Counted)
    monkeypatch.setattr(discovery_module, "DEVICES_PER_CHUNK", chunk)
    base, prefix = ids
    sensors = [f"s{i}" for i in range(6 * chunk + 3)]
    run = start(runs, mosquitto, ids, tmp_path, instance(*sensors))
    run.agg.ingest([reading(s, temperature=20.0 + i % 5) for i, s in enumerate(sensors)])
    valid(wait_configs(mosquitto, prefix, entity_topics(prefix, *sensors)), prefix,
          f"{base}/v1/instances/ha")
    assert run.discovery.rounds >= 1 and made >= len(sensors)
    assert most <= chunk, f"{most} views of {len(sensors)} devices at once"
