"""The host HAL: a virtual probe on CPython. Storage is a state directory, the network is the
host's sockets, the mDNS advertisement is zeroconf (one ``Zeroconf`` may be shared by many
virtual probes in one process), ``reset()`` raises ``Reboot`` for the runner, and the two OTA
image slots are files.

``speed`` runs the probe's own clock faster than the host's: its ticks, sleeps and waits (so its
sampling interval, upload backoff, check-ins and fail-back timers) count ``speed`` times as fast,
so a test can live through a minute of a probe's life in a few seconds. The wall clock it stamps
readings with (``time_s``) and network timeouts stay real: the hub sees true times."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import secrets
import select
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from zeroconf import ServiceInfo, Zeroconf

from . import Hal, Reboot


def lan_ip() -> str:
    """The address of the default route (no packet is sent: a UDP connect only picks a route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: looked up in the routing table only
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


class HostHal(Hal):
    def __init__(self, state_dir: str | Path, *, probe_id: str, bind: str = "0.0.0.0",
                 advertise_ip: str | None = None, zeroconf: Zeroconf | None = None,
                 speed: float = 1.0) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed!r}")
        self.speed = speed
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bind = bind
        self.advertise_ip = advertise_ip
        self.zeroconf = zeroconf
        self._service: ServiceInfo | None = None
        self._t0 = time.monotonic()
        digest = hashlib.sha256(probe_id.encode()).digest()  # a stable, locally administered MAC
        self._mac = ":".join("%02x" % b for b in bytes([digest[0] & 0xFE | 0x02]) + digest[1:6])
        self.resets = 0
        self.led = False
        self._lock = threading.Lock()

    def mac(self) -> str:
        return self._mac

    def hardware(self) -> str:
        return f"virtual probe (CPython {sys.version.split()[0]})"

    def ticks_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000 * self.speed)

    def time_s(self) -> float:
        return round(time.time(), 3)

    def sleep_ms(self, ms: int) -> None:
        time.sleep(ms / 1000 / self.speed)

    def random_hex(self, n: int) -> str:
        return secrets.token_hex((n + 1) // 2)[:n]

    # storage
    def _path(self, name: str) -> Path:
        if "/" in name or name.startswith("."):
            raise ValueError(f"not a plain file name: {name!r}")
        return self.dir / name

    def read(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        path = self._path(name)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def open(self, name: str, mode: str) -> Any:
        return open(self._path(name), mode)  # the caller closes it

    def remove(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    # network
    def connect_wifi(self, ssid: str, password: str, timeout_ms: int) -> bool:
        return True  # the host is on its network already

    def start_access_point(self, ssid: str) -> str:
        return self.ip()

    def ip(self) -> str:
        return self.advertise_ip or (self.bind if self.bind not in ("0.0.0.0", "") else lan_ip())

    def rssi(self) -> int | None:
        return None

    def listen(self, port: int) -> Any:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.bind, port))
        sock.listen(8)
        return sock

    def bound_port(self, sock: Any) -> int:
        return int(sock.getsockname()[1])

    def wait_readable(self, sock: Any, timeout_ms: int) -> bool:
        readable, _, _ = select.select([sock], [], [], timeout_ms / 1000 / self.speed)
        return bool(readable)

    def connect(self, host: str, port: int, timeout_s: float) -> Any:
        return socket.create_connection((host, port), timeout=timeout_s)

    def advertise(self, service: str, port: int, txt: dict[str, Any]) -> None:
        if self.zeroconf is None:
            return
        stype = f"{service}.local."
        label = str(txt.get("id", "probe"))
        info = ServiceInfo(stype, f"{label}.{stype}", port=port,
                           addresses=[socket.inet_aton(self.ip())], server=f"{label}.local.",
                           properties={k: str(v) for k, v in txt.items()})
        self.withdraw()
        self.zeroconf.register_service(info, allow_name_change=True)
        self._service = info

    def withdraw(self) -> None:
        if self._service is not None and self.zeroconf is not None:
            self.zeroconf.unregister_service(self._service)
            self._service = None

    def set_led(self, on: bool) -> None:
        self.led = on

    # system
    def free_memory(self) -> int:
        return 4 * 1024 * 1024  # what a virtual probe reports: nothing real to measure

    def collect(self) -> None:
        gc.collect(0)

    def reset(self) -> None:
        self.resets += 1
        raise Reboot("reset requested")

    # OTA slots: files; ota.json says which one boots
    def _ota(self) -> dict[str, Any]:
        raw = self.read("ota_slots.json")
        return json.loads(raw) if raw else {"active": "a", "previous": None}

    def image_begin(self) -> None:
        inactive = "b" if self._ota()["active"] == "a" else "a"
        self._path(f"image_{inactive}.bin").write_bytes(b"")

    def image_write(self, chunk: bytes) -> None:
        inactive = "b" if self._ota()["active"] == "a" else "a"
        with self._path(f"image_{inactive}.bin").open("ab") as f:
            f.write(chunk)

    def image_switch(self) -> None:
        slots = self._ota()
        inactive = "b" if slots["active"] == "a" else "a"
        self.write("ota_slots.json", json.dumps({"active": inactive,
                                                 "previous": slots["active"]}).encode())

    def image_rollback(self) -> None:
        slots = self._ota()
        if slots.get("previous"):
            self.write("ota_slots.json", json.dumps({"active": slots["previous"],
                                                     "previous": None}).encode())

    def active_image(self) -> str:
        return str(self._ota()["active"])
