"""``python -m services.demo_sensors [--port 5010]``: a real HTTP endpoint that behaves like a
motion detector: ``GET /motion`` -> ``{"motion": bool, "illuminance": lux, "battery": pct}``.
Motion comes and goes at random, so the hub shows motion_started/motion_stopped events."""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Motion:
    def __init__(self) -> None:
        self.active = False
        self.changed = time.monotonic()
        self.lock = threading.Lock()

    def sample(self) -> dict[str, object]:
        with self.lock:
            held = time.monotonic() - self.changed
            # Motion lasts 5-20 s; quiet spells 10-40 s.
            if (self.active and held > random.uniform(5, 20)) or (
                not self.active and held > random.uniform(10, 40)
            ):
                self.active = not self.active
                self.changed = time.monotonic()
            return {"motion": self.active, "illuminance": round(random.uniform(80, 320)),
                    "battery": 97}


def make_server(host: str, port: int) -> ThreadingHTTPServer:
    motion = _Motion()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/motion":
                body, status = json.dumps(motion.sample()).encode(), 200
            elif self.path == "/health":
                body, status = b'{"ok": true}', 200
            else:
                body, status = b'{"error": "not_found"}', 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5010)
    args = parser.parse_args()
    server = make_server(args.host, args.port)
    print(f"demo sensors on http://{args.host}:{args.port}/motion", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
