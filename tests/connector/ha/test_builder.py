"""The discovery payload builder against Home Assistant's field rules (tests/connector/ha/ha_rules):
known properties map to the right entity, class and unit; any property name and value yields
configs Home Assistant accepts, whose templates render the state and build valid commands."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.ha.builder import Builder, DeviceView, Origin
from connector.ha.props import RESERVED, infer
from shared.instance import PropertySpec
from shared.models import DeviceInfo
from shared.topics import DiscoveryTopics, Topics
from tests.connector.ha import ha_rules

PREFIX = "homeassistant"
TOPICS = Topics("IoT2mqtt", "demo")
BUILDER = Builder(TOPICS, DiscoveryTopics(PREFIX), "Demo", Origin("sensor-hub", "0.1.0",
                                                                   "https://example.org/hub"))


def info(device_id: str = "dev1", *, writable: bool = False, units: dict[str, str] | None = None,
         interval: float = 10.0, source: str = "serial") -> DeviceInfo:
    return DeviceInfo(device_id=device_id, name=f"Device {device_id}", model="m1",
                      sensor_type="climate", source=source, enabled=True,
                      writable=writable, online=True, last_seen=None, interval=interval,
                      units=units or {})


def view(values: dict[str, Any], *, writable: bool = False, units: dict[str, str] | None = None,
         specs: dict[str, PropertySpec] | None = None, events: tuple[str, ...] = ()) -> DeviceView:
    dev = info(writable=writable, units=units)
    return DeviceView(dev, infer(values, specs or {}, dev.units), events)


def configs(v: DeviceView, mode: str = "entity") -> dict[str, dict[str, Any]]:
    return BUILDER.device_messages(mode, v)


def check_all(messages: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for topic, payload in messages.items():
        for component, config in ha_rules.entities(topic, payload, PREFIX):
            problems = ha_rules.entity_problems(component, config, root=TOPICS.root)
            assert not problems, f"{topic}: {problems}\n{payload}"
            found.append((component, config))
    unique = [c["unique_id"] for _, c in found]
    assert len(unique) == len(set(unique)), unique
    return found


def by_name(found: list[tuple[str, dict[str, Any]]], unique_id: str) -> tuple[str, dict[str, Any]]:
    return next((c, cfg) for c, cfg in found if cfg["unique_id"] == unique_id)


@pytest.mark.parametrize(("prop", "value", "unit", "declared", "component", "device_class"), [
    ("temperature", 21.5, "°C", None, "sensor", "temperature"),
    ("cpu_temperature", 48.0, "°C", None, "sensor", "temperature"),
    ("humidity", 55.0, "%", "humidity", "sensor", "humidity"),
    ("battery", 97, "%", None, "sensor", "battery"),
    ("illuminance", 224.0, "lx", None, "sensor", "illuminance"),
    ("pressure", 1013.2, "hPa", None, "sensor", "pressure"),
    ("voltage", 3.3, "V", None, "sensor", "voltage"),
    ("power", 120.0, "W", None, "sensor", "power"),
    ("energy", 12.5, "kWh", None, "sensor", "energy"),
    ("disk_used", 1_000_000, "B", None, "sensor", "data_size"),
    ("rssi", -67, "dBm", None, "sensor", "signal_strength"),
    ("co2", 600, "ppm", None, "sensor", "carbon_dioxide"),
    ("temp2", 20.0, "°F", None, "sensor", "temperature"),
    ("whatever", 3.0, "°C", None, "sensor", "temperature"),   # the unit alone says it
    ("humidity", 55.0, "g/m³", None, "sensor", None),          # a unit humidity does not take
    ("temperature", 21.5, None, None, "sensor", None),          # no unit: no class
    ("temperature", 21.5, "%", "temperature", "sensor", None),  # declared, wrong unit: dropped
    ("load_1m", 0.42, None, None, "sensor", None),
    ("motion", False, None, None, "binary_sensor", "motion"),
    ("door_open", True, None, None, "binary_sensor", "door"),
    ("flag", True, None, None, "binary_sensor", None),
    ("leak", "off", None, None, "binary_sensor", "moisture"),
    ("mode", "eco", None, None, "sensor", None),
])
def test_known_properties_get_their_entity_and_class(
        prop: str, value: Any, unit: str | None, declared: str | None, component: str,
        device_class: str | None) -> None:
    specs = {prop: PropertySpec(device_class=declared)} if declared else {}
    found = check_all(configs(view({prop: value}, units={prop: unit} if unit else {}, specs=specs)))
    got_component, config = by_name(found, f"demo_dev1_{prop}")
    assert got_component == component
    assert config.get("device_class") == device_class
    if component == "sensor" and not isinstance(value, str):
        assert config["state_class"] == ("total_increasing" if device_class == "energy"
                                         else "measurement")
        assert config.get("unit_of_measurement") == unit
        assert isinstance(config["suggested_display_precision"], int)
    assert config["expire_after"] == 30
    assert config["state_topic"] == TOPICS.state("dev1")
    assert [a["topic"] for a in config["availability"]] == [TOPICS.status,
                                                             TOPICS.availability("dev1")]


def test_writable_devices_get_controls_that_send_valid_commands() -> None:
    found = check_all(configs(view({"state": "on", "enabled": True, "setpoint": 21.5,
                                    "level": 3, "label": "x", "temperature": 20.1},
                                   writable=True, units={"temperature": "°C"})))
    kinds = {cfg["unique_id"].removeprefix("demo_dev1_"): c for c, cfg in found}
    assert kinds == {"state": "switch", "enabled": "switch", "setpoint": "number",
                     "level": "number", "label": "text", "temperature": "sensor",
                     "last_error": "sensor"}
    for component, cfg in found:
        if component == "switch":
            prop = cfg["unique_id"].removeprefix("demo_dev1_")
            on = ha_rules.command_of(cfg["payload_on"]).values
            off = ha_rules.command_of(cfg["payload_off"]).values
            assert [on, off] in ([{prop: True}, {prop: False}], [{prop: "on"}, {prop: "off"}])
        if component in ("number", "text"):
            assert cfg["command_topic"] == TOPICS.cmd("dev1")
    _, setpoint = by_name(found, "demo_dev1_setpoint")
    assert ha_rules.command_of(ha_rules.render(setpoint["command_template"], value=22.5)
                               ).values == {"setpoint": 22.5}
    _, level = by_name(found, "demo_dev1_level")
    assert ha_rules.command_of(ha_rules.render(level["command_template"], value=4.0)
                               ).values == {"level": 4}
    _, label = by_name(found, "demo_dev1_label")
    tricky = 'say "hi" \\ {{ no }}'
    assert ha_rules.command_of(ha_rules.render(label["command_template"], value=tricky)
                               ).values == {"label": tricky}


def test_errors_and_events_are_diagnostics_and_events() -> None:
    specs = {"motion": PropertySpec(type="bool", events={"true": "motion_started",
                                                          "false": "motion_stopped"})}
    v = view({"motion": True}, specs=specs, events=("motion_started", "motion_stopped"))
    found = check_all(configs(v))
    component, event = by_name(found, "demo_dev1_event")
    assert component == "event"
    assert event["event_types"] == ["motion_started", "motion_stopped"]
    payload = orjson.dumps({"timestamp": "2026-01-01T00:00:00.000Z", "event": "motion_started"})
    assert orjson.loads(ha_rules.render_value(event["value_template"], payload)) == {
        "event_type": "motion_started"}
    component, error = by_name(found, "demo_dev1_last_error")
    assert (component, error["entity_category"]) == ("sensor", "diagnostic")
    assert error["state_topic"] == TOPICS.error("dev1")
    assert ha_rules.render_value(error["value_template"], orjson.dumps(
        {"error_code": "READ_FAILED", "message": "x", "severity": "error"})) == "READ_FAILED"


def test_the_hub_device_and_its_diagnostics() -> None:
    found = check_all(BUILDER.hub_messages("entity"))
    ids = {cfg["unique_id"] for _, cfg in found}
    assert ids == {f"sensor-hub_demo_{k}" for k in
                   ("status", "health", "devices_online", "outbox_backlog", "started")}
    health = orjson.dumps({"state": "online", "processes": {}, "broker_outbox": 3,
                           "devices": {"online": 4, "offline": 1},
                           "started": "2026-01-01T00:00:00.000Z"})
    contract = orjson.dumps({"state": "degraded", "outbox": {"pending": 7},
                             "devices": {"online": 0, "offline": 5}})
    expect = {"health": ("online", "degraded"), "devices_online": ("4", "0"),
              "outbox_backlog": ("3", "7"), "started": ("2026-01-01T00:00:00.000Z", "None")}
    for key, (first, second) in expect.items():
        _, cfg = by_name(found, f"sensor-hub_demo_{key}")
        assert ha_rules.render_value(cfg["value_template"], health) == first
        assert ha_rules.render_value(cfg["value_template"], contract) == second
        assert cfg["device"]["identifiers"] == ["sensor-hub_demo"]
    _, dev = check_all(configs(view({"t": 1.0})))[0]
    assert dev["device"]["via_device"] == "sensor-hub_demo"
    assert dev["origin"] == {"name": "sensor-hub", "sw_version": "0.1.0",
                             "support_url": "https://example.org/hub"}


def test_device_discovery_declares_the_same_entities_in_one_config() -> None:
    v = view({"temperature": 21.0, "motion": False, "state": "on"}, writable=True,
             units={"temperature": "°C"}, events=("rebooted",))
    entity_form = check_all(configs(v, "entity"))
    device_form = configs(v, "device")
    assert list(device_form) == [f"{PREFIX}/device/demo_dev1/config"]
    as_device = check_all(device_form)
    strip = {"device", "origin", "platform"}

    def keyed(found: list[tuple[str, dict[str, Any]]]) -> dict[str, tuple[str, dict[str, Any]]]:
        return {cfg["unique_id"]: (c, {k: x for k, x in cfg.items() if k not in strip})
                for c, cfg in found}

    assert keyed(as_device) == keyed(entity_form)
    assert {"temperature", "motion", "state", "last_error", "event"} == {
        u.removeprefix("demo_dev1_") for u in keyed(as_device)}


NAMES = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True).filter(lambda n: n not in RESERVED)
VALUES = st.one_of(st.booleans(), st.integers(-10**12, 10**12),
                   st.floats(allow_nan=False, allow_infinity=False, width=32),
                   st.text(max_size=20), st.sampled_from(["on", "off", "ON"]))
UNITS = st.one_of(st.none(), st.sampled_from(["°C", "%", "lx", "V", "W", "kWh", "hPa", "B", "ppm",
                                              "dBm", "s", "m", "weird unit"]))


@settings(max_examples=150, deadline=None)
@given(state=st.dictionaries(NAMES, VALUES, min_size=1, max_size=6),
       units=st.dictionaries(NAMES, UNITS.filter(lambda u: u is not None), max_size=3),
       writable=st.booleans(), mode=st.sampled_from(["entity", "device"]))
def test_any_state_yields_configs_home_assistant_accepts(
        state: dict[str, Any], units: dict[str, str], writable: bool, mode: str) -> None:
    v = view(state, writable=writable, units=units)
    found = check_all(configs(v, mode))
    payload = orjson.dumps({"device_id": "dev1", "timestamp": "2026-01-01T00:00:00.000Z", **state})
    for component, cfg in found:
        prop = cfg["unique_id"].removeprefix("demo_dev1_")
        if prop not in state:
            continue
        value = state[prop]
        rendered = ha_rules.render_value(cfg["value_template"], payload)
        if isinstance(value, bool):
            assert rendered == ("ON" if value else "OFF")
        elif isinstance(value, str) and value.lower() in ("on", "off"):
            assert rendered == value.upper()
        elif component in ("sensor", "number") and not isinstance(value, str):
            assert float(rendered) == pytest.approx(float(value), rel=1e-6)
        missing = orjson.dumps({"device_id": "dev1", "timestamp": "2026-01-01T00:00:00.000Z"})
        assert ha_rules.render_value(cfg["value_template"], missing) == "None"


def test_a_device_id_of_64_characters_gets_valid_discovery_topics() -> None:
    """Found by the REST fuzzer: a probe registered as a 64-character id (valid) made
    ``demo_{id}`` too long for a topic segment, and every discovery round of the instance failed
    from then on. The node id is now its start and a hash of the whole: unique and stable."""
    long_a, long_b = "a" * 63 + "1", "a" * 63 + "2"
    node_a, node_b = BUILDER.node_id(long_a), BUILDER.node_id(long_b)
    assert len(node_a) == 64 and node_a != node_b and node_a.startswith("demo_aaaa")
    assert BUILDER.node_id(long_a) == node_a  # the same every run: no ghost entities
    assert BUILDER.node_id("dev1") == "demo_dev1"  # short ids unchanged
    dev = info(long_a)
    messages = BUILDER.device_messages("entity", DeviceView(dev, infer({"t": 1.5}, {}, {}), ()))
    assert messages and all(f"/{node_a}/" in topic for topic in messages)
    check_all(messages)
    assert BUILDER.device_messages("device", DeviceView(dev, infer({"t": 1.5}, {}, {}), ()))
