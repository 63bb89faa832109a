"""Serve a service under gunicorn with a master that holds little more than gunicorn itself.

``python -m services.<name>`` checks the settings and the instance file first (a broken one stops
the process before anything forks), then *replaces itself* with a fresh interpreter
(``os.execv``: the same pid, so supervisord keeps tracking and signalling it) running
``python -m services.<name> --gunicorn-master <gunicorn options>``, which starts gunicorn and
nothing else. That master never imports the application: gunicorn loads
``<package>.app:create_app()`` in its one worker only (no ``preload_app``), so Flask, pydantic and
the service's state live in the worker, and nothing the start-up check imported stays behind in
the master. The command line still names the service, for ``ps`` and the benchmark harness.

This module is also the master's gunicorn config file (``-c python:shared.serve``): gunicorn
reads the hooks below from it. It imports only the standard library and ``shared.processes``.

One worker per service, because the services keep their state in memory.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from shared.processes import Process

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


MASTER_FLAG = "--gunicorn-master"


@dataclass(frozen=True)
class Spec:
    """How to serve a process, found by its start-up check: the bind address and the setting
    that chose its port (for the message when it is taken), the worker's threads and class, and
    more gunicorn flags without their ``--``."""

    bind: str
    port_setting: str = "the port setting"
    threads: int = 8
    worker_class: str = "gthread"
    options: Mapping[str, str | int] = field(default_factory=dict)


def gunicorn_args(process: Process, spec: Spec) -> list[str]:
    """The gunicorn options and app of ``process`` (what follows ``MASTER_FLAG``)."""
    flags: dict[str, str | int] = {
        "config": "python:shared.serve",
        "bind": spec.bind,
        "workers": 1,
        "worker-class": spec.worker_class,
        "threads": spec.threads,
        "name": process.name,
        "timeout": 60,
        # No grace at stop: the worker goes at once. supervisord stops the programs one
        # after the other, and any grace is spent in full: the bridge's long poll, whose
        # client is already gone, and the other programs' idle keep-alive connections hold
        # a worker to the end of it (the demo's stop on the host: 7.3 s with 3 s here,
        # 3.2-5.4 s with 1 s, 1.0-1.6 s with 0). Nothing is lost: a service flushes
        # nothing at exit (the aggregator writes its registry when it changes, atomically),
        # and a handler's pusher keeps a batch the aggregator did not answer and resends it.
        "graceful-timeout": 0,
        "keep-alive": 75,
        "error-logfile": "-",
        "log-level": "warning",
        **spec.options,
    }
    args: list[str] = []
    for name, value in flags.items():
        args += [f"--{name}", str(value)]
    # gunicorn 27's control socket lives in $HOME, read-only in the container and shared by
    # every service on a host; supervisorctl is our control plane.
    return [*args, "--no-control-socket", f"{process.module}.app:create_app()"]


def run(process: Process, prepare: Callable[[], Spec]) -> NoReturn:
    """The ``__main__`` of a service: as the master (``MASTER_FLAG``), run gunicorn; else check
    the configuration with ``prepare`` and exec the master."""
    if sys.argv[1:2] == [MASTER_FLAG]:
        from gunicorn.app.wsgiapp import WSGIApplication

        sys.argv = [f"{process.name} (gunicorn)", *sys.argv[2:]]
        WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").run()
        raise SystemExit(0)
    spec = prepare()
    # Here, not at the top: this module is also the master's config file (standard library).
    from shared.portcheck import ensure_free

    if not ensure_free(spec.bind, spec.port_setting):
        raise SystemExit(2)  # as a configuration error: supervisord does not retry it
    argv = [sys.executable, "-m", process.module, MASTER_FLAG, *gunicorn_args(process, spec)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)  # noqa: S606 (our own interpreter, a fixed argv)


# --- gunicorn hooks (this module is the master's config file) -------------------------------------


def die_with_parent(parent_pid: int) -> None:
    """Have Linux SIGKILL this process when its parent dies, even by ``kill -9``: an orphaned
    worker would keep the listening socket, and the restarted service could not bind it.
    gunicorn's own check of ``getppid()`` only runs between requests and then waits for them;
    this does not wait. The check after ``prctl`` closes the race of a parent that died first."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent_pid:
        os._exit(1)


def post_fork(server: Any, worker: Any) -> None:
    """gunicorn hook, in the worker right after the fork."""
    die_with_parent(server.pid)


def post_worker_init(worker: Any) -> None:
    """gunicorn hook, in the worker once the app is loaded: what loading the instance file
    freed goes back to the system (``shared.compact.give_back_soon``)."""
    from shared.compact import give_back_soon

    give_back_soon()


def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
    """gunicorn hook, in the worker after each request: a request's peak (an ingest batch, a
    page of changes, a snapshot) goes back to the system once requests pause (a burst of them
    gets one trim, after it; see ``shared.compact.give_back_soon``)."""
    from shared.compact import give_back_soon

    give_back_soon()
