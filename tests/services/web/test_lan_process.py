"""The web program as it runs: ``python -m services.web`` (a gunicorn master and its
``LanWorker``) on a real socket, attacked the way a slow or flooding LAN client would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT
from tests.helpers import free_port, wait_for

THREADS = 4
CONNECTIONS = 100  # fewer than the stalled clients below: the oldest make room for new ones
REQUEST_TIMEOUT_S = 3.0
TOKEN = "lan-process-token"


@dataclass
class Web:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker(self) -> int:
        kids = wait_for(lambda: Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
                        .read_text().split(), what="the gunicorn worker")
        return int(kids[0])


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no thread count for {pid}")


def health_ok(url: str) -> bool:
    try:
        return requests.get(f"{url}/api/health", timeout=2).ok
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    tmp = tmp_path_factory.mktemp("web")
    port = free_port()
    env = {**os.environ, "INSTANCE_NAME": "demo", "INSTANCES_DIR": str(ROOT / "instances"),
           "DATA_DIR": str(tmp), "HOST": "127.0.0.1", "PORT": str(port),
           "WEB_THREADS": str(THREADS), "WEB_CONNECTIONS": str(CONNECTIONS),
           "WEB_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S), "LOG_LEVEL": "WARNING",
           "SERVER_TOKEN": TOKEN,
           # nothing listens there: the tests here never need the internal side
           "STATE_AGGREGATOR_URL": f"http://127.0.0.1:{free_port()}",
           "HTTP_POLLER_URL": f"http://127.0.0.1:{free_port()}"}
    proc = subprocess.Popen([sys.executable, "-m", "services.web"], env=env, cwd=ROOT)
    web = Web(proc, port)
    try:
        wait_for(lambda: health_ok(web.url), timeout=30, what="python -m services.web to serve")
        yield web
    finally:
        proc.terminate()
        proc.wait(15)


def half_sent(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that each send part of a request and then stall: half of them stop
    inside the head, half inside a body they announced."""
    socks = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        head = b"POST /api/ingest HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\n"
        s.sendall(head if i % 2 else head + b'Content-Length: 60\r\n\r\n{"probe_id": "p", ')
        socks.append(s)
    return socks


def closed_by_server(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1024) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_half_sent_requests_cost_no_threads_and_health_still_answers(web: Web) -> None:
    worker = web.worker()
    before = threads_of(worker)
    socks = half_sent(web.port, 2 * CONNECTIONS)
    try:
        started = time.monotonic()
        assert health_ok(web.url), "the LAN API stopped answering under stalled requests"
        # At once, although more clients stall than WEB_CONNECTIONS allows: the oldest stalled
        # ones are closed to make room, the new request does not wait behind them.
        assert time.monotonic() - started < 1.0
        # Bounded: the request threads, gunicorn's main loop and the app's own few, however
        # many clients stall (plain gthread gave each stalled client a thread until it ran out).
        assert threads_of(worker) <= max(before, THREADS + 4), threads_of(worker)
        # Each stalled request is closed once WEB_REQUEST_TIMEOUT has passed.
        wait_for(lambda: all(closed_by_server(s) for s in socks), timeout=REQUEST_TIMEOUT_S + 5,
                 what="the server to close the stalled connections")
    finally:
        for s in socks:
            s.close()
    assert health_ok(web.url)


def test_a_request_sent_in_pieces_is_served(web: Web) -> None:
    with socket.create_connection(("127.0.0.1", web.port), timeout=5) as s:
        s.sendall(b"GET /api/he")
        s.sendall(b"alth HTTP/1.1\r\nHost: hub\r\n")
        s.sendall(b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
    assert b'"ok":true' in answer


def test_an_oversized_body_gets_413_with_a_json_message(web: Web) -> None:
    answer = requests.post(f"{web.url}/api/ingest", data=b"x" * 70_000, timeout=5,
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert answer.json()["message"] == "the request body is larger than 64 KiB"
    # The client keeps its end open (requests pools it); closing it must not stall the others.
    started = time.monotonic()
    assert health_ok(web.url)
    assert time.monotonic() - started < 1.0


def test_the_master_holds_no_application(web: Web) -> None:
    """gunicorn's master must not have imported Flask or the app (only the worker does)."""
    # ps (and the benchmark harness) still tell the programs apart by ``-m services.<name>``.
    cmdline = Path(f"/proc/{web.proc.pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:4] == [b"-m", b"services.web", b"--gunicorn-master"]
    maps = Path(f"/proc/{web.proc.pid}/maps").read_text()
    assert "_pydantic_core" not in maps and "orjson" not in maps
    worker_maps = Path(f"/proc/{web.worker()}/maps").read_text()
    assert "_pydantic_core" in worker_maps


def test_expect_100_continue_gets_its_go_ahead(web: Web) -> None:
    """curl sends a body over 1 KiB only after "100 Continue": the head alone must be served."""
    body = b'{"probe_id": "p", "temperature_c": 20, "pad": "' + b"x" * 2000 + b'"}'
    with socket.create_connection(("127.0.0.1", web.port), timeout=5) as s:
        s.sendall(b"POST /api/ingest HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\n"
                  b"X-Token: " + TOKEN.encode() + b"\r\n"
                  b"Expect: 100-continue\r\nConnection: close\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        assert s.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    # The request was read and handled: without the internal services running, 503 not_ready.
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert b"not_ready" in answer
