"""The internal REST client against real HTTP servers: keep-alive, a dropped keep-alive
connection, timeouts, refusals and error answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.errors import ServiceError
from shared.jsonutil import dumps, loads
from shared.rest import RestClient
from tests.helpers import free_port


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless a handler closes the connection
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, body: object) -> None:
        data = dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.peers.append(self.client_address)
        if self.path.startswith("/drop"):
            # Answers as a keep-alive server would, then closes the connection as gunicorn
            # does with an idle one: the client only finds out on its next request.
            self._answer(200, {"path": self.path})
            self.close_connection = True
        elif self.path == "/missing":
            self._answer(404, {"error": "unknown_device", "message": "unknown device 'x'"})
        else:
            self._answer(200, {"path": self.path})

    def do_POST(self) -> None:
        self.server.peers.append(self.client_address)
        length = int(self.headers["Content-Length"])
        self._answer(200, {"echo": loads(self.rfile.read(length))})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    peers: list[tuple[str, int]]


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", free_port()), _Handler)
    srv.peers = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv: _Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def test_calls_reuse_one_connection_per_thread(server: _Server) -> None:
    client = RestClient(_url(server), name="svc")
    assert client.get("/a", params={"since": 3, "epoch": None}) == {"path": "/a?since=3"}
    assert client.post("/b", {"x": [1, 2]}) == {"echo": {"x": [1, 2]}}
    assert client.post("/c", b'{"raw":true}') == {"echo": {"raw": True}}
    assert len(set(server.peers)) == 1  # one client port: the same keep-alive connection
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(client.get("/d")))
    thread.start()
    thread.join()
    assert other == [{"path": "/d"}] and len(set(server.peers)) == 2


def test_a_dropped_keep_alive_connection_is_reopened_once(server: _Server) -> None:
    client = RestClient(_url(server), name="svc")
    for i in range(5):  # every answer is followed by the server closing the connection
        assert client.get(f"/drop{i}") == {"path": f"/drop{i}"}
    assert len(set(server.peers)) == 5


def test_an_error_answer_keeps_status_and_body(server: _Server) -> None:
    client = RestClient(_url(server), name="svc")
    with pytest.raises(ServiceError, match="svc GET /missing failed with 404: unknown device") as err:
        client.get("/missing")
    assert err.value.status == 404
    assert err.value.body == {"error": "unknown_device", "message": "unknown device 'x'"}
    assert client.get("/after") == {"path": "/after"}  # the connection is still good


def test_a_refused_connection_is_a_service_error() -> None:
    client = RestClient(f"http://127.0.0.1:{free_port()}", name="svc")
    with pytest.raises(ServiceError, match=r"svc at .* is unreachable") as err:
        client.get("/x")
    assert err.value.status == 0


def test_a_silent_server_times_out_and_the_next_call_starts_afresh(server: _Server) -> None:
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
    try:
        client = RestClient(f"http://127.0.0.1:{silent.getsockname()[1]}", name="svc")
        started = time.monotonic()
        with pytest.raises(ServiceError, match=r"did not answer within 0\.3 s"):
            client.get("/x", timeout=0.3)
        assert time.monotonic() - started < 3
        assert client._local.conn is None  # a late answer can never be read as the next one's
    finally:
        silent.close()
        for sock in accepted:
            sock.close()


def test_a_base_url_that_is_not_http_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="is not an http:// URL"):
        RestClient("127.0.0.1:5003", name="svc")


def test_get_bytes_leaves_the_body_to_the_caller(server: _Server) -> None:
    client = RestClient(_url(server), name="svc")
    assert loads(client.get_bytes("/raw", params={"a": 1})) == {"path": "/raw?a=1"}
    with pytest.raises(ServiceError, match="failed with 404: unknown device") as err:
        client.get_bytes("/missing")
    assert err.value.body == {"error": "unknown_device", "message": "unknown device 'x'"}
