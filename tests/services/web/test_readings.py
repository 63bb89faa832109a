"""``/api/readings...`` on the LAN port: the web program's blueprint in front of a real
aggregator app with a real history file, both on real sockets."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from services.state_aggregator.app import create_app as aggregator_app
from services.state_aggregator.core import Aggregator
from services.state_aggregator.history.retention import Limits
from services.state_aggregator.history.service import History
from services.web.app import build_context
from services.web.app import create_app as web_app
from shared.instance import parse_instance
from shared.models import ReadingObs
from shared.settings import Settings
from tests.helpers import free_port
from tests.services.web.support import INSTANCE, SERIAL_ID, Served

TOKEN = "s3cret-token"
T0 = 1_700_000_000.0


@dataclass
class Lan:
    agg: Aggregator
    history: History
    url: str

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, headers={"X-Token": TOKEN}, timeout=10, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, headers={"X-Token": TOKEN}, timeout=10, **kw)


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[Lan]:
    agg = Aggregator(parse_instance(INSTANCE), handlers={}, cache_ttl=10, poll_interval=5)
    history = History(tmp_path / "history.db", tz="UTC",
                      limits=Limits(max_bytes=None, disk_percent=100))
    history.start()
    agg_srv = Served(aggregator_app(agg, history=history))
    settings = Settings(state_aggregator_url=agg_srv.url,
                        http_poller_url=f"http://127.0.0.1:{free_port()}", data_dir=tmp_path,
                        server_token=TOKEN)
    ctx, _ = build_context(settings)  # no probe readings here: its pusher stays idle
    web = Served(web_app(ctx))
    yield Lan(agg, history, web.url)
    web.stop()
    agg_srv.stop()
    history.stop()


def test_the_token_is_required(lan: Lan) -> None:
    for resp in (requests.get(lan.url + "/api/readings", timeout=5),
                 requests.post(lan.url + "/api/readings/bulk", json=[], timeout=5),
                 requests.get(lan.url + "/api/readings/latest?token=wrong", timeout=5)):
        assert resp.status_code == 401
        assert resp.json()["ok"] is False


def test_readings_the_hub_took_are_queried_paged_and_exported(lan: Lan) -> None:
    lan.agg.ingest([ReadingObs(device_id=SERIAL_ID, ts=T0 + i, values={"t": i})
                    for i in range(7000)], source="serial-handler")
    assert lan.history.writer is not None and lan.history.writer.flush()
    first = lan.get("/api/readings", params={"device_id": SERIAL_ID, "limit": 5000}).json()
    assert first["ok"] and first["count"] == 5000 and first["next_cursor"]
    rest = lan.get("/api/readings", params={"device_id": SERIAL_ID, "limit": 5000,
                                            "cursor": first["next_cursor"]}).json()
    assert rest["count"] == 2000 and rest["next_cursor"] is None
    latest = lan.get("/api/readings/latest", params={"device_id": SERIAL_ID}).json()
    assert latest["readings"][0]["payload"] == {"t": 6999}
    resp = lan.get("/api/readings/export.csv", params={"start_date": "2023-11-14T22:13:30Z"},
                   stream=True)
    assert resp.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert len(rows) == 1 + 7000 - 10 and rows[1][5] == '{"t":10}'


def test_bulk_posts_are_idempotent_and_bounded(lan: Lan) -> None:
    bulk = [{"device_id": "edge_7", "ts_utc": f"2026-11-23T12:{m:02d}:00Z",
             "payload": {"t": m, "label": "x" * 300}} for m in range(60)] * 16  # 960, 60 unique
    answer = lan.post("/api/readings/bulk", json={"readings": bulk}).json()
    assert answer == {"ok": True, "received": 960, "stored": 60, "duplicates": 900}
    again = lan.post("/api/readings", json=bulk[0]).json()
    assert again["duplicates"] == 1
    too_many = lan.post("/api/readings/bulk", json=[bulk[0]] * 1001)
    assert too_many.status_code == 422 and "at most 1000" in too_many.json()["message"]
    bad = lan.post("/api/readings/bulk", json=[{"device_id": "a b", "ts_utc": "x", "payload": {}}])
    assert bad.status_code == 422 and "readings[0]" in bad.json()["message"]
    query = lan.get("/api/readings", params={"start_date": "noon"})
    assert query.status_code == 400 and "start_date" in query.json()["message"]
