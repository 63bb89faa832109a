"""Which files of firmware/ go on the device: all but the host's own (the runner of virtual
probes and the host HAL, which import CPython-only modules)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ROOT

FIRMWARE = ROOT / "firmware"
HOST_ONLY = {FIRMWARE / "host.py", FIRMWARE / "hal" / "host.py"}


def device_modules() -> list[Path]:
    return sorted(p for p in FIRMWARE.rglob("*.py")
                  if p not in HOST_ONLY and "micropython" not in p.parts)
