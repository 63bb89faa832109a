"""shared.serve: the gunicorn master's command line, the worker's parent-death guard with
real processes (a parent killed with SIGKILL must take its child along), and the hook that gives
a request's peak back to the system, in a real gunicorn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from shared.compact import MAX_WAIT_S, QUIET_S
from shared.processes import STATE_AGGREGATOR, WEB
from shared.serve import Spec, gunicorn_args
from tests.helpers import free_port, wait_for

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



def test_a_requests_peak_goes_back_to_the_system_after_it() -> None:
    """gunicorn with this module as its config (as every service runs) and a gthread worker:
    a request that freed a peak (a few of its objects kept) leaves the worker's RSS where the
    peak took it until the ``post_request`` hook's trim; then the peak is given back."""
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONMALLOC", "MALLOC_"))}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "python:shared.serve", "--bind",
         f"127.0.0.1:{port}", "--worker-class", "gthread", "--threads", "2", "--workers", "1",
         "--no-control-socket", "tests.shared.peak_app:app"],
        cwd=root, env={**env, "PYTHONPATH": str(root)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def rss_and_trims(path: str = "/rss") -> tuple[float, int] | None:
        try:
            rss, trims = requests.get(f"{url}{path}", timeout=60).text.split()
        except requests.RequestException:
            return None
        return float(rss), int(trims)

    # Polled less often than QUIET_S: each request asks for a trim, and one that comes sooner
    # postpones it (up to MAX_WAIT_S).
    try:
        # the worker's own trim after loading the app (post_worker_init) is behind it
        idle, _ = wait_for(lambda: (r := rss_and_trims()) is not None and r[1] >= 1 and r,
                           timeout=30, interval=2 * QUIET_S,
                           what="gunicorn serving, its start-up trim made")
        rss, trims = wait_for(lambda: rss_and_trims("/peak"))
        assert rss > idle + 50  # freed, and still held: the peak is real
        wait_for(lambda: (r := rss_and_trims()) is not None and r[0] < idle + 10 and r[1] > trims,
                 timeout=MAX_WAIT_S + 10, interval=2 * QUIET_S,
                 what=lambda: f"the peak given back ({rss_and_trims()}, idle {idle})")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)
