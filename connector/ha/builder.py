"""Home Assistant MQTT discovery payloads, built from what the hub knows of its devices. Pure: it
returns ``{topic: payload}`` and never touches MQTT, so every payload can be checked in tests.

Each device property becomes one entity that reads the device's ``state`` topic through a
``value_template``; a writable device's switches, numbers and texts send a valid
``{"values": {...}}`` command to its ``cmd`` topic. Every entity of a device is available while
the instance *and* the device are online (``availability_mode: all``). The instance itself is a
hub device (``via_device`` of the others) whose diagnostic entities read ``status`` and
``meta/health``.

A template renders ``None`` while the state carries no value for its property yet: Home
Assistant's MQTT entities take that payload as "unknown" instead of logging a template error.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.models import DeviceInfo
from shared.topics import DiscoveryTopics, Topics

from . import classes
from .props import Prop

Payload = dict[str, Any]
NODE_ID_MAX = 64  # a topic segment (shared.topics.ID_RE)
# The entities of a device that are not properties; a property of the same name wins.
ERROR_KEY = "last_error"
EVENT_KEY = "event"
ONLINE, OFFLINE = "online", "offline"


@dataclass(frozen=True, slots=True)
class DeviceView:
    """One device as discovery sees it: its registry entry and its properties."""

    info: DeviceInfo
    props: tuple[Prop, ...]
    events: tuple[str, ...] = ()  # event types it can emit on ``devices/{d}/events``


@dataclass(frozen=True, slots=True)
class Entity:
    """One entity before it is wrapped for entity or device discovery."""

    component: str
    key: str  # the object id part of its discovery topic
    config: Payload


@dataclass(frozen=True, slots=True)
class Origin:
    name: str
    sw_version: str
    support_url: str | None = None

    def payload(self) -> Payload:
        body: Payload = {"name": self.name, "sw_version": self.sw_version}
        if self.support_url:
            body["support_url"] = self.support_url
        return body


def _get(prop: str, expr: str) -> str:
    # Subscript, not attribute access: property names may hold "-".
    return f"{{{{ ({expr}) if '{prop}' in value_json else None }}}}"


def value_template(prop: Prop) -> str:
    ref = f"value_json['{prop.name}']"
    if prop.kind == "bool":
        return _get(prop.name, f"'ON' if {ref} else 'OFF'")
    if prop.kind == "onoff":
        return _get(prop.name, f"{ref} | string | upper")
    return _get(prop.name, ref)


def command_json(prop: str, value: str) -> str:
    """A command carrying one property, with ``value`` already rendered as JSON."""
    return f'{{"values": {{"{prop}": {value}}}}}'


def humanize(name: str) -> str:
    words = name.replace("-", " ").replace("_", " ").split()
    return " ".join(words).capitalize() if words else name


@dataclass(frozen=True)
class Builder:
    topics: Topics
    discovery: DiscoveryTopics
    instance_name: str  # the hub device's display name
    origin: Origin

    # --- ids ---------------------------------------------------------------------------------
    @property
    def instance(self) -> str:
        return self.topics.instance

    @property
    def hub_identifier(self) -> str:
        return f"sensor-hub_{self.instance}"

    def node_id(self, device_id: str) -> str:
        """``{instance}_{device}``; when that is longer than a topic segment may be (a device id
        of 64 characters is valid), its start and a hash of the whole: unique and stable."""
        node = f"{self.instance}_{device_id}"
        if len(node) <= NODE_ID_MAX:
            return node
        digest = hashlib.sha256(node.encode()).hexdigest()[:10]
        return f"{node[:NODE_ID_MAX - len(digest) - 1]}_{digest}"

    # --- devices -----------------------------------------------------------------------------
    def device_block(self, info: DeviceInfo) -> Payload:
        return {"identifiers": [self.node_id(info.device_id)], "name": info.name,
                "model": info.model, "manufacturer": f"sensor-hub ({info.source})",
                "sw_version": self.origin.sw_version, "via_device": self.hub_identifier}

    def hub_block(self) -> Payload:
        return {"identifiers": [self.hub_identifier], "name": self.instance_name,
                "model": "sensor-hub instance", "manufacturer": "sensor-hub",
                "sw_version": self.origin.sw_version}

    def availability(self, device_id: str | None) -> Payload:
        topics = [self.topics.status] + ([self.topics.availability(device_id)] if device_id else [])
        return {"availability": [{"topic": t, "payload_available": ONLINE,
                                  "payload_not_available": OFFLINE} for t in topics],
                "availability_mode": "all"}

    def device_entities(self, view: DeviceView) -> list[Entity]:
        info = view.info
        entities = [self._property(info, prop) for prop in view.props]
        taken = {p.name for p in view.props}
        if ERROR_KEY not in taken:
            entities.append(Entity("sensor", ERROR_KEY, {
                "name": "Last error", "entity_category": "diagnostic", "icon": "mdi:alert-circle",
                "state_topic": self.topics.error(info.device_id),
                "value_template": "{{ value_json.error_code }}",
                "json_attributes_topic": self.topics.error(info.device_id),
                # an error matters most while the device is offline: only the hub gates it
                **self.availability(None),
            }))
        if view.events and EVENT_KEY not in taken:
            entities.append(Entity("event", EVENT_KEY, {
                "name": "Event", "state_topic": self.topics.events(info.device_id),
                "event_types": list(view.events),
                "value_template": "{{ {'event_type': value_json.event} | tojson }}",
                **self.availability(info.device_id),
            }))
        for entity in entities:
            unique = f"{self.node_id(info.device_id)}_{entity.key}"
            entity.config.update(unique_id=unique, object_id=unique, qos=1)
        return entities

    def _property(self, info: DeviceInfo, prop: Prop) -> Entity:
        base: Payload = {"name": humanize(prop.name), "state_topic": self.topics.state(info.device_id),
                         "value_template": value_template(prop), **self.availability(info.device_id)}
        # The state is expected at the device's cadence; the same grace the hub gives before
        # it calls the device offline (max(3 x interval, 30 s)).
        expire = {"expire_after": math.ceil(max(3 * info.interval, 30.0))}
        if prop.kind in ("bool", "onoff"):
            if info.writable:
                on, off = ("true", "false") if prop.kind == "bool" else ('"on"', '"off"')
                return Entity("switch", prop.name, {
                    **base, "command_topic": self.topics.cmd(info.device_id),
                    # Whole commands as payloads: Home Assistant's switch had no
                    # command_template before 2024.x, and payloads work in every release.
                    "payload_on": command_json(prop.name, on),
                    "payload_off": command_json(prop.name, off),
                    "state_on": "ON", "state_off": "OFF"})
            config = {**base, **expire, "payload_on": "ON", "payload_off": "OFF"}
            device_class = classes.binary_class(prop.name, prop.device_class)
            if device_class:
                config["device_class"] = device_class
            return Entity("binary_sensor", prop.name, config)
        if prop.kind == "text":
            if info.writable:
                return Entity("text", prop.name, {
                    **base, "command_topic": self.topics.cmd(info.device_id),
                    "command_template": command_json(prop.name, "{{ value | tojson }}")})
            return Entity("sensor", prop.name, {**base, **expire})
        return self._number(info, prop, base, expire)

    def _number(self, info: DeviceInfo, prop: Prop, base: Payload, expire: Payload) -> Entity:
        integer = prop.kind == "integer"
        device_class = classes.sensor_class(prop.name, prop.unit, prop.device_class)
        unit = {"unit_of_measurement": prop.unit} if prop.unit else {}
        # A writable device's numbers are settings (set points, levels), unless they measure
        # something Home Assistant knows (a temperature it reports is still a sensor).
        if info.writable and device_class is None:
            value = "{{ value | int }}" if integer else "{{ value }}"
            return Entity("number", prop.name, {
                **base, **unit, "command_topic": self.topics.cmd(info.device_id),
                "command_template": command_json(prop.name, value),
                "min": -1_000_000_000, "max": 1_000_000_000, "step": 1 if integer else 0.001,
                "mode": "box"})
        config: Payload = {**base, **expire, **unit, "state_class": classes.state_class(device_class),
                           "suggested_display_precision":
                               classes.display_precision(device_class, integer=integer)}
        if device_class:
            config["device_class"] = device_class
        return Entity("sensor", prop.name, config)

    # --- the hub -----------------------------------------------------------------------------
    def hub_entities(self) -> list[Entity]:
        health = self.topics.meta("health")
        diag: Payload = {"entity_category": "diagnostic", "qos": 1}
        entities = [
            # No availability: this one shows the instance going offline instead of vanishing.
            Entity("binary_sensor", "status", {
                **diag, "name": "Status", "state_topic": self.topics.status,
                "device_class": "connectivity", "payload_on": ONLINE, "payload_off": OFFLINE}),
            Entity("sensor", "health", {
                **diag, **self.availability(None), "name": "Health", "state_topic": health,
                "value_template": "{{ value_json.state }}", "device_class": "enum",
                "options": ["starting", "online", "degraded"]}),
            Entity("sensor", "devices_online", {
                **diag, **self.availability(None), "name": "Devices online",
                "state_topic": health, "state_class": "measurement", "icon": "mdi:lan-connect",
                "value_template": "{{ value_json.devices.online }}"}),
            Entity("sensor", "outbox_backlog", {
                **diag, **self.availability(None), "name": "Outbox backlog",
                "state_topic": health, "state_class": "measurement", "icon": "mdi:tray-full",
                # meta/health says "outbox": {"pending": n} (contract) or "broker_outbox": n
                "value_template": "{{ value_json.outbox.pending if value_json.outbox is defined"
                                  " else value_json.broker_outbox }}"}),
            # Uptime as Home Assistant shows it best: the start time, displayed as "3 hours
            # ago"; a counting uptime would make meta/health change every time it is published.
            Entity("sensor", "started", {
                **diag, **self.availability(None), "name": "Started", "state_topic": health,
                "device_class": "timestamp",
                "value_template": "{{ value_json.started if value_json.started is defined"
                                  " else None }}"}),
        ]
        for entity in entities:
            unique = f"{self.hub_identifier}_{entity.key}"
            entity.config.update(unique_id=unique, object_id=unique)
        return entities

    # --- the two discovery forms ----------------------------------------------------------
    def entity_messages(self, block: Payload, entities: list[Entity], node_id: str
                        ) -> dict[str, Payload]:
        """Entity discovery: one retained config per entity, each with the device block."""
        origin = self.origin.payload()
        return {self.discovery.entity(e.component, node_id, e.key):
                {**e.config, "device": block, "origin": origin} for e in entities}

    def device_message(self, block: Payload, entities: list[Entity], node_id: str
                       ) -> dict[str, Payload]:
        """Device discovery (Home Assistant 2024.11+): one config for all of a device's entities."""
        components = {e.key: {"platform": e.component, **e.config} for e in entities}
        return {self.discovery.device(node_id): {
            "device": block, "origin": self.origin.payload(), "components": components}}

    def _wrap(self, mode: str) -> Callable[[Payload, list[Entity], str], dict[str, Payload]]:
        return self.device_message if mode == "device" else self.entity_messages

    def hub_messages(self, mode: str) -> dict[str, Payload]:
        """The hub device's configs in ``mode`` (``entity`` or ``device``)."""
        return self._wrap(mode)(self.hub_block(), self.hub_entities(), self.instance)

    def device_messages(self, mode: str, view: DeviceView) -> dict[str, Payload]:
        """One device's configs in ``mode``."""
        return self._wrap(mode)(self.device_block(view.info), self.device_entities(view),
                                self.node_id(view.info.device_id))

    def messages(self, mode: str, views: list[DeviceView]) -> dict[str, Payload]:
        """Every discovery config of the instance in ``mode``."""
        out = self.hub_messages(mode)
        for view in views:
            out.update(self.device_messages(mode, view))
        return out
