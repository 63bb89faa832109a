"""The ``hub_system`` device: the hub reporting on its own host, so a user sees a filling disk or
a hot CPU on MQTT like any other sensor.

Every interval it samples the disk usage of the filesystem that holds ``DATA_DIR`` (where the
outbox and the CSV log grow), the CPU temperature where ``/sys/class/thermal`` exposes one, and
the load average. A value the platform does not expose is left out, never guessed.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from shared.models import ReadingObs, RegisterDevice

from .core import Aggregator

log = logging.getLogger(__name__)

DEVICE_ID = "hub_system"
THERMAL_ROOT = Path("/sys/class/thermal")
# Zone types that measure the CPU package or SoC, best first; other zones (battery, wifi,
# ACPI board sensors) are only used when none of these exists.
_CPU_ZONES = ("x86_pkg_temp", "cpu", "soc", "coretemp", "k10temp", "acpitz")
UNITS = {"disk_total": "B", "disk_used": "B", "disk_free": "B", "disk_used_percent": "%",
         "cpu_temperature": "°C"}


def disk_usage(path: Path) -> dict[str, Any]:
    """Total, used and free bytes and the used percentage of the filesystem holding ``path``."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # DATA_DIR may not exist yet; its filesystem does
    try:
        usage = shutil.disk_usage(probe)
    except OSError as exc:
        log.warning("cannot read the disk usage of %s: %s", probe, exc)
        return {}
    percent = round(100.0 * usage.used / usage.total, 1) if usage.total else 0.0
    return {"disk_total": usage.total, "disk_used": usage.used, "disk_free": usage.free,
            "disk_used_percent": percent}


def cpu_temperature(root: Path = THERMAL_ROOT) -> float | None:
    """The CPU temperature in °C from the kernel's thermal zones, or ``None`` when there is none."""
    zones: list[tuple[int, str, float]] = []
    for zone in sorted(root.glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip().lower()
            millideg = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue  # a zone may exist but refuse reads (sensor asleep, permissions)
        rank = next((i for i, name in enumerate(_CPU_ZONES) if name in kind), len(_CPU_ZONES))
        zones.append((rank, zone.name, millideg / 1000.0))
    if not zones:
        return None
    return round(min(zones)[2], 1)


def sample(data_dir: Path, *, thermal_root: Path = THERMAL_ROOT) -> dict[str, Any]:
    values = disk_usage(data_dir)
    temp = cpu_temperature(thermal_root)
    if temp is not None:
        values["cpu_temperature"] = temp
    try:
        load1, load5, load15 = os.getloadavg()
    except OSError:
        pass  # not every platform has it
    else:
        values.update(load_1m=round(load1, 2), load_5m=round(load5, 2), load_15m=round(load15, 2))
    return values


class SystemSampler:
    """Registers ``hub_system`` in the aggregator and feeds it a reading every ``interval``."""

    def __init__(self, aggregator: Aggregator, *, data_dir: Path, interval: float,
                 thermal_root: Path = THERMAL_ROOT) -> None:
        self._agg = aggregator
        self._data_dir = data_dir
        self.interval = interval
        self._thermal_root = thermal_root
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._agg.register(RegisterDevice(
            device_id=DEVICE_ID, name="Hub system", model="sensor-hub host",
            sensor_type="system", source="system", interval=self.interval, units=UNITS))
        self._thread = threading.Thread(target=self._run, name="hub-system", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def sample_once(self) -> ReadingObs | None:
        values = sample(self._data_dir, thermal_root=self._thermal_root)
        if not values:
            return None
        reading = ReadingObs(device_id=DEVICE_ID, ts=self._agg.clock(), values=values)
        self._agg.ingest([reading], source="system")
        return reading

    def _run(self) -> None:
        while True:
            try:
                self.sample_once()
            except Exception:
                log.exception("sampling the hub's own health failed; trying again next interval")
            if self._stop.wait(self.interval):
                return
