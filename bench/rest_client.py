"""``python -m bench.rest_client``: the cost of one local REST call, client side.

Starts a real gunicorn (``shared.serve``: one gthread worker, as every service runs) with a
small Flask app in a process of its own, then makes ``--n`` GETs of a 150-byte JSON answer
from one thread with a keep-alive ``requests.Session`` (how the internal client worked before)
and with ``shared.rest.RestClient``; reports wall time and this process's CPU time per call,
medians of ``--runs`` runs, interleaved so that the machine's load affects both alike.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import requests
from flask import Flask, Response

from shared.rest import RestClient
from shared.web import json_response


def make_app() -> Flask:
    """The service gunicorn runs (``bench.rest_client:make_app()``): one small JSON answer."""
    app = Flask("bench")

    @app.get("/x")
    def x() -> Response:
        return json_response({"device_id": "temp_living_room",
                              "timestamp": "2026-11-23T03:49:20Z", "temperature": 19.23,
                              "humidity": 55.0, "pad": "x" * 60})

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _timed(n: int, call: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        call()
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # As shared/serve.py runs every service: one gthread worker, keep-alive 75 s.
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--worker-class", "gthread", "--threads", "4", "--keep-alive", "75",
         "--log-level", "warning", "--no-control-socket", "bench.rest_client:make_app()"],
        env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        client = RestClient(url, name="bench")
        session = requests.Session()
        session.trust_env = False
        deadline = time.monotonic() + 30
        while True:
            try:
                client.get("/x")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # a benchmark, not a test: waiting for gunicorn to bind
        ways: dict[str, Callable[[], object]] = {
            "requests.Session": lambda: session.get(f"{url}/x", timeout=5).json(),
            "RestClient": lambda: client.get("/x"),
        }
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in ways}
        for _ in range(args.runs):
            for name, call in ways.items():
                _timed(100, call)  # warm the connection
                results[name].append(_timed(args.n, call))
        print(f"{args.n} GETs per run, median of {args.runs} runs, gunicorn gthread on {url}")
        for name, rs in results.items():
            wall = statistics.median(r[0] for r in rs) * 1e6
            cpu = statistics.median(r[1] for r in rs) * 1e6
            print(f"  {name:18s} {wall:7.0f} us/call wall  {cpu:7.0f} us/call client CPU")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
