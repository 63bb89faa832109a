"""Edge hub -> central hub, both real instances under the real supervisord on one broker: the
edge (the demo instance, its sensors producing) forwards its history to the central hub's LAN
API (``FORWARD_URL=http://.../api``, the central's ``SERVER_TOKEN``), and the central hub keeps
its history in a real PostgreSQL server. The central hub is stopped for a while and started
again: every reading the edge stored reaches the central history exactly once."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import demo_instance, instance_env, start_supervisord, stop_supervisord
from tests.helpers import Broker, internal_headers, wait_for
from tests.postgres import Postgres

pytestmark = pytest.mark.e2e
TOKEN = "central-secret"


def get(port: str, path: str, token: str, **params: Any) -> Any:
    resp = requests.get(f"http://127.0.0.1:{port}{path}", params=params,
                        headers={"X-Token": token}, timeout=10)
    assert resp.ok, resp.text
    return resp.json()


def all_readings(port: str, token: str, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = get(port, "/api/readings", token, limit=10_000, **params,
                   **({"cursor": cursor} if cursor else {}))
        out += page["readings"]
        if not (cursor := page["next_cursor"]):
            return out


def key(r: dict[str, Any]) -> str:
    return json.dumps([r["device_id"], r["ts_utc"], r["reading_id"], r["payload"]],
                      sort_keys=True)


class Central:
    def __init__(self, mosquitto: Broker, tmp: Path, database_url: str) -> None:
        instances = tmp / "instances"
        instances.mkdir(parents=True)
        (instances / "central.json").write_text(json.dumps({
            "instance_id": "central", "friendly_name": "Central", "config": {"sensors": []}}))
        self.env = {**instance_env(mosquitto, tmp, instances, "central"),
                    "SERVER_TOKEN": TOKEN, "DATABASE_URL": database_url}
        self.port = self.env["PORT"]
        self.output: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc, self.output = start_supervisord(self.env)
        try:
            wait_for(self._answers, timeout=90, interval=0.2, what="the central hub's LAN API")
        except AssertionError:
            raise AssertionError("the central hub never answered:\n"
                                 + "\n".join(self.output[-100:])) from None

    def _answers(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/api/readings/latest",
                                params={"token": TOKEN}, timeout=2).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_supervisord(self.proc)
            self.proc = None


@pytest.fixture
def central(mosquitto: Broker, postgres: Postgres, tmp_path: Path) -> Iterator[Central]:
    hub = Central(mosquitto, tmp_path / "central", postgres.create_database("central_hub"))
    hub.start()
    yield hub
    hub.stop()
    (tmp_path / "central.log").write_text("\n".join(hub.output))


def test_every_edge_reading_reaches_the_central_history_once(
        mosquitto: Broker, central: Central, tmp_path: Path) -> None:
    (tmp_path / "edge").mkdir()
    with demo_instance(mosquitto, tmp_path / "edge",
                       FORWARD_URL=f"http://127.0.0.1:{central.port}/api", FORWARD_TOKEN=TOKEN,
                       FORWARD_BATCH="50", FORWARD_RETRY_MAX="1") as edge:
        lan, internal = edge.env["PORT"], edge.env["STATE_AGGREGATOR_PORT"]

        def forward() -> dict[str, Any]:
            health: dict[str, Any] = requests.get(
                f"http://127.0.0.1:{internal}/health", timeout=10,
                headers=internal_headers(edge.env)).json()["history"]["forward"]
            return health

        wait_for(lambda: forward()["forwarded"] > 0, timeout=60, what="a first forwarded batch")
        central.stop()
        # While the central hub is away the edge keeps storing: its sensors, and a bulk posted
        # to its LAN API with ids of its own.
        bulk = [{"device_id": "edge_bulk", "ts_utc": f"2026-01-01T00:00:{s:02d}.{s:06d}Z",
                 "reading_id": f"b{s}", "payload": {"s": s}} for s in range(60)]
        edge_token = edge.hub_token
        assert requests.post(f"http://127.0.0.1:{lan}/api/readings/bulk", json=bulk,
                             headers={"X-Token": edge_token}, timeout=10).json()["stored"] == 60
        down = wait_for(lambda: (h := forward())["failures"] >= 2 and h, timeout=60,
                        what="the edge retrying")
        assert down["state"] == "retrying" and "unreachable" in down["last_error"]
        wait_for(lambda: forward()["backlog"] > 60, timeout=60, what="a backlog of readings")
        central.start()
        # Everything the edge has stored by now must arrive (later readings too, checked by
        # the backlog reaching 0 after this).
        edge_rows = all_readings(lan, edge_token)
        wait_for(lambda: forward()["backlog"] == 0 and forward()["state"] == "ok", timeout=120,
                 interval=0.5, what="the edge's backlog forwarded")
        health = forward()
    # Keys show milliseconds: two readings of one device within one millisecond share a key,
    # so the check is that each key is on the central hub as often as on the edge.
    edge_counts = Counter(key(r) for r in edge_rows)
    central_counts = Counter(key(r) for r in all_readings(central.port, TOKEN))
    missing = [k for k, n in edge_counts.items() if central_counts[k] < n]
    assert not missing, f"{len(missing)} of {len(edge_counts)} never reached the central hub"
    twice = [k for k, n in edge_counts.items() if central_counts[k] > n]
    assert not twice, f"{len(twice)} stored more than once on the central hub"
    # The sensors' readings and the bulk posted during the outage, all of them.
    assert len(edge_rows) > 60 and {r["device_id"] for r in edge_rows} >= {"edge_bulk",
                                                                          "temp_living_room"}
    # The committed cursor is past every one of them (a count would not do: under load
    # supervisord may have restarted the edge's aggregator, whose counters start again).
    assert health["failures"] >= 1 and health["cursor"] >= max(r["id"] for r in edge_rows)

