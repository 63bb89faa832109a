"""Serve a Flask service under gunicorn with one worker and a few threads (the services keep
their state in memory, so there is exactly one worker process). The configuration is checked
before (``shared.config``), so a broken instance file stops the process before any worker forks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, factory: Callable[[], Flask], options: dict[str, Any]) -> None:
        self._factory = factory
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self._factory()  # runs in the worker, after fork: threads start there


def serve(factory: Callable[[], Flask], *, bind: str, name: str, threads: int = 8) -> None:
    _Gunicorn(
        factory,
        {
            "bind": bind,
            "workers": 1,
            "worker_class": "gthread",
            "threads": threads,
            "proc_name": name,
            "timeout": 60,
            "graceful_timeout": 3,  # all four stop well within docker stop's 10 s
            "keepalive": 75,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            # gunicorn 27's control socket lives in $HOME, which is read-only in the container
            # and shared by all three services on a host; supervisorctl is our control plane.
            "control_socket_disable": True,
        },
    ).run()
