"""Start-up of every process: settings and instance file checked before anything else (a broken
one stops the process with a clear message), and waiting for the services it needs with a
deadline instead of a sleep. No Flask or gunicorn here: the MQTT bridge imports this too."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence

import requests

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
