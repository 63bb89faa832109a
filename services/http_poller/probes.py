"""The probes the hub knows, keyed by the probe's own id (the mDNS TXT ``id``), never by IP:
a probe whose DHCP lease changes stays the same probe. Discovery and the static list in the
instance file write here; the provisioner and the internal ``/probes`` routes (asked by the
``web`` program for ``GET /api/probes`` and for the probe at a sender's IP) read it. A probe's
readings go through the ``web`` program to the aggregator, never through here."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from shared.timeutil import iso

Via = Literal["mdns", "static"]


@dataclass
class Probe:
    probe_id: str
    name: str
    host: str | None  # the mDNS host name (``probe-kitchen.local.``); informational only
    ip: str
    port: int
    via: Via
    last_seen: float | None = None
    # What the provisioner knows: the hub gave it our URL during this run, and what its /status
    # said last time (to notice a reboot).
    provisioned: bool = False
    uptime_s: float | None = None
    boot_id: str | None = None
    attempts: int = 0  # consecutive failed provisioning rounds (drives the backoff)
    next_check: float = 0.0  # monotonic
    last_error: str | None = None
    # What the probe says of itself (``/whoami``, asked once per boot) and its last ``/status``,
    # and how the last provisioning went: for the dashboard's probes page.
    whoami: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    status_at: float | None = None
    last_provision: dict[str, Any] | None = None

    @property
    def base_url(self) -> str:
        """``http://ip:port``: by IP, because ESP32 mDNS names often do not resolve on hubs."""
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}"

    def view(self) -> dict[str, Any]:
        return {"id": self.probe_id, "name": self.name, "host": self.host, "ip": self.ip,
                "port": self.port, "via": self.via,
                "last_seen": iso(self.last_seen) if self.last_seen else None,
                "provisioned": self.provisioned, "last_error": self.last_error,
                "whoami": self.whoami, "status": self.status,
                "status_at": iso(self.status_at) if self.status_at else None,
                "last_provision": self.last_provision}


def shown(answer: dict[str, Any]) -> dict[str, Any]:
    """A probe's own ``/whoami`` or ``/status`` as the hub keeps it: its scalar fields, strings
    cut short, nothing that looks like a secret (a firmware could echo its token)."""
    out: dict[str, Any] = {}
    for key, value in list(answer.items())[:20]:
        if not isinstance(key, str) or "token" in key.lower() or "secret" in key.lower():
            continue
        if isinstance(value, str):
            out[key[:64]] = value[:200]
        elif value is None or isinstance(value, bool | int | float):
            out[key[:64]] = value
    return out


class ProbeDirectory:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._probes: dict[str, Probe] = {}
        self.changed = threading.Event()  # wakes the provisioner when a probe appears or moves

    def upsert(self, probe_id: str, *, name: str | None, host: str | None, ip: str, port: int,
               via: Via) -> Probe:
        """Add a probe or follow it to a new address; either way it is checked again soon."""
        with self._lock:
            probe = self._probes.get(probe_id)
            if probe is None:
                probe = Probe(probe_id, name or probe_id, host, ip, port, via)
                self._probes[probe_id] = probe
            else:
                moved = (probe.ip, probe.port) != (ip, port)
                probe.ip, probe.port = ip, port
                probe.host = host or probe.host
                probe.name = name or probe.name
                probe.via = via
                if moved:
                    probe.next_check, probe.attempts = 0.0, 0
            if via != "static":
                probe.last_seen = self._clock()
        self.changed.set()
        return probe

    def get(self, probe_id: str) -> Probe | None:
        with self._lock:
            return self._probes.get(probe_id)

    def by_ip(self, ip: str) -> Probe | None:
        with self._lock:
            return next((p for p in self._probes.values() if p.ip == ip), None)

    def all(self) -> list[Probe]:
        with self._lock:
            return list(self._probes.values())

    def views(self) -> list[dict[str, Any]]:
        with self._lock:
            return [p.view() for p in self._probes.values()]
