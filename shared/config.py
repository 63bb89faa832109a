"""Start-up of every process: settings and instance file checked before anything else (a broken
one stops the process with a clear message), and waiting for the services it needs with a
deadline instead of a sleep. No Flask or gunicorn here: the MQTT bridge imports this too.

``check_config`` is the one check: every program calls it through ``load_config`` at start, and
``python -m shared.instance`` (what ``./hub run`` and the container entrypoint run before
supervisord) calls it too, so the checker accepts exactly what the programs accept."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence

from shared import memprofile
from shared.errors import ConfigError
from shared.instance import Instance, load_instance
from shared.log import setup_logging
from shared.settings import Settings, load_settings

log = logging.getLogger(__name__)


CONFIG_ERROR_EXIT = 2
"""A program's exit status for a configuration error. supervisord.conf lists it in
``exitcodes``: a program that stops on a bad configuration is not restarted, since retrying
would only print the same message again."""
HEALTH_ASK_TIMEOUT_S = 5.0  # see wait_for_health


def check_config() -> tuple[Settings, Instance]:
    """The environment's settings and its instance file ``{INSTANCES_DIR}/{INSTANCE_NAME}.json``,
    validated as every program needs them (``instance_id`` equal to ``INSTANCE_NAME``,
    ``${VAR}`` expanded); ``ConfigError`` names the variable or the file, field and problem."""
    settings = load_settings()
    instance = load_instance(settings.instance_file, expected_id=settings.instance_name)
    return settings, instance


def load_config(process: str) -> tuple[Settings, Instance]:
    """``check_config``, or exit with ``CONFIG_ERROR_EXIT`` and the reason on stderr.

    Call it first thing in a program's ``main``, before importing Flask, gunicorn or paho: a
    program that exits within supervisord's ``startsecs`` counts as a failed start, so a bad
    configuration ends in FATAL at once instead of a restart loop."""
    memprofile.install(process)  # a no-op unless MEMPROFILE_DIR is set (bench --profile)
    try:
        settings, instance = check_config()
        settings.internal_secret  # noqa: B018  (made or checked now: a bad one stops here)
    except ConfigError as exc:
        print(f"{process}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(CONFIG_ERROR_EXIT) from exc
    setup_logging(process, settings.effective_log_level,
                  development=settings.mode == "development")
    return settings, instance


def wait_for_health(urls: Sequence[str], *, secret: str, deadline_s: float = 60.0) -> None:
    """Poll each internal service's ``{url}/health`` (with the instance's ``secret``) until it
    answers 200; exit 1 when the deadline passes. A request may take ``HEALTH_ASK_TIMEOUT_S``:
    the aggregator's answer includes its handlers', each asked with a 1 s timeout, so a handler
    that holds a connection without answering makes it a second late, and a shorter timeout
    here never saw it answer (a program waiting on it then gave up after a minute)."""
    import requests  # here, not at the top: load_config runs before any heavy import

    from shared.internal import HEADER

    session = requests.Session()
    session.trust_env = False
    session.headers[HEADER] = secret
    for url in urls:
        end = time.monotonic() + deadline_s
        while True:
            try:
                if session.get(f"{url}/health", timeout=HEALTH_ASK_TIMEOUT_S).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > end:
                log.error("%s/health did not answer within %.0f s; giving up", url, deadline_s)
                raise SystemExit(1)
            time.sleep(0.1)
