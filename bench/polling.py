"""HTTP polling: N sensors served by a local test server (its own process) that the poller polls
at ``POLL_INTERVAL``. A poll is on time when it comes within max(0.5 s, 10 % of the interval) of
one interval after the previous one (the poller's own lateness rule); the share is reported
both from the server's timestamps and from the poller's ``/health`` ``late``/``polls``
counters."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from typing import Any

from .broker import Broker, free_port, wait_until
from .hub import Hub, http_sensor, instance_doc
from .modes import Mode
from .mqttload import CTX, Watcher
from .stats import median

log = logging.getLogger(__name__)
BODY = b'{"temperature": 21.5, "humidity": 40}'


def _server_main(port: int, conn: Connection) -> None:
    hits: dict[str, list[float]] = defaultdict(list)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the poller's sessions expect

        def do_GET(self) -> None:
            now = time.monotonic()
            with lock:
                hits[self.path].append(now)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *_a: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn.send("ready")
    while True:
        try:
            cmd = conn.recv()
        except EOFError:
            return
        if cmd == "stop":
            return
        with lock:
            conn.send({"now": time.monotonic(), "hits": {k: list(v) for k, v in hits.items()}})


def run(broker: Broker, mode: Mode) -> dict[str, Any]:
    port = free_port()
    conn, child = CTX.Pipe()
    server = CTX.Process(target=_server_main, args=(port, child), daemon=True)
    server.start()
    if not conn.poll(20):
        raise TimeoutError("the test HTTP server did not start")
    conn.recv()
    sensors = [http_sensor(f"h{i}", f"http://127.0.0.1:{port}/s/{i}")
               for i in range(mode.poll_sensors)]
    hub = Hub(instance_doc(sensors), broker.port,
              env_extra={"POLL_INTERVAL": str(mode.poll_interval)})
    interval = mode.poll_interval
    tolerance = max(0.5, 0.1 * interval)
    runs = []
    try:
        hub.start()
        hub.wait_healthy(timeout=120)
        watcher = Watcher(broker.host, broker.port, [f"{hub.base}/status"])
        wait_until(lambda: watcher.seen(f"{hub.base}/status", b"online"), timeout=60,
                   what="the bridge online")
        watcher.close()
        time.sleep(interval + 1)  # past the first round, when every sensor is due at once
        for _ in range(mode.runs):
            conn.send("dump")
            before = conn.recv()
            health0 = hub.get("http", "/health")
            time.sleep(mode.poll_window_s)
            conn.send("dump")
            after = conn.recv()
            health1 = hub.get("http", "/health")
            runs.append(_window(before["now"], after, interval=interval, tolerance=tolerance,
                                mode=mode, h0=health0, h1=health1))
        memory = hub.memory()
    finally:
        hub.stop(graceful=False)
        conn.send("stop")
        server.join(5)
        if server.is_alive():
            server.terminate()
    return {"sensors": mode.poll_sensors, "interval_s": interval, "tolerance_s": tolerance,
            "window_s": mode.poll_window_s, "runs": runs,
            "on_time_share": median([r["on_time_share"] for r in runs]),
            "poller_on_time_share": median([r["poller_on_time_share"] for r in runs]),
            "polls_per_s": median([r["polls_per_s"] for r in runs]),
            "coverage": median([r["coverage"] for r in runs]),
            "memory": memory}


def _window(t0: float, dump: dict[str, Any], *, interval: float, tolerance: float, mode: Mode,
            h0: dict[str, Any], h1: dict[str, Any]) -> dict[str, Any]:
    t1 = dump["now"]
    on_time = total = polls = 0
    for times in dump["hits"].values():
        prev = None
        for t in times:
            if t < t0 - interval - tolerance:
                continue
            if prev is not None and t >= t0:
                total += 1
                on_time += abs((t - prev) - interval) <= tolerance
            if t >= t0:
                polls += 1
            prev = t
    expected = mode.poll_sensors * (t1 - t0) / interval
    d_polls = h1.get("polls", 0) - h0.get("polls", 0)
    d_late = h1.get("late", 0) - h0.get("late", 0)
    return {
        "polls": polls, "expected": round(expected), "coverage": round(polls / expected, 4),
        "polls_per_s": round(polls / (t1 - t0), 1),
        "on_time_share": round(on_time / total, 4) if total else 0.0,
        "poller_polls": d_polls, "poller_late": d_late,
        "poller_on_time_share": round(1 - d_late / d_polls, 4) if d_polls else 0.0,
    }
