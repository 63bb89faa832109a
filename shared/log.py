"""One logging setup for every process: plain lines on stdout, which supervisord (and
``docker logs``) collect."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)-7s [%(process_name)s] %(name)s: %(message)s"
_DEV_FORMAT = "%(asctime)s %(levelname)-7s [%(process_name)s/%(threadName)s] %(name)s: %(message)s"


class _ProcessName(logging.Filter):
    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_name = self._name
        return True


def setup_logging(process_name: str, level: str = "INFO", *, development: bool = False) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(_DEV_FORMAT if development else _FORMAT))
    handler.addFilter(_ProcessName(process_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-request access lines would drown the readings; gunicorn logs errors.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
