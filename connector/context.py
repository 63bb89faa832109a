"""The one typed object every bridge feature receives: its dependencies, nothing global."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from shared.instance import Instance
from shared.rest import RestClient
from shared.settings import Settings
from shared.topics import Topics

from .publisher import Publisher


@dataclass
class Mirror:
    """What the bridge last published of each device, so that a reconnect or a rebirth can
    republish everything without asking the aggregator for it."""

    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # DeviceInfo dumps
    states: dict[str, dict[str, Any]] = field(default_factory=dict)  # StateChange dumps
    groups: dict[str, list[str]] = field(default_factory=dict)
    synced: bool = False


@dataclass
class BridgeContext:
    settings: Settings
    instance: Instance
    topics: Topics
    publisher: Publisher
    aggregator: RestClient
    executor: ThreadPoolExecutor
    client_id: str
    mirror: Mirror = field(default_factory=Mirror)
    started: float = field(default_factory=time.time)
