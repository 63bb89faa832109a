"""Home Assistant's field rules for MQTT discovery configs, written down from its documentation
(integrations/mqtt, sensor, binary_sensor, switch, number, text, event) and from
``homeassistant/components/sensor/const.py`` (``DEVICE_CLASS_UNITS``,
``DEVICE_CLASS_STATE_CLASSES``), independently of the code under test, so the tests check the
builder against Home Assistant and not against itself. Templates are rendered with Jinja2, the
engine Home Assistant renders them with.
"""

from __future__ import annotations

import re
from typing import Any

import jinja2
import orjson
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shared.models import CommandIn

ID = re.compile(r"^[a-zA-Z0-9_-]+$")
COMMON = {"name", "unique_id", "object_id", "device", "origin", "availability",
          "availability_mode", "availability_topic", "qos", "entity_category", "icon",
          "json_attributes_topic", "json_attributes_template", "enabled_by_default", "encoding",
          "platform"}
ALLOWED: dict[str, set[str]] = {
    "sensor": COMMON | {"state_topic", "value_template", "device_class", "state_class",
                        "unit_of_measurement", "suggested_display_precision", "expire_after",
                        "force_update", "options", "last_reset_value_template"},
    "binary_sensor": COMMON | {"state_topic", "value_template", "device_class", "payload_on",
                               "payload_off", "expire_after", "force_update", "off_delay"},
    "switch": COMMON | {"state_topic", "value_template", "command_topic", "command_template",
                        "payload_on", "payload_off", "state_on", "state_off", "device_class",
                        "optimistic", "retain"},
    "number": COMMON | {"state_topic", "value_template", "command_topic", "command_template",
                        "min", "max", "step", "mode", "unit_of_measurement", "device_class",
                        "optimistic", "retain", "payload_reset"},
    "text": COMMON | {"state_topic", "value_template", "command_topic", "command_template",
                      "min", "max", "mode", "pattern", "retain"},
    "select": COMMON | {"state_topic", "value_template", "command_topic", "command_template",
                        "options", "optimistic", "retain"},
    "event": COMMON | {"state_topic", "value_template", "event_types", "device_class"},
}
REQUIRED: dict[str, set[str]] = {
    "sensor": {"state_topic"}, "binary_sensor": {"state_topic"}, "switch": {"command_topic"},
    "number": {"command_topic"}, "text": {"command_topic"},
    "select": {"command_topic", "options"}, "event": {"state_topic", "event_types"},
}
PCT, UGM3 = "%", "µg/m³"
PRESSURE = {"Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"}
SENSOR_UNITS: dict[str, set[str | None]] = {
    "apparent_power": {"VA"}, "atmospheric_pressure": set(PRESSURE), "battery": {PCT},
    "carbon_dioxide": {"ppm"}, "carbon_monoxide": {"ppm"}, "current": {"A", "mA"},
    "data_size": {"bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB",
                  "YB", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"},
    "distance": {"km", "m", "cm", "mm", "mi", "yd", "ft", "in"},
    "duration": {"d", "h", "min", "s", "ms"}, "energy": {"Wh", "kWh", "MWh", "MJ", "GJ"},
    "frequency": {"Hz", "kHz", "MHz", "GHz"}, "humidity": {PCT}, "illuminance": {"lx"},
    "irradiance": {"W/m²", "BTU/(h⋅ft²)"}, "moisture": {PCT}, "pm1": {UGM3}, "pm10": {UGM3},
    "pm25": {UGM3}, "power": {"W", "kW"}, "power_factor": {PCT, None}, "pressure": set(PRESSURE),
    "signal_strength": {"dB", "dBm"}, "sound_pressure": {"dB", "dBA"},
    "temperature": {"°C", "°F", "K"}, "volatile_organic_compounds": {UGM3},
    "volatile_organic_compounds_parts": {"ppm", "ppb"}, "voltage": {"V", "mV"},
    "volume": {"L", "mL", "gal", "fl. oz.", "m³", "ft³", "CCF"},
    "weight": {"kg", "g", "mg", "µg", "oz", "lb", "st"},
    "wind_speed": {"ft/s", "km/h", "kn", "m/s", "mph"},
}
NON_NUMERIC = {"enum", "timestamp", "date"}
MEASUREMENT_FORBIDDEN = {"energy", "gas", "monetary", "volume", "water"}
BINARY_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
    "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy",
    "opening", "plug", "power", "presence", "problem", "running", "safety", "smoke", "sound",
    "tamper", "update", "vibration", "window",
}
ENV = ImmutableSandboxedEnvironment(undefined=jinja2.Undefined)


def render(template: str, **variables: Any) -> str:
    return ENV.from_string(template).render(**variables)


def render_value(template: str, payload: bytes) -> str:
    """As Home Assistant renders a ``value_template``: ``value`` and, when the payload is JSON,
    ``value_json``."""
    try:
        value_json = orjson.loads(payload)
    except orjson.JSONDecodeError:
        value_json = None
    return render(template, value=payload.decode(), value_json=value_json)


