"""Start a Flask service under gunicorn: check the configuration first (so a broken instance
file stops the process with a clear message before any worker forks), wait for the services it
depends on with a deadline, then serve with one worker and a few threads (the services keep
their state in memory, so there is exactly one worker process)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import requests
from flask import Flask
from gunicorn.app.base import BaseApplication

from shared.errors import ConfigError
from shared.instance import Instance, load_instance
from shared.log import setup_logging
from shared.settings import Settings, load_settings

log = logging.getLogger(__name__)


def load_config(process: str) -> tuple[Settings, Instance]:
    """Settings and instance file, or exit with status 2 and the reason on stderr."""
    try:
        settings = load_settings()
        setup_logging(process, settings.effective_log_level,
                      development=settings.mode == "development")
        instance = load_instance(settings.instance_file, expected_id=settings.instance_name)
    except ConfigError as exc:
        print(f"{process}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from exc
    return settings, instance


def wait_for_health(urls: Sequence[str], *, deadline_s: float = 60.0) -> None:
    """Poll each ``{url}/health`` until it answers 200; exit 1 when the deadline passes."""
    session = requests.Session()
    session.trust_env = False
    for url in urls:
        end = time.monotonic() + deadline_s
        while True:
            try:
                if session.get(f"{url}/health", timeout=1.0).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > end:
                log.error("%s/health did not answer within %.0f s; giving up", url, deadline_s)
                raise SystemExit(1)
            time.sleep(0.1)


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
