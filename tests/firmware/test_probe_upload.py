"""How a virtual probe catches up after its hub was away, against a small real HTTP server that
plays the hub's ``/api/ingest``: the buffered readings go up in batches stamped when each was
sampled; a hub without the batch form (it answers 422) gets them one by one instead, and none is
lost or sent twice either way."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from firmware.host import VirtualProbe
from tests.helpers import wait_for


class FakeIngest:
    """``mode``: ``down`` (503), ``batches`` (takes both forms) or ``old`` (single readings
    only, as a hub before the batch form: a batch has no ``temperature_c``, so 422)."""

    def __init__(self) -> None:
        self.mode = "batches"
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    mode = outer.mode
                    status = 503 if mode == "down" else (
                        422 if mode == "old" and "batch" in body else 200)
                    if status == 200:
                        outer.bodies.append(body)
                answer = json.dumps({"ok": status == 200}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def samples(self) -> list[int]:
        """Every sample number the hub took, in the order it took them."""
        with self.lock:
            return [r["sample"] for b in self.bodies for r in b.get("batch", [b])]


@pytest.fixture
def hub() -> Iterator[FakeIngest]:
    fake = FakeIngest()
    yield fake
    fake.server.shutdown()


def catch_up(hub: FakeIngest, tmp_path: Path, *, mode: str) -> VirtualProbe:
    probe = VirtualProbe("probe-up", tmp_path, bind="127.0.0.1", master=False, speed=10).start()
    requests.post(probe.url + "/provision", timeout=5, json={
        "server_url": hub.url, "interval_ms": 1000, "token": ""}).raise_for_status()
    wait_for(lambda: len(hub.samples()) >= 2, what="first readings")
    hub.mode = "down"
    wait_for(lambda: probe.probe is not None and probe.probe.buffer.count >= 25, timeout=30,
             what="readings buffered")
    hub.mode = mode
    wait_for(lambda: probe.probe is not None and probe.probe.buffer.count == 0, timeout=30,
             what="the buffer drained")
    probe.stop()
    return probe


def test_buffered_readings_go_up_in_batches_with_their_times(hub: FakeIngest,
                                                             tmp_path: Path) -> None:
    probe = catch_up(hub, tmp_path, mode="batches")
    assert probe.probe is not None
    assert hub.samples() == list(range(1, probe.probe.sensor.n + 1))  # in order, each once
    batches = [b["batch"] for b in hub.bodies if "batch" in b]
    assert batches and max(len(b) for b in batches) == 20  # slices of the probe's BATCH
    stamps = [r["timestamp"] for b in batches for r in b]
    assert all(s.endswith("Z") for s in stamps) and stamps == sorted(stamps)


def test_a_hub_without_the_batch_form_gets_them_one_by_one(hub: FakeIngest,
                                                           tmp_path: Path) -> None:
    probe = catch_up(hub, tmp_path, mode="old")
    assert probe.probe is not None
    assert hub.samples() == list(range(1, probe.probe.sensor.n + 1))
    assert not [b for b in hub.bodies if "batch" in b]
    assert probe.probe.rejected == 0 and probe.probe.batch_form is False
