"""The one typed object every bridge feature receives: its dependencies, nothing global."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shared.instance import Instance
from shared.models import DeviceInfo, StateChange
from shared.mqtt import MqttClient
from shared.rest import RestClient
from shared.settings import Settings
from shared.topics import Topics

from .answers import Answers
from .publisher import Publisher


@dataclass(slots=True)
class DeviceRecord:
    """What the bridge last published of one device."""

    info: DeviceInfo
    online: bool
    # The last state; its ``device_seq`` (the aggregator's count of this device's states) is
    # the contract's ``seq``, so a republish of the same state carries the same seq.
    state: StateChange | None = None


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
