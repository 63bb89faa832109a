"""What the probe keeps across reboots, as small JSON files through the HAL: provisioning,
Wi-Fi credentials, the applied master config, the OTA state and the ring of recent command ids.

A file that cannot be parsed (power lost in the middle of a write on a port without atomic rename,
a hand edit) is treated as absent, never as a reason not to boot."""

import json

from .hal import Hal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Store:
    def __init__(self, hal: Hal) -> None:
        self.hal = hal

    def load(self, name: str, default: "dict[str, Any]") -> "dict[str, Any]":
        raw = self.hal.read(name)
        if raw is None:
            return default
        try:
            value = json.loads(raw)
        except ValueError:
            return default
        return value if isinstance(value, dict) else default

    def save(self, name: str, value: "dict[str, Any]") -> None:
        self.hal.write(name, json.dumps(value).encode())


class CommandRing:
    """The ids of the last ``size`` commands with the status they were acked with, persisted, so
    a command the hub sends again (its ack was lost, or the probe rebooted) is acked again with
    the same status and never run twice."""

    FILE = "commands.json"

    def __init__(self, store: Store, size: int = 32) -> None:
        self.store = store
        self.size = size
        entries = store.load(self.FILE, {}).get("recent", [])
        self.recent = [e for e in entries if isinstance(e, list) and len(e) == 2][-size:]

    def status_of(self, command_id: str) -> str | None:
        for cid, status in self.recent:
            if cid == command_id:
                return str(status)
        return None

    def remember(self, command_id: str, status: str) -> None:
        self.recent = [e for e in self.recent if e[0] != command_id]
        self.recent.append([command_id, status])
        if len(self.recent) > self.size:
            self.recent = self.recent[-self.size:]
        self.store.save(self.FILE, {"recent": self.recent})
