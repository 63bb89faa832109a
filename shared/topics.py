"""Every MQTT topic of the IoT2mqtt v1 contract is built and parsed here, and nowhere else.

``Topics`` builds the outgoing topics of one instance and the subscription filter of each kind
of incoming topic; ``Topics.parse`` turns an incoming topic into a ``Route`` (or ``None`` when it
is not one the bridge serves). Ids are checked at this boundary: a topic of a served shape with a
bad id raises ``RouteError``, which names the kind, so the bridge can still answer it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from shared.errors import TopicError

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
META_KINDS = ("devices_list", "info", "health", "rebirth", "history")
# ``meta/error`` carries the error answers that have no device to go to (an unknown group, an
# invalid id in an inbound topic); it is never a request kind.
META_ERROR = "error"

RouteKind = Literal["cmd", "get", "group_cmd", "meta_request", "ha_status",
                    # master control: sensors that phone home (B/sensors/{s}/...)
                    "sensor_register", "sensor_heartbeat", "sensor_ack", "sensor_data"]
# The kinds under the instance's own root. ``ha_status`` is Home Assistant's ``{prefix}/status``
# (its birth message, which discovery answers), outside the root and served only when asked for.
ROUTE_KINDS: tuple[RouteKind, ...] = tuple(k for k in get_args(RouteKind) if k != "ha_status")


def validate_id(value: str, what: str = "id") -> str:
    """Return ``value`` when it matches ``[A-Za-z0-9_-]{1,64}``, else raise ``TopicError``."""
    if not isinstance(value, str) or ID_RE.fullmatch(value) is None:
        raise TopicError(f"invalid {what} {value!r}: must match [A-Za-z0-9_-]{{1,64}}")
    return value


def validate_base_topic(value: str) -> str:
    if not value or value.startswith("/") or value.endswith("/") or any(c in value for c in "+#\0"):
        raise TopicError(
            f"invalid MQTT base topic {value!r}: no wildcards, no leading or trailing '/'"
        )
    return value


def check_publish_topic(topic: str) -> str:
    """Publishing to a topic with a wildcard is a bug: refuse it loudly."""
    if "+" in topic or "#" in topic:
        raise TopicError(f"refusing to publish to a wildcard topic {topic!r}")
    return topic


class RouteError(TopicError):
    """Raised by ``Topics.parse`` for a topic of a served shape whose id is invalid; ``kind`` is
    the shape, ``raw`` the offending id as it came."""

    def __init__(self, kind: RouteKind, raw: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.raw = raw


@dataclass(frozen=True, slots=True)
class Route:
    """An incoming topic the bridge serves: ``kind`` and the device, group or meta kind it names."""

    kind: RouteKind
    target: str


# What the id in each kind of inbound topic names (for error messages).
_TARGET_NAME: dict[RouteKind, str] = {
    "cmd": "device_id", "get": "device_id", "group_cmd": "group_id", "meta_request": "meta kind",
    "ha_status": "discovery prefix",
    "sensor_register": "sensor_id", "sensor_heartbeat": "sensor_id", "sensor_ack": "sensor_id",
    "sensor_data": "sensor_id",
}


@dataclass(frozen=True)
class Topics:
    base_topic: str
    instance: str
    ha_prefix: str = "homeassistant"  # HA_DISCOVERY_PREFIX, for Home Assistant's status topic
    root: str = field(init=False)
    _matcher: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_base_topic(self.base_topic)
        validate_id(self.instance, "instance")
        validate_base_topic(self.ha_prefix)
        root = f"{self.base_topic}/v1/instances/{self.instance}"
        object.__setattr__(self, "root", root)
        # One compiled matcher for everything the bridge subscribes to. Ids are matched loosely
        # ([^/]+) so that a bad id reaches validate_id and gets a clear error, not silence.
        matcher = re.compile(
            re.escape(root)
            + r"/(?:devices/(?P<cmd>[^/]+)/cmd"
            + r"|devices/(?P<get>[^/]+)/get"
            + r"|groups/(?P<group_cmd>[^/]+)/cmd"
            + r"|meta/request/(?P<meta_request>[^/]+)"
            + r"|sensors/(?P<sensor_register>[^/]+)/register"
            + r"|sensors/(?P<sensor_heartbeat>[^/]+)/heartbeat"
            + r"|sensors/(?P<sensor_ack>[^/]+)/commands/ack"
            + r"|sensors/(?P<sensor_data>[^/]+)/data)$"
        )
        assert set(matcher.groupindex) == set(ROUTE_KINDS)
        object.__setattr__(self, "_matcher", matcher)

    # --- instance -------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return f"{self.root}/status"

    def meta(self, kind: str) -> str:
        return f"{self.root}/meta/{validate_id(kind, 'meta kind')}"

    @property
    def meta_error(self) -> str:
        return self.meta(META_ERROR)

    def meta_request(self, kind: str) -> str:
        return f"{self.root}/meta/request/{validate_id(kind, 'meta kind')}"

    # --- devices ---------------------------------------------------------------------------
    def device(self, device_id: str) -> str:
        return f"{self.root}/devices/{validate_id(device_id, 'device_id')}"

    def state(self, device_id: str) -> str:
        return f"{self.device(device_id)}/state"

    def state_property(self, device_id: str, prop: str) -> str:
        return f"{self.device(device_id)}/state/{validate_id(prop, 'property')}"

    def availability(self, device_id: str) -> str:
        return f"{self.device(device_id)}/availability"

    def error(self, device_id: str) -> str:
        return f"{self.device(device_id)}/error"

    def events(self, device_id: str) -> str:
        return f"{self.device(device_id)}/events"

    def cmd(self, device_id: str) -> str:
        return f"{self.device(device_id)}/cmd"

    def cmd_response(self, device_id: str) -> str:
        return f"{self.device(device_id)}/cmd/response"

    def get(self, device_id: str) -> str:
        return f"{self.device(device_id)}/get"

    def group_cmd(self, group_id: str) -> str:
        return f"{self.root}/groups/{validate_id(group_id, 'group_id')}/cmd"

    @property
    def ha_status(self) -> str:
        return DiscoveryTopics(self.ha_prefix).status

    def _ha_status_of(self, _prefix: str) -> str:
        return self.ha_status

    # --- master control: sensors that phone home ------------------------------------------------
    def sensor(self, sensor_id: str) -> str:
        return f"{self.root}/sensors/{validate_id(sensor_id, 'sensor_id')}"

    def sensor_config(self, sensor_id: str) -> str:
        return f"{self.sensor(sensor_id)}/config"

    def sensor_commands(self, sensor_id: str) -> str:
        return f"{self.sensor(sensor_id)}/commands"

    def sensor_register(self, sensor_id: str) -> str:
        return f"{self.sensor(sensor_id)}/register"

    def sensor_heartbeat(self, sensor_id: str) -> str:
        return f"{self.sensor(sensor_id)}/heartbeat"

    def sensor_ack(self, sensor_id: str) -> str:
        return f"{self.sensor_commands(sensor_id)}/ack"

    def sensor_data(self, sensor_id: str) -> str:
        return f"{self.sensor(sensor_id)}/data"

    # --- subscriptions and parsing -----------------------------------------------------------
    def build(self, route: Route) -> str:
        """The inbound topic of ``route`` (the inverse of ``parse``)."""
        builders = {"cmd": self.cmd, "get": self.get, "group_cmd": self.group_cmd,
                    "meta_request": self.meta_request, "ha_status": self._ha_status_of,
                    "sensor_register": self.sensor_register,
                    "sensor_heartbeat": self.sensor_heartbeat, "sensor_ack": self.sensor_ack,
                    "sensor_data": self.sensor_data}
        return builders[route.kind](route.target)

    def filter(self, kind: RouteKind) -> str:
        """The subscription filter of one kind of inbound topic."""
        filters: dict[RouteKind, str] = {
            "cmd": f"{self.root}/devices/+/cmd",
            "get": f"{self.root}/devices/+/get",
            "group_cmd": f"{self.root}/groups/+/cmd",
            "meta_request": f"{self.root}/meta/request/+",
            "ha_status": self.ha_status,
            "sensor_register": f"{self.root}/sensors/+/register",
            "sensor_heartbeat": f"{self.root}/sensors/+/heartbeat",
            "sensor_ack": f"{self.root}/sensors/+/commands/ack",
            "sensor_data": f"{self.root}/sensors/+/data",
        }
        return filters[kind]

    def subscriptions(self, kinds: tuple[RouteKind, ...] = ROUTE_KINDS) -> list[str]:
        """The filters the bridge subscribes to, one per kind it handles."""
        return [self.filter(kind) for kind in kinds]

    def parse(self, topic: str) -> Route | None:
        """The route of an incoming topic, ``None`` when the bridge does not serve it.

        Raises ``RouteError`` when the topic has a served shape but an invalid id.
        """
        if topic == self.ha_status:
            return Route("ha_status", self.ha_prefix)
        m = self._matcher.match(topic)
        if m is None:
            return None
        kind: RouteKind = next(k for k in ROUTE_KINDS if m[k] is not None)
        raw = m[kind]
        try:
            return Route(kind, validate_id(raw, _TARGET_NAME[kind]))
        except TopicError as exc:
            raise RouteError(kind, raw, str(exc)) from None



# --- Home Assistant MQTT discovery -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiscoveryTopics:
    """Home Assistant's discovery topics under ``prefix`` (``HA_DISCOVERY_PREFIX``).

    Entity discovery: ``{prefix}/{component}/{node_id}/{object_id}/config``; device discovery
    (Home Assistant 2024.11+): ``{prefix}/device/{node_id}/config``; Home Assistant announces
    itself on ``{prefix}/status`` (``online`` after it starts).
    """

    prefix: str

    def __post_init__(self) -> None:
        validate_base_topic(self.prefix)

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    def entity(self, component: str, node_id: str, object_id: str) -> str:
        return (f"{self.prefix}/{validate_id(component, 'component')}/"
                f"{validate_id(node_id, 'node_id')}/{validate_id(object_id, 'object_id')}/config")

    def device(self, node_id: str) -> str:
        return f"{self.prefix}/device/{validate_id(node_id, 'node_id')}/config"
