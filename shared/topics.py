"""Every MQTT topic of the IoT2mqtt v1 contract is built and parsed here, and nowhere else.

``Topics`` builds the outgoing topics of one instance; ``Topics.parse`` turns an incoming topic
into a ``Route`` (or ``None`` when it is not one the bridge serves). Ids are checked at this
boundary: a bad id raises ``TopicError`` with the offending value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from shared.errors import TopicError

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
META_KINDS = ("devices_list", "info", "health", "rebirth")

RouteKind = Literal["cmd", "get", "group_cmd", "meta_request"]


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


@dataclass(frozen=True, slots=True)
class Route:
    """An incoming topic the bridge serves: ``kind`` and the device, group or meta kind it names."""

    kind: RouteKind
    target: str


@dataclass(frozen=True)
class Topics:
    base_topic: str
    instance: str
    root: str = field(init=False)
    _matcher: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_base_topic(self.base_topic)
        validate_id(self.instance, "instance")
        root = f"{self.base_topic}/v1/instances/{self.instance}"
        object.__setattr__(self, "root", root)
        # One compiled matcher for everything the bridge subscribes to. Ids are matched loosely
        # ([^/]+) so that a bad id reaches validate_id and gets a clear error, not silence.
        matcher = re.compile(
            re.escape(root)
            + r"/(?:(?P<dev>devices)/(?P<d>[^/]+)/(?P<dverb>cmd|get)"
            + r"|groups/(?P<g>[^/]+)/cmd"
            + r"|meta/request/(?P<meta>[^/]+))$"
        )
        object.__setattr__(self, "_matcher", matcher)

    # --- instance -------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return f"{self.root}/status"

    def meta(self, kind: str) -> str:
        return f"{self.root}/meta/{validate_id(kind, 'meta kind')}"

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

    # --- subscriptions and parsing -----------------------------------------------------------
    def subscriptions(self) -> list[str]:
        """The filters the bridge subscribes to (commands, gets, group commands, meta)."""
        return [
            f"{self.root}/devices/+/cmd",
            f"{self.root}/devices/+/get",
            f"{self.root}/groups/+/cmd",
            f"{self.root}/meta/request/+",
        ]

    def parse(self, topic: str) -> Route | None:
        """The route of an incoming topic, ``None`` when the bridge does not serve it.

        Raises ``TopicError`` when the topic has the right shape but an invalid id.
        """
        m = self._matcher.match(topic)
        if m is None:
            return None
        if m["dev"]:
            verb = m["dverb"]
            return Route("cmd" if verb == "cmd" else "get", validate_id(m["d"], "device_id"))
        if m["g"] is not None:
            return Route("group_cmd", validate_id(m["g"], "group_id"))
        return Route("meta_request", validate_id(m["meta"], "meta kind"))



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
