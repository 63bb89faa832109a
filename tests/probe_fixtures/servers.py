"""Real HTTP servers for tests: HTTP sensors that behave well or badly, and a fake ESP32 probe
that speaks the probe protocol (``/whoami``, ``/status``, ``/provision``) and pushes readings to
the hub like the firmware does. Each runs a stdlib ``ThreadingHTTPServer`` on a free port."""

from __future__ import annotations

import socket
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import requests


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: Any) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.owner = owner


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real sensors and the poller use it
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status: int, body: bytes | Any, ctype: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.owner.handle(self, "GET", self._body())

    def do_POST(self) -> None:
        self.server.owner.handle(self, "POST", self._body())


class _Running:
    def __init__(self) -> None:
        self.server = _Server(self)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, h: _Handler, method: str, body: bytes) -> None:
        raise NotImplementedError


class SensorServer(_Running):
    """HTTP sensors on one port, one per path:

    - ``/good``: ``{"data": {"motion": m, "lux": 120.5}, "battery": 90}`` (``motion`` settable)
    - ``/slow``: answers after ``slow_s`` seconds (longer than the poller's timeout)
    - ``/error``: 500
    - ``/garbage``: ``text/html`` that is not JSON
    - ``/mismatch``: JSON that does not have what the mapping looks for
    - ``/flaky``: 500 while ``flaky_fail`` is set, else like ``/good``
    """

    def __init__(self, *, slow_s: float = 1.0) -> None:
        self.motion = False
        self.slow_s = slow_s
        self.flaky_fail = True
        self.hits: dict[str, int] = {}
        self._release = threading.Event()
        super().__init__()

    def close(self) -> None:
        self._release.set()
        super().close()

    def _good(self) -> dict[str, Any]:
        return {"data": {"motion": self.motion, "lux": 120.5}, "battery": 90}

    def handle(self, h: _Handler, method: str, body: bytes) -> None:
        self.hits[h.path] = self.hits.get(h.path, 0) + 1
        if h.path == "/good" or (h.path == "/flaky" and not self.flaky_fail):
            h._answer(200, self._good())
        elif h.path == "/slow":
            self._release.wait(self.slow_s)  # a sensor that is slow to answer, not a test wait
            h._answer(200, self._good())
        elif h.path in ("/error", "/flaky"):
            h._answer(500, {"error": "boom"})
        elif h.path == "/garbage":
            h._answer(200, b"<html>oops</html>", "text/html")
        elif h.path == "/mismatch":
            h._answer(200, {"unexpected": [1, 2, 3]})
        else:
            h._answer(404, {"error": "no such sensor"})


@dataclass
class FakeProbe(_Running):
    """An ESP32 probe as the firmware behaves: it answers ``/whoami`` and ``/status``, takes
    ``{server_url, interval_ms, token}`` on ``/provision``, and ``push()`` POSTs a reading to
    ``{server_url}/api/ingest`` with the token in ``X-Token``."""

    probe_id: str = "probe_kitchen"
    name: str = "Kitchen probe"
    server_url: str | None = None
    interval_ms: int | None = None
    token: str | None = None
    uptime_s: int = 5
    boot_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    provisions: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        _Running.__init__(self)

    def handle(self, h: _Handler, method: str, body: bytes) -> None:
        if method == "GET" and h.path == "/whoami":
            h._answer(200, {"id": self.probe_id, "name": self.name, "mac": "24:6F:28:00:00:01",
                            "fw": "1.0.0-test"})
        elif method == "GET" and h.path == "/status":
            self.uptime_s += 1
            h._answer(200, {"id": self.probe_id, "server_url": self.server_url,
                            "interval_ms": self.interval_ms, "uptime_s": self.uptime_s,
                            "boot_id": self.boot_id, "provisioned": self.server_url is not None})
        elif method == "POST" and h.path == "/provision":
            try:
                cfg = orjson.loads(body)
                self.server_url, self.interval_ms, self.token = (
                    cfg["server_url"], int(cfg["interval_ms"]), cfg.get("token"))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                h._answer(400, {"ok": False, "error": "bad provision body"})
                return
            self.provisions.append(cfg)
            h._answer(200, {"ok": True})
        else:
            h._answer(404, {"ok": False})

    def reboot(self) -> None:
        """Power-cycle: uptime restarts, a new boot id, and the provisioning is lost."""
        self.uptime_s, self.boot_id = 1, uuid.uuid4().hex[:8]
        self.server_url = self.interval_ms = self.token = None

    def push(self, **readings: float | str) -> requests.Response:
        assert self.server_url, "the probe is not provisioned"
        headers = {"X-Token": self.token} if self.token else {}
        return requests.post(f"{self.server_url}/api/ingest", timeout=5, headers=headers,
                             json={"probe_id": self.probe_id, **readings})


def loopback_ip() -> bytes:
    return socket.inet_aton("127.0.0.1")
