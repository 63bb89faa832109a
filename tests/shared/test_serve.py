"""shared.serve: the gunicorn master's command line, and the worker's parent-death guard with
real processes (a parent killed with SIGKILL must take its child along)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from shared.processes import STATE_AGGREGATOR, WEB
from shared.serve import Spec, gunicorn_args
from tests.helpers import wait_for

# A parent that forks a child; the child asks to die with its parent, then waits for ever. The
# parent prints the child's pid and waits for ever too (until the test kills it).
PARENT = """
import os, sys, time
from shared.serve import die_with_parent
parent = os.getpid()
child = os.fork()
if child == 0:
    die_with_parent(parent)
    while True:
        time.sleep(60)
print(child, flush=True)
while True:
    time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_worker_dies_with_its_master_even_on_kill_9() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(5)
        wait_for(lambda: not alive(child), timeout=2, what="the child to die with its parent")
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_the_master_loads_the_app_in_the_worker_only() -> None:
    args = gunicorn_args(STATE_AGGREGATOR, Spec(bind="127.0.0.1:5003", threads=16))
    assert args[-1] == "services.state_aggregator.app:create_app()"
    assert "--preload" not in args and "--no-control-socket" in args
    assert args[args.index("--config") + 1] == "python:shared.serve"  # the hooks: stdlib only
    assert args[args.index("--workers") + 1] == "1"
    web = gunicorn_args(WEB, Spec(bind="0.0.0.0:8088", worker_class="services.web.worker.LanWorker",
                                  options={"worker-connections": 256, "keep-alive": 5}))
    assert web[web.index("--keep-alive") + 1] == "5"  # an option overrides the default
    assert web.count("--keep-alive") == 1
    assert web[web.index("--worker-class") + 1] == "services.web.worker.LanWorker"

