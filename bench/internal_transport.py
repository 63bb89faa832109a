"""``python -m bench.internal_transport``: what locking the internal REST costs, measured to
choose between its two ways (issue 12): a unix socket in HUB_RUN_DIR, or loopback TCP with a
per-instance secret in a header that every service checks.

Starts three real gunicorns (``shared.serve``'s way: one gthread worker, keep-alive) of a small
Flask app: on 127.0.0.1 without a check (today), on 127.0.0.1 with the check the services now
make (``shared.internal``), and on a unix socket. One thread makes ``--n`` GETs of a 150-byte JSON
answer over one keep-alive ``http.client`` connection to each (a unix-socket connection for the
third), interleaved, medians of ``--runs``: wall time per round trip and the CPU time of client
and server worker per call.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flask import Flask

from bench.rest_client import make_app as rest_app
from shared.internal import HEADER, protect

SECRET_ENV = "BENCH_INTERNAL_SECRET"  # noqa: S105  (a variable's name)  # how this harness hands its gunicorn the secret


def make_app() -> Flask:
    """What gunicorn runs: the REST bench's one small JSON answer (``bench.rest_client``),
    behind the secret when ``SECRET_ENV`` is set."""
    app = rest_app()
    secret = os.environ.get(SECRET_ENV)
    if secret:
        protect(app, secret)
    return app


class UnixConnection(http.client.HTTPConnection):
    """http.client over a unix socket (what ``shared.rest`` would need for that way)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gunicorn(bind: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", "1",
         "--worker-class", "gthread", "--threads", "4", "--keep-alive", "75",
         "--log-level", "warning", "--no-control-socket",
         "bench.internal_transport:make_app()"],
        env={**os.environ, "PYTHONPATH": os.getcwd(), **env})


def _worker_cpu(master: subprocess.Popen[bytes]) -> float:
    """CPU seconds of the gunicorn worker (the master's one child)."""
    children = Path(f"/proc/{master.pid}/task/{master.pid}/children").read_text().split()
    fields = Path(f"/proc/{children[0]}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _connect(ports: dict[str, int], sock_path: str) -> dict[str, http.client.HTTPConnection]:
    """One keep-alive connection to each server, once they listen."""
    conns: dict[str, http.client.HTTPConnection] = {}
    deadline = time.monotonic() + 30
    while len(conns) < len(ports) + 1:
        for name, port in ports.items():
            if name not in conns:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    c.connect()
                    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conns[name] = c
                except OSError:
                    pass
        if "unix socket" not in conns and os.path.exists(sock_path):
            conns["unix socket"] = UnixConnection(sock_path)
        if time.monotonic() > deadline:
            raise TimeoutError("gunicorn did not start")
        time.sleep(0.05)  # a benchmark, not a test: waiting for gunicorn to bind
    return conns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    secret = "s" * 43
    with tempfile.TemporaryDirectory() as tmp:
        sock_path = str(Path(tmp) / "svc.sock")
        plain_port, secret_port = _free_port(), _free_port()
        servers = {
            "tcp, no check": _gunicorn(f"127.0.0.1:{plain_port}", {}),
            "tcp + secret": _gunicorn(f"127.0.0.1:{secret_port}", {SECRET_ENV: secret}),
            "unix socket": _gunicorn(f"unix:{sock_path}", {}),
        }
        try:
            conns = _connect({"tcp, no check": plain_port, "tcp + secret": secret_port},
                             sock_path)
            headers: dict[str, dict[str, str]] = {
                "tcp, no check": {}, "tcp + secret": {HEADER: secret}, "unix socket": {}}

            def call(name: str) -> Callable[[], None]:
                conn, hdrs = conns[name], headers[name]

                def once() -> None:
                    conn.request("GET", "/x", headers=hdrs)
                    resp = conn.getresponse()
                    body = resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{name}: {resp.status} {body!r}")
                return once

            results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in servers}
            for _ in range(args.runs):
                for name, server in servers.items():
                    once = call(name)
                    for _ in range(100):
                        once()  # warm the connection
                    wall, cpu = time.perf_counter(), time.process_time()
                    srv = _worker_cpu(server)
                    for _ in range(args.n):
                        once()
                    results[name].append(((time.perf_counter() - wall) / args.n,
                                          (time.process_time() - cpu) / args.n,
                                          (_worker_cpu(server) - srv) / args.n))
            print(f"{args.n} GETs per run, median of {args.runs} runs, gunicorn gthread, "
                  f"load average {os.getloadavg()[0]:.2f}")
            for name, rs in results.items():
                wall = statistics.median(r[0] for r in rs) * 1e6
                cpu = statistics.median(r[1] for r in rs) * 1e6
                srv = statistics.median(r[2] for r in rs) * 1e6
                print(f"  {name:14s} {wall:6.0f} us/call wall  {cpu:5.0f} us client CPU  "
                      f"{srv:5.0f} us server CPU")
        finally:
            for server in servers.values():
                server.terminate()
                server.wait(10)


if __name__ == "__main__":
    main()
