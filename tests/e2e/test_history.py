"""The readings history in the real instance under supervisord: readings the demo's sensors send
are on disk and answer on the LAN port (``/api/readings``) and on MQTT
(``meta/request/history``), readings posted over the LAN survive a restart of the aggregator,
and the aggregator's ``/health`` reports the history."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

from shared.timeutil import iso
from tests.e2e.conftest import Instance
from tests.helpers import Broker, Subscriber, internal_headers, publish, wait_for

pytestmark = pytest.mark.e2e
DEVICE = "temp_living_room"


def lan(demo: Instance, path: str, **params: Any) -> Any:
    resp = requests.get(f"http://127.0.0.1:{demo.env['PORT']}{path}", params=params, timeout=5,
                        headers={"X-Token": demo.hub_token})
    assert resp.ok, resp.text
    return resp.json()


def stored(demo: Instance, device_id: str) -> list[dict[str, Any]]:
    readings: list[dict[str, Any]] = lan(demo, "/api/readings", device_id=device_id,
                                         limit=10_000)["readings"]
    return readings


def test_published_states_are_in_the_history(demo: Instance, mosquitto: Broker,
                                             subscriber: Subscriber) -> None:
    topic = f"{demo.root_topic}/devices/{DEVICE}/state"
    subscriber.subscribe(topic)
    state = subscriber.wait(topic, timeout=30).json()
    # What MQTT carried at that timestamp is the reading the history holds for it.
    found = wait_for(lambda: next((r for r in stored(demo, DEVICE)
                                   if r["ts_utc"] == state["timestamp"]), None),
                     timeout=10, what="the published reading in the history")
    for name, value in found["payload"].items():
        assert state[name] == value
    latest = lan(demo, "/api/readings/latest", device_id=DEVICE)["readings"][0]
    assert latest["ts_utc"] >= state["timestamp"]


def test_meta_request_history(demo: Instance, mosquitto: Broker, subscriber: Subscriber) -> None:
    answers = f"{demo.root_topic}/meta/history"
    subscriber.subscribe(answers)
    wait_for(lambda: stored(demo, DEVICE), timeout=30, what="a stored reading")
    request = {"id": "h1", "device_id": DEVICE, "start": iso(time.time() - 3600),
               "end": iso(time.time() + 60), "limit": 2}
    publish(mosquitto.host, mosquitto.port, f"{demo.root_topic}/meta/request/history",
            json.dumps(request))
    answer = subscriber.wait(answers, where=lambda m: m.json().get("id") == "h1").json()
    assert answer["device_id"] == DEVICE and 1 <= answer["count"] <= 2
    assert answer["readings"][0]["device_id"] == DEVICE
    assert answer["truncated"] is (answer["count"] == 2 and len(stored(demo, DEVICE)) > 2)
    bad = {"id": "h2", "device_id": DEVICE, "start": "2026-01-01", "end": "2026-03-01"}
    publish(mosquitto.host, mosquitto.port, f"{demo.root_topic}/meta/request/history",
            json.dumps(bad))
    error = subscriber.wait(answers, where=lambda m: m.json().get("id") == "h2").json()
    assert "at most 7 days" in error["error"]


def test_posted_readings_survive_an_aggregator_restart(demo: Instance) -> None:
    base = f"http://127.0.0.1:{demo.env['PORT']}/api/readings"
    bulk = [{"device_id": "edge_e2e", "ts_utc": f"2026-01-01T00:{m:02d}:00Z", "reading_id": f"r{m}",
             "payload": {"t": m}} for m in range(50)]
    auth = {"X-Token": demo.hub_token}
    assert requests.post(f"{base}/bulk", json=bulk, timeout=5, headers=auth).json()["stored"] == 50
    assert demo.supervisorctl("restart", "state-aggregator").returncode == 0
    again = wait_for(lambda: _post_quietly(f"{base}/bulk", bulk, auth), timeout=30,
                     what="the restarted aggregator answering")
    assert again["duplicates"] == 50  # the same file: nothing stored twice
    assert len(stored(demo, "edge_e2e")) == 50
    health = requests.get(f"http://127.0.0.1:{demo.env['STATE_AGGREGATOR_PORT']}/health",
                          timeout=5, headers=internal_headers(demo.env)).json()
    assert health["history"]["state"] == "ok", health["history"]
    assert health["history"]["deleted"] == 0


def _post_quietly(url: str, body: Any, headers: dict[str, str]) -> Any:
    try:
        resp = requests.post(url, json=body, timeout=5, headers=headers)
    except requests.RequestException:
        return None
    return resp.json() if resp.ok else None
