"""The one typed object every bridge feature receives: its dependencies, nothing global."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from shared.instance import Instance
from shared.models import DeviceInfo, StateChange, to_json, trusted
from shared.mqtt import MqttClient
from shared.rest import RestClient
from shared.settings import Settings
from shared.topics import Topics

from .answers import Answers
from .publisher import Publisher


@dataclass(frozen=True, slots=True)
class LastState:
    """A device's last state as the bridge published it. ``device_seq`` (the aggregator's
    count of this device's states) is the contract's ``seq``, so a republish of the same state
    carries the same seq."""

    device_seq: int
    ts: float
    values: dict[str, Any]

    @classmethod
    def of(cls, change: StateChange) -> LastState:
        return cls(change.device_seq, change.ts, change.values)


@dataclass(slots=True)
class DeviceRecord:
    """What the bridge last published of one device, kept small: 10,000 of them live as long
    as the bridge. The registry entry is kept as its JSON (about 250 bytes, where the model
    with its dict and fields-set is about 1.7 KB) and made a model again when asked for
    (discovery, when a device or a property is new); the state without the change log's fields."""

    device_id: str
    info_json: bytes
    online: bool
    state: LastState | None = None

    @classmethod
    def of(cls, info: DeviceInfo, *, online: bool | None = None,
           state: LastState | None = None) -> DeviceRecord:
        """A record of ``info`` (``online``: its own unless given)."""
        # An exact copy: orjson's result keeps a 4 KB buffer however short the JSON.
        return cls(info.device_id, bytes(memoryview(to_json(info))),
                   info.online if online is None else online, state)

    @property
    def info(self) -> DeviceInfo:
        """The registry entry as the aggregator last sent it (its ``online`` and ``last_seen``
        as of then: ``online`` here is the current one)."""
        return self.info_with()

    def info_with(self, **fields: Any) -> DeviceInfo:
        """The registry entry with ``fields`` replaced: one model, not validated again (the
        JSON is the bridge's own, from a validated model)."""
        return trusted(DeviceInfo, **(orjson.loads(self.info_json) | fields))

    def set_info(self, info: DeviceInfo) -> None:
        self.info_json = bytes(memoryview(to_json(info)))


@dataclass
class Mirror:
    """What the bridge last published of each device, so that a reconnect or a rebirth can
    republish everything without asking the aggregator for it. Written only by the state
    publisher thread; other threads read it (dict reads are atomic in CPython)."""

    devices: dict[str, DeviceRecord] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    synced: bool = False
    # Grows whenever a device is added, removed or replaced or one gains a property: a feature
    # that derives something from the shape of the mirror (HA discovery) compares one number
    # instead of walking every device (150 ms a round at 10,000 devices on a busy machine).
    shape: int = 0

    def counts(self) -> dict[str, int]:
        online = sum(1 for rec in list(self.devices.values()) if rec.online)
        return {"devices": len(self.devices), "online": online,
                "offline": len(self.devices) - online, "groups": len(self.groups)}


@dataclass
class BridgeContext:
    settings: Settings
    # Without its sensors once the features are built (``bridge.slim``): the devices come
    # from the aggregator, their declared properties are discovery's.
    instance: Instance
    topics: Topics
    client: MqttClient
    publisher: Publisher
    answers: Answers
    aggregator: RestClient
    client_id: str
    mirror: Mirror = field(default_factory=Mirror)
    started: float = field(default_factory=time.time)
