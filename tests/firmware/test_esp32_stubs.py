"""The firmware type-checks as the device sees it: mypy --strict against MicroPython's ESP32 stubs
(``micropython-esp32-stubs`` from the registry, installed by ``./hub setup`` into the venv's
``micropython-stubs`` directory), in a mypy run of its own, since those stubs replace the
standard library's (firmware/mypy-esp32.ini)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.firmware.device_files import FIRMWARE, device_modules

STUBS = Path(sys.prefix) / "micropython-stubs"
CONFIG = FIRMWARE / "mypy-esp32.ini"


def esp32_mypy(files: list[Path], cache: Path) -> subprocess.CompletedProcess[str]:
    assert (STUBS / "machine.pyi").exists() and (STUBS / "stdlib").is_dir(), (
        f"MicroPython's ESP32 stubs are not in {STUBS}: ./hub setup installs them")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(CONFIG), "--custom-typeshed-dir",
         str(STUBS), "--cache-dir", str(cache), *(str(f.relative_to(ROOT)) for f in files)],
        cwd=ROOT, env={"MYPYPATH": str(STUBS), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=False, timeout=300)


def test_the_device_files_type_check_against_the_esp32_stubs(tmp_path: Path) -> None:
    done = esp32_mypy(device_modules(), tmp_path / "cache")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"no issues found in {len(device_modules())} source files" in done.stdout


def test_the_check_has_teeth(tmp_path: Path) -> None:
    """What the device does not have fails it: a module CPython has and MicroPython does not,
    and a call ``machine`` does not take."""
    package = tmp_path / "firmware"
    package.mkdir()
    (package / "__init__.py").write_text("")
    bad = package / "bad.py"
    bad.write_text("import machine\nimport subprocess\n\n\n"
                   "def f() -> None:\n    machine.Pin('x', bogus=1)\n")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(CONFIG), "--custom-typeshed-dir",
         str(STUBS), "--cache-dir", str(tmp_path / "cache"), "firmware/bad.py"],
        cwd=tmp_path, env={"MYPYPATH": str(STUBS), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert 'module named "subprocess"' in done.stdout
    assert "bogus" in done.stdout
