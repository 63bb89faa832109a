"""``python -m services.web``: check the configuration, then become the gunicorn master of the
LAN port (see ``shared.serve``: the app is loaded in the worker only, and ``worker.LanWorker``
reads each request whole before a thread serves it)."""

import os

from shared.config import load_config
from shared.processes import WEB
from shared.serve import serve

from .worker import TIMEOUT_ENV


def main() -> None:
    settings, _ = load_config(WEB.name)
    os.environ[TIMEOUT_ENV] = str(settings.web_request_timeout)
    serve(WEB, bind=f"{settings.host}:{settings.port}", threads=settings.web_threads,
          worker_class="services.web.worker.LanWorker",
          # keep-alive: a probe posts every few seconds at most; an idle LAN socket is not kept
          # for long. worker-connections: the open LAN sockets at most (more wait in the backlog).
          options={"worker-connections": settings.web_connections, "keep-alive": 5})


if __name__ == "__main__":
    main()
