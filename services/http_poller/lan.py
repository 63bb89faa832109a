"""The probe side of the poller process, put together: the directory, mDNS discovery, the
provisioner, ingest and the LAN API server on ``HOST:PORT``.

Why a second server in a thread, not a second gunicorn bind: gunicorn hands every bind to the
same app, so the internal endpoints would have to be hidden per listening port (the WSGI
``SERVER_PORT`` comes from the ``Host`` header, which a LAN client controls). A separate
werkzeug threaded server with its own Flask app has no route to the internal endpoints at all,
starts and stops with this object (tests run it on a free port), and easily carries the load of
a few dozen probes pushing every few seconds. It is started in ``create_app``, i.e. inside the
one gunicorn worker, next to the state it serves.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from shared.instance import Instance, ProbeSource
from shared.models import EventObs, RegisterDevice
from shared.rest import RestClient
from shared.settings import Settings

from .api import LanContext, create_lan_app
from .csvlog import CsvLog, resolve
from .discovery import ProbeBrowser, interfaces_from
from .ingest import Ingest
from .probes import Probe, ProbeDirectory
from .provisioner import Provisioner, public_base

log = logging.getLogger(__name__)


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one log line per probe reading would drown the log

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("lan api: " + format, *args)  # noqa: G003 (werkzeug's format string)


class LanServer:
    """A threaded WSGI server for the LAN API in a daemon thread."""

    def __init__(self, app: Any, *, host: str, port: int) -> None:
        self._server: BaseWSGIServer = make_server(host, port, app, threaded=True,
                                                   request_handler=_QuietHandler)
        self.host = host
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, name="lan-api",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("probe API listening on %s:%d", self.host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class ProbeSide:
    directory: ProbeDirectory
    ingest: Ingest
    provisioner: Provisioner | None
    browser: ProbeBrowser | None
    server: LanServer | None = None
    error: str | None = None
    started: list[str] = field(default_factory=list)

    def start(self, *, host: str, port: int) -> None:
        """Serve the LAN API and start discovery and provisioning; a part that cannot start
        is logged and reported on ``/health``, the HTTP polling goes on without it."""
        app = create_lan_app(LanContext(self.ingest, self.directory, self.provisioner))
        try:
            self.server = LanServer(app, host=host, port=port)
            self.server.start()
            self.started.append("lan-api")
        except OSError as exc:
            self.error = f"cannot listen on {host}:{port}: {exc}"
            log.error("probe API: %s; probes cannot push readings", self.error)
        for name, part in (("discovery", self.browser), ("provisioner", self.provisioner)):
            if part is None:
                continue
            try:
                part.start()
                self.started.append(name)
            except Exception:
                log.exception("probe %s failed to start", name)

    def stop(self) -> None:
        for part in (self.provisioner, self.browser, self.server):
            if part is not None:
                part.stop()

    def status(self) -> dict[str, Any]:
        return {"port": self.server.port if self.server else None, "running": self.started,
                "error": self.error, "probes": len(self.directory.all()),
                "ingested": self.ingest.accepted, "csv_rows": self.ingest.csv.rows}


def build_probe_side(settings: Settings, instance: Instance, emit: Any) -> ProbeSide:
    """Everything the probe side needs, from the environment and the instance file."""
    directory = ProbeDirectory()
    for sensor in instance.sensors_of("probe"):
        src = sensor.source
        if isinstance(src, ProbeSource) and src.ip:
            directory.upsert(sensor.sensor_id, name=sensor.friendly_name, host=None, ip=src.ip,
                             port=src.port, via="static")
    aggregator = RestClient(settings.state_aggregator, name="state-aggregator")

    def register(request: RegisterDevice) -> None:
        aggregator.post("/devices/register", request.model_dump())

    token = settings.server_token.get_secret_value() if settings.server_token else None
    interval_s = settings.probe_interval_ms / 1000
    ingest = Ingest(emit=emit, register=register,
                    csv=CsvLog(resolve(settings.csv_file, settings.data_dir)),
                    directory=directory, token=token, interval_s=interval_s,
                    clock=time.time)
    url = public_base(settings.public_base, host=settings.host, port=settings.port)

    def rebooted(probe: Probe) -> None:
        if ingest.knows(probe.probe_id):  # an event for an unregistered device would bounce
            emit(EventObs(device_id=probe.probe_id, ts=time.time(), event="probe_rebooted"))

    provisioner = Provisioner(directory, server_url=url, interval_ms=settings.probe_interval_ms,
                              token=token, on_reboot=rebooted)
    browser = (ProbeBrowser(directory, interfaces=interfaces_from(settings.mdns_interfaces))
               if settings.probe_discovery else None)
    return ProbeSide(directory, ingest, provisioner, browser)
