"""``python -m services.web``: check the configuration, then become the gunicorn master of the
LAN port (see ``shared.serve``: the app is loaded in the worker only, and ``worker.LanWorker``
reads each request whole before a thread serves it)."""

import os

from shared.processes import WEB
from shared.serve import Spec, run

from .worker import TIMEOUT_ENV


def prepare() -> Spec:
    # Imported here: the gunicorn master runs this module too and must not hold it.
    from shared.config import load_config

    settings, _ = load_config(WEB.name)
    os.environ[TIMEOUT_ENV] = str(settings.web_request_timeout)
    # keep-alive: a probe posts every few seconds at most; an idle LAN socket is not kept for
    # long. worker-connections: the open LAN sockets at most (see worker.py when they are full).
    return Spec(bind=f"{settings.host}:{settings.port}", port_setting="PORT",
                threads=settings.web_threads,
                worker_class="services.web.worker.LanWorker",
                options={"worker-connections": settings.web_connections, "keep-alive": 5})


if __name__ == "__main__":
    run(WEB, prepare)
