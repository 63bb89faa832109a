"""The memory profile of ``bench --profile``: a process with ``MEMPROFILE_DIR`` set writes its
tracemalloc top when the request file holds a new tag, and one without it does nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys, time
from shared import memprofile
memprofile.install("probe")
kept = [bytes(200) for _ in range(20_000)]  # about 4.5 MB, allocated where traced
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


def _run(env_dir: Path | None) -> subprocess.Popen[str]:
    env = {"PATH": "/usr/bin:/bin", **({"MEMPROFILE_DIR": str(env_dir)} if env_dir else {})}
    proc = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_a_request_gets_the_top_allocations_of_the_process(tmp_path: Path) -> None:
    proc = _run(tmp_path)
    try:
        (tmp_path / "request").write_text("one\n")
        out = wait_for(lambda: next(tmp_path.glob(f"probe-{proc.pid}-one.txt"), None),
                       what="the profile file")
        text = out.read_text()
        assert text.startswith("traced: ") and "## by line" in text and "## tracebacks" in text
        top = text.split("## by line\n")[1].splitlines()[0]
        assert "<string>:5" in top, top  # the list above is the largest allocation
    finally:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(10)


def test_without_the_variable_nothing_is_traced(tmp_path: Path) -> None:
    code = ("from shared import memprofile; import tracemalloc, threading; "
            "memprofile.install('probe'); "
            "print(tracemalloc.is_tracing(), [t.name for t in threading.enumerate()])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={"PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False ['MainThread']"
