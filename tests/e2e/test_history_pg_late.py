"""PostgreSQL down when the hub starts: the demo instance under the real supervisord with
``DATABASE_URL`` pointing at a throwaway cluster that is stopped. Live data flows, the
aggregator's ``/health`` and the LAN ``/api/health`` say ``degraded`` with the reason, and once
the cluster is started the history connects by itself (no restart), creates its schema and
stores the readings it queued meanwhile as well as the new ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Instance, demo_instance
from tests.helpers import Broker, Subscriber, wait_for
from tests.postgres import Postgres, start_postgres

pytestmark = pytest.mark.e2e
DEVICE = "temp_living_room"


@pytest.fixture
def server() -> Iterator[Postgres]:
    pg = start_postgres()  # its own: this test stops it
    yield pg
    pg.stop()


def lan(inst: Instance, path: str, **params: Any) -> Any:
    resp = requests.get(f"http://127.0.0.1:{inst.env['PORT']}{path}", params=params, timeout=10,
                        headers={"X-Token": inst.hub_token})
    assert resp.ok, resp.text
    return resp.json()


def test_a_database_down_at_the_start_is_used_once_it_is_up(
        mosquitto: Broker, server: Postgres, subscriber: Subscriber, tmp_path: Path) -> None:
    url = server.create_database("late_hub")
    server.halt()
    with demo_instance(mosquitto, tmp_path, DATABASE_URL=url) as inst:
        # Live data flows without the history.
        topic = f"{inst.root_topic}/devices/{DEVICE}/state"
        subscriber.subscribe(topic)
        subscriber.wait(topic, timeout=30)
        health = inst.aggregator_health()["history"]
        assert health["state"] == "degraded" and health["backend"] == "postgresql", health
        assert any("connection" in r.lower() for r in health["reasons"]), health["reasons"]
        api = lan(inst, "/api/health")
        assert api["status"] == "degraded"
        assert any(r.startswith("history: ") for r in api["reasons"]), api["reasons"]
        # Readings accepted while the server is away wait in the history's queue: this one
        # was published on MQTT meanwhile.
        wait_for(lambda: inst.aggregator_health()["history"]["pending"] > 0, timeout=30,
                 what="readings queued for the history")
        while_down = subscriber.wait(topic, timeout=30).json()["timestamp"]
        server.serve()
        wait_for(lambda: inst.aggregator_health()["history"]["state"] == "ok", timeout=60,
                 what="the history to connect by itself")
        assert lan(inst, "/api/health")["status"] == "ok"

        def stored() -> list[str]:
            return [r["ts_utc"] for r in lan(inst, "/api/readings", device_id=DEVICE,
                                             limit=10_000)["readings"]]

        wait_for(lambda: while_down in stored(), timeout=30,
                 what="the reading queued while the server was away, in the history")
        wait_for(lambda: max(stored()) > while_down, timeout=30,
                 what="new readings stored as they come")
        history = inst.aggregator_health()["history"]
        assert history["dropped"] == 0 and history["failed"] == 0, history