def command_of(payload: str) -> CommandIn:
    """A rendered command must be a valid ``devices/{d}/cmd`` payload."""
    return CommandIn.model_validate(orjson.loads(payload))


def entity_problems(component: str, config: dict[str, Any], *, root: str) -> list[str]:
    """Everything in one entity config that Home Assistant would reject or warn about."""
    problems: list[str] = []
    if component not in ALLOWED:
        return [f"unknown component {component!r}"]
    extra = set(config) - ALLOWED[component]
    if extra:
        problems.append(f"{component}: keys Home Assistant does not know: {sorted(extra)}")
    missing = REQUIRED[component] - set(config)
    if missing:
        problems.append(f"{component}: missing required {sorted(missing)}")
    for key in ("unique_id", "name"):
        if not isinstance(config.get(key), str) or not config[key]:
            problems.append(f"{component}: {key} must be a non-empty string")
    if "object_id" in config and not ID.match(str(config["object_id"])):
        problems.append(f"object_id {config['object_id']!r} is not [a-zA-Z0-9_-]+")
    device = config.get("device")
    if not isinstance(device, dict) or not device.get("identifiers"):
        problems.append("device block without identifiers")
    origin = config.get("origin")
    if not isinstance(origin, dict) or not origin.get("name"):
        problems.append("origin without a name")
    for key in ("state_topic", "command_topic", "json_attributes_topic"):
        topic = config.get(key)
        if topic is not None and (not topic.startswith(root + "/") or "+" in topic or "#" in topic):
            problems.append(f"{key} {topic!r} is not a topic of the instance")
    if "command_topic" in config and not re.fullmatch(re.escape(root) + r"/devices/[^/]+/cmd",
                                                      config["command_topic"]):
        problems.append(f"command_topic {config['command_topic']!r} is not a device's cmd topic")
    availability = config.get("availability", [])
    if availability:
        if config.get("availability_mode") != "all":
            problems.append("availability_mode must be all")
        if availability[0].get("topic") != f"{root}/status":
            problems.append("the first availability topic must be the instance status")
    entity_category = config.get("entity_category")
    if entity_category not in (None, "diagnostic", "config"):
        problems.append(f"entity_category {entity_category!r}")
    problems += _classes(component, config)
    if component == "number" and not config.get("min", 1) < config.get("max", 100):
        problems.append("number: min must be below max")
    if component == "event" and not config.get("event_types"):
        problems.append("event: event_types must not be empty")
    return problems


def _classes(component: str, config: dict[str, Any]) -> list[str]:
    device_class = config.get("device_class")
    unit = config.get("unit_of_measurement")
    state_class = config.get("state_class")
    problems: list[str] = []
    if component == "binary_sensor" and device_class is not None \
            and device_class not in BINARY_CLASSES:
        problems.append(f"binary_sensor device_class {device_class!r} unknown")
    if component != "sensor":
        return problems
    if device_class is not None and device_class not in SENSOR_UNITS \
            and device_class not in NON_NUMERIC:
        problems.append(f"sensor device_class {device_class!r} unknown")
    if device_class in SENSOR_UNITS and unit not in SENSOR_UNITS[device_class]:
        problems.append(f"unit {unit!r} is not one of {device_class}'s")
    if state_class not in (None, "measurement", "total", "total_increasing"):
        problems.append(f"state_class {state_class!r} unknown")
    if state_class == "measurement" and device_class in MEASUREMENT_FORBIDDEN:
        problems.append(f"{device_class} cannot be a measurement")
    if device_class in NON_NUMERIC and (state_class or unit):
        problems.append(f"{device_class} takes neither a state_class nor a unit")
    if device_class == "enum" and not config.get("options"):
        problems.append("enum needs options")
    precision = config.get("suggested_display_precision")
    if precision is not None and (not isinstance(precision, int) or precision < 0):
        problems.append(f"suggested_display_precision {precision!r}")
    return problems


def split(topic: str, prefix: str) -> tuple[str, str, str | None]:
    """``(component, node_id, object_id)`` of a discovery topic; raises on a bad one."""
    assert topic.startswith(prefix + "/"), topic
    parts = topic[len(prefix) + 1:].split("/")
    assert parts[-1] == "config", topic
    assert all(ID.match(p) for p in parts[:-1]), topic
    if parts[0] == "device":
        assert len(parts) == 3, topic
        return "device", parts[1], None
    assert len(parts) == 4, topic
    return parts[0], parts[1], parts[2]


def entities(topic: str, payload: dict[str, Any], prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``(component, config)`` entities of a config of either discovery form, each with its
    device and origin, as Home Assistant assembles them."""
    component, _node, _obj = split(topic, prefix)
    if component != "device":
        return [(component, payload)]
    shared = {k: v for k, v in payload.items() if k != "components"}
    return [(c["platform"], {**shared, **c}) for c in payload["components"].values()
            if set(c) != {"platform"}]
