"""Home Assistant discovery end to end: the demo instance under the real supervisord, a real
subscriber to the discovery prefix. Every payload follows Home Assistant's field rules, its
templates render the instance's real retained state, a switch's command really switches the
relay, and HA_DISCOVERY_MODE=off publishes nothing. With ``HA_CORE_HASS`` set, a real Home Assistant
Core accepts every entity (opt-in: its virtualenv is 400 MB and a run takes about 2 minutes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.demo_sensors.__main__ import make_server
from tests.conftest import ROOT
from tests.connector.ha import ha_rules
from tests.e2e.conftest import Instance, instance_env, start_supervisord, stop_supervisord
from tests.helpers import (
    Broker,
    Received,
    Subscriber,
    free_port,
    publish,
    retained,
    unique_base,
    wait_for,
)

pytestmark = pytest.mark.e2e

DEVICES = ("temp_living_room", "temp_bedroom", "heater_relay", "motion_hallway", "hub_system")
# What Home Assistant must get for the demo devices: (component, node, key) -> device class
EXPECTED = {
    ("sensor", "demo_temp_living_room", "temperature"): "temperature",
    ("sensor", "demo_temp_living_room", "humidity"): "humidity",
    ("sensor", "demo_temp_bedroom", "temperature"): "temperature",
    ("switch", "demo_heater_relay", "state"): None,
    ("binary_sensor", "demo_motion_hallway", "motion"): "motion",
    ("sensor", "demo_motion_hallway", "illuminance"): "illuminance",
    ("sensor", "demo_motion_hallway", "battery"): "battery",
    ("event", "demo_motion_hallway", "event"): None,
    ("sensor", "demo_hub_system", "disk_used"): "data_size",
    ("binary_sensor", "demo", "status"): "connectivity",
    ("sensor", "demo", "health"): "enum",
}


def start_demo(mosquitto: Broker, tmp: Path, **extra: str) -> tuple[Instance, Any]:
    sensors = make_server("127.0.0.1", free_port())
    threading.Thread(target=sensors.serve_forever, daemon=True).start()
    instances = tmp / "instances"
    instances.mkdir()
    shutil.copy(ROOT / "instances" / "demo.json", instances)
    env = instance_env(mosquitto, tmp, instances, "demo")
    env.update(DEMO_SENSORS_PORT=str(sensors.server_address[1]), **extra)
    proc, output = start_supervisord(env)
    inst = Instance(env, f"{env['MQTT_BASE_TOPIC']}/v1/instances/demo", proc, output)
    return inst, sensors


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"ha{unique_base()}"


@pytest.fixture(scope="module")
def discovered(mosquitto: Broker, prefix: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[Instance, Subscriber]]:
    sub = Subscriber(mosquitto.host, mosquitto.port).subscribe(f"{prefix}/#")
    inst, sensors = start_demo(mosquitto, tmp_path_factory.mktemp("ha-demo"),
                               HA_DISCOVERY_PREFIX=prefix)
    try:
        yield inst, sub
    finally:
        stop_supervisord(inst.proc)
        sensors.shutdown()
        sub.close()


def configs(sub: Subscriber) -> dict[str, dict[str, Any]]:
    with sub.lock:
        latest = {m.topic: m for m in sub.messages}
    return {t: m.json() for t, m in latest.items() if m.payload and t.endswith("/config")}


def test_every_device_is_discovered_with_payloads_home_assistant_accepts(
        discovered: tuple[Instance, Subscriber], prefix: str) -> None:
    inst, sub = discovered
    wanted = {f"{prefix}/{c}/{n}/{k}/config" for c, n, k in EXPECTED}
    try:
        found = wait_for(lambda: (f := configs(sub)) and set(f) >= wanted and f, timeout=60,
                         what="the demo's discovery configs")
    except AssertionError:
        raise AssertionError(f"got {sorted(configs(sub))}\n{inst.log()}") from None
    unique: list[str] = []
    for topic, payload in found.items():
        for component, config in ha_rules.entities(topic, payload, prefix):
            problems = ha_rules.entity_problems(component, config, root=inst.root_topic)
            assert not problems, (topic, problems)
            unique.append(config["unique_id"])
    assert len(unique) == len(set(unique))
    for (component, node, key), device_class in EXPECTED.items():
        config = found[f"{prefix}/{component}/{node}/{key}/config"]
        assert config.get("device_class") == device_class, (node, key, config)
        if node != "demo":
            device = node.removeprefix("demo_")
            assert config["device"]["identifiers"] == [node]
            assert config["device"]["via_device"] == "sensor-hub_demo"
            assert [a["topic"] for a in config["availability"]][-1] in (
                f"{inst.root_topic}/status", f"{inst.root_topic}/devices/{device}/availability")
    nodes = {topic.split("/")[-3] for topic in found}
    assert nodes == {"demo", *(f"demo_{d}" for d in DEVICES)}


def test_templates_render_the_real_state(mosquitto: Broker,
                                         discovered: tuple[Instance, Subscriber],
                                         prefix: str) -> None:
    inst, sub = discovered
    checked = 0
    for (component, node, key) in EXPECTED:
        if node == "demo" or component == "event":
            continue
        config = configs(sub)[f"{prefix}/{component}/{node}/{key}/config"]
        def has_key(m: Received, k: str = key) -> bool:
            return k in m.json()

        state = retained(mosquitto.host, mosquitto.port, config["state_topic"], where=has_key,
                         timeout=30)
        rendered = ha_rules.render_value(config["value_template"], state.payload)
        value = state.json()[key]
        if component in ("binary_sensor", "switch"):
            on = config.get("state_on", config.get("payload_on"))
            off = config.get("state_off", config.get("payload_off"))
            assert rendered in (on, off), (key, rendered)
        else:
            assert float(rendered) == pytest.approx(float(value)), (key, rendered, value)
        checked += 1
    health = retained(mosquitto.host, mosquitto.port, f"{inst.root_topic}/meta/health", timeout=30)
    hub = configs(sub)[f"{prefix}/sensor/demo/health/config"]
    assert ha_rules.render_value(hub["value_template"], health.payload) in hub["options"]
    assert checked >= 7


def test_the_relay_switch_command_switches_the_relay(
        mosquitto: Broker, discovered: tuple[Instance, Subscriber], prefix: str) -> None:
    _inst, sub = discovered
    switch = configs(sub)[f"{prefix}/switch/demo_heater_relay/state/config"]
    for payload, expect in ((switch["payload_on"], switch["state_on"]),
                            (switch["payload_off"], switch["state_off"])):
        # What Home Assistant sends when the user flips the switch.
        publish(mosquitto.host, mosquitto.port, switch["command_topic"], payload)
        def shows(m: Received, e: str = expect) -> bool:
            return bool(ha_rules.render_value(switch["value_template"], m.payload) == e)

        state = retained(mosquitto.host, mosquitto.port, switch["state_topic"], timeout=20,
                         where=shows)
        assert state.json()["state"] == expect.lower()


def test_mode_off_publishes_no_discovery(mosquitto: Broker,
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    prefix = f"ha{unique_base()}"
    sub = Subscriber(mosquitto.host, mosquitto.port).subscribe(f"{prefix}/#")
    inst, sensors = start_demo(mosquitto, tmp_path_factory.mktemp("ha-off"),
                               HA_DISCOVERY_PREFIX=prefix, HA_DISCOVERY_MODE="off")
    states = Subscriber(mosquitto.host, mosquitto.port).subscribe(
        f"{inst.root_topic}/devices/+/state")
    try:
        # By the time every device has published a state, a discovery round (which runs on
        # connect, before the states) would have published.
        wait_for(lambda: {m.topic.split("/")[-2] for m in states.messages} >= set(DEVICES),
                 timeout=60, what="a state of every demo device")
        assert sub.messages == []
    finally:
        stop_supervisord(inst.proc)
        sensors.shutdown()
        states.close()
        sub.close()


# ``pip install homeassistant==2024.3.3 paho-mqtt==1.6.1`` in a virtualenv of its own (2024.3 is
# the newest release that runs on Python 3.11), then HA_CORE_HASS=<that venv>/bin/hass.
HASS = os.environ.get("HA_CORE_HASS")
HA_ENTITIES = {  # entity_id -> (unit, device class) as Home Assistant must report them
    "sensor.demo_temp_living_room_temperature": ("°C", "temperature"),
    "sensor.demo_temp_bedroom_humidity": ("%", "humidity"),
    "sensor.demo_motion_hallway_illuminance": ("lx", "illuminance"),
    "sensor.demo_motion_hallway_battery": ("%", "battery"),
    "sensor.demo_hub_system_disk_used": ("B", "data_size"),
    "binary_sensor.demo_motion_hallway_motion": (None, "motion"),
    "switch.demo_heater_relay_state": (None, None),
    "binary_sensor.sensor_hub_demo_status": (None, "connectivity"),
    "sensor.sensor_hub_demo_health": (None, "enum"),
    "sensor.sensor_hub_demo_started": (None, "timestamp"),
}


def ha_config(cfg: Path, broker: Broker, prefix: str, stream: str) -> None:
    """A Home Assistant configuration: the MQTT integration on the test broker (a config entry,
    as the UI would write it), and mqtt_statestream, which publishes every entity's state and
    attributes back to MQTT where the test reads them."""
    (cfg / ".storage").mkdir(parents=True)
    (cfg / "configuration.yaml").write_text(
        "homeassistant:\n  name: test\n  time_zone: UTC\n  unit_system: metric\n"
        "  latitude: 0\n  longitude: 0\n  elevation: 0\n"
        f"mqtt_statestream:\n  base_topic: {stream}\n  publish_attributes: true\n"
        "logger:\n  default: warning\n")
    data = {"broker": broker.host, "port": broker.port, "discovery": True,
            "discovery_prefix": prefix,
            "birth_message": {"topic": f"{prefix}/status", "payload": "online", "qos": 0,
                              "retain": False}}
    entry = {"entry_id": uuid.uuid4().hex, "version": 1, "minor_version": 1, "domain": "mqtt",
             "title": "test broker", "data": data, "options": {}, "source": "user",
             "pref_disable_new_entities": False, "pref_disable_polling": False,
             "unique_id": None, "disabled_by": None}
    (cfg / ".storage" / "core.config_entries").write_text(json.dumps(
        {"version": 1, "minor_version": 1, "key": "core.config_entries",
         "data": {"entries": [entry]}}))


@pytest.mark.skipif(not HASS, reason="HA_CORE_HASS (a Home Assistant Core 'hass') is not set")
def test_a_real_home_assistant_creates_every_entity(
        mosquitto: Broker, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert HASS is not None
    prefix, stream = f"ha{unique_base()}", f"st{unique_base()}"
    tmp = tmp_path_factory.mktemp("ha-core")
    ha_config(tmp / "config", mosquitto, prefix, stream)
    states = Subscriber(mosquitto.host, mosquitto.port).subscribe(f"{stream}/#")
    inst, sensors = start_demo(mosquitto, tmp, HA_DISCOVERY_PREFIX=prefix)
    log = (tmp / "hass.log").open("w")
    hass = subprocess.Popen([HASS, "-c", str(tmp / "config"), "--skip-pip"], stdout=log,
                            stderr=subprocess.STDOUT)

    def attr(entity_id: str, name: str) -> str | None:
        found = states.last(f"{stream}/{entity_id.replace('.', '/')}/{name}")
        return found.text if found else None

    try:
        wait_for(lambda: all(attr(e, "state") not in (None, "unknown", "unavailable")
                             for e in HA_ENTITIES), timeout=300, interval=1,
                 what="Home Assistant's entities with a state")
        for entity_id, (unit, device_class) in HA_ENTITIES.items():
            assert attr(entity_id, "unit_of_measurement") == (json.dumps(unit) if unit else None)
            assert attr(entity_id, "device_class") == (json.dumps(device_class)
                                                       if device_class else None)
        assert float(attr("sensor.demo_temp_living_room_temperature", "state") or "x") > -50
        assert attr("switch.demo_heater_relay_state", "state") in ("on", "off")
        stop_supervisord(inst.proc)  # the instance goes: its entities become unavailable
        wait_for(lambda: attr("sensor.demo_temp_living_room_temperature", "state")
                 == "unavailable" and attr("switch.demo_heater_relay_state", "state")
                 == "unavailable", timeout=60, what="the entities unavailable")
        assert attr("binary_sensor.sensor_hub_demo_status", "state") == "off"
        problems = [line for line in (tmp / "hass.log").read_text().splitlines()
                    if ("ERROR" in line or "WARNING" in line) and "mqtt" in line.lower()]
        assert not problems, problems
    finally:
        hass.terminate()
        hass.wait(60)
        stop_supervisord(inst.proc)
        sensors.shutdown()
        states.close()
