"""A hub's internal side for the web program's tests, made of the real parts: the aggregator's
and the HTTP poller's apps on real sockets (127.0.0.1, free ports), the poller's probe
directory and provisioner, and the web program's context built from settings that point at
them, with its real batching pusher. Nothing is replaced: the web program talks real HTTP to
real cores."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from services.http_poller.app import create_app as poller_app
from services.http_poller.core import HttpPoller
from services.http_poller.discovery import ProbeBrowser
from services.http_poller.lan import ProbeSide, reboot_announcer
from services.http_poller.probes import ProbeDirectory
from services.http_poller.provisioner import Provisioner
from services.state_aggregator.app import create_app as aggregator_app
from services.state_aggregator.core import Aggregator
from services.web.app import build_context
from services.web.app import create_app as web_app
from services.web.routes import WebContext
from shared.hub_token import hub_token
from shared.instance import parse_instance
from shared.pusher import Pusher
from shared.rest import RestClient
from shared.settings import Settings
from tests.helpers import free_port

SERIAL_ID = "temp_living_room"  # a serial sensor of the instance: no probe may write it
INSTANCE = {"instance_id": "t", "friendly_name": "t", "config": {"sensors": [
    {"sensor_id": SERIAL_ID, "sensor_type": "climate",
     "source": {"type": "serial", "port": "loop://"}}]}}


class Served:
    """A Flask app on a real socket, in a thread (the test's stand-in for gunicorn)."""

    def __init__(self, app: Flask, port: int = 0) -> None:
        self.server: BaseWSGIServer = make_server("127.0.0.1", port, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Hub:
    agg: Aggregator
    directory: ProbeDirectory
    provisioner: Provisioner
    ctx: WebContext
    app: Flask
    web_url: str
    token: str
    csv: Path
    parts: list[Any] = field(default_factory=list)

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        """A request to the web program on its real socket."""
        return requests.request(method, self.web_url + path, timeout=5, **kw)

    @property
    def auth(self) -> dict[str, str]:
        """The hub token's header."""
        return {"X-Token": self.token}

    def stop(self) -> None:
        for part in reversed(self.parts):
            part.stop()


def start_hub(tmp: Path, *, token: str | None = None, discovery: bool = False,
              max_devices: int = 1000, poller: bool = True, key: str | None = None) -> Hub:
    """``token``: SERVER_TOKEN (``None``: the hub generates one under ``tmp``, as a real one
    does; ``Hub.token`` is the token in force either way). ``key``: MASTER_API_KEY."""
    settings = Settings(data_dir=tmp, server_token=token, master_api_key=key)
    token = hub_token(settings)
    instance = parse_instance(INSTANCE)
    agg = Aggregator(instance, handlers={}, cache_ttl=10, poll_interval=5, max_devices=max_devices)
    parts: list[Any] = []
    agg_srv = Served(aggregator_app(agg))
    parts.append(agg_srv)
    agg_client = RestClient(agg_srv.url, name="state-aggregator")
    poller_pusher = Pusher(agg_client, source="http-poller")
    poller_pusher.start()
    parts.append(poller_pusher)

    web_port = free_port()
    web_url = f"http://127.0.0.1:{web_port}"
    directory = ProbeDirectory()
    provisioner = Provisioner(directory, server_url=web_url, interval_ms=2000, token=token,
                              check_every=0.1, timeout=2.0,
                              on_reboot=reboot_announcer(agg_client, poller_pusher.emit))
    browser = ProbeBrowser(directory, interfaces=["127.0.0.1"]) if discovery else None
    side = ProbeSide(directory, provisioner, browser)
    poller_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there without the poller
    if poller:
        poller_srv = Served(poller_app(HttpPoller(instance, poller_pusher.emit, poll_interval=5),
                                       side))
        poller_url = poller_srv.url
        parts.append(poller_srv)
        side.start()
        parts.append(side)

    settings = Settings(state_aggregator_url=agg_srv.url, http_poller_url=poller_url,
                        data_dir=tmp, server_token=token, probe_interval_ms=10_000,
                        master_api_key=key)
    ctx, pusher = build_context(settings)
    pusher.start()
    parts.append(pusher)
    app = web_app(ctx)
    parts.append(Served(app, web_port))
    return Hub(agg, directory, provisioner, ctx, app, web_url, token, tmp / "temperature_log.csv",
               parts)
