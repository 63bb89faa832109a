"""A probe's reading end to end: POSTed to the LAN ingest API of the real instance (the ``web``
program under supervisord), it becomes a registered device whose state and availability a real
subscriber receives, and a CSV row; a probe_id that names another device is refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import Instance
from tests.helpers import Broker, internal_headers, retained, wait_for

pytestmark = pytest.mark.e2e


def api_up(api: str) -> bool:
    """The LAN API may start a moment after the bridge says online: refused means not yet."""
    try:
        return requests.get(f"{api}/health", timeout=1).ok
    except requests.ConnectionError:
        return False


def test_a_probe_post_becomes_mqtt_state_and_a_csv_row(mosquitto: Broker, demo: Instance) -> None:
    api = f"http://127.0.0.1:{demo.env['PORT']}/api"
    wait_for(lambda: api_up(api), timeout=20, what="the LAN ingest API")
    resp = requests.post(f"{api}/ingest", json={"probe_id": "probe_e2e", "temperature_c": 21.75,
                                                "humidity": 40}, timeout=5,
                         headers={"X-Token": demo.hub_token})
    assert resp.status_code == 200, resp.text
    state = retained(mosquitto.host, mosquitto.port,
                     f"{demo.root_topic}/devices/probe_e2e/state", timeout=20).json()
    assert (state["temperature_c"], state["humidity"]) == (21.75, 40)
    assert retained(mosquitto.host, mosquitto.port,
                    f"{demo.root_topic}/devices/probe_e2e/availability",
                    where=lambda m: m.text == "online").text == "online"
    temp = retained(mosquitto.host, mosquitto.port,
                    f"{demo.root_topic}/devices/probe_e2e/state/temperature_c")
    assert json.loads(temp.payload) == 21.75

    csv_path = Path(demo.env["DATA_DIR"]) / "temperature_log.csv"
    rows = wait_for(lambda: csv_path.exists() and list(csv.DictReader(csv_path.open())),
                    what="a CSV row")
    assert rows[-1]["probe_id"] == "probe_e2e"
    assert float(rows[-1]["temperature_c"]) == 21.75


def test_bad_ingest_bodies_are_refused_and_cost_nothing(demo: Instance) -> None:
    api = f"http://127.0.0.1:{demo.env['PORT']}/api"
    wait_for(lambda: api_up(api), timeout=20, what="the LAN ingest API")
    auth = {"X-Token": demo.hub_token}
    assert requests.post(f"{api}/ingest", data=b"{nope", timeout=5,
                         headers={"Content-Type": "application/json", **auth}).status_code == 400
    resp = requests.post(f"{api}/ingest", json={"probe_id": "probe_e2e"}, timeout=5, headers=auth)
    assert resp.status_code == 422 and "temperature_c is required" in resp.json()["message"]
    assert requests.get(f"{api}/health", timeout=5).json()["ok"] is True


def test_a_probe_id_of_another_device_is_refused_and_that_device_untouched(demo: Instance) -> None:
    api = f"http://127.0.0.1:{demo.env['PORT']}/api"
    wait_for(lambda: api_up(api), timeout=20, what="the LAN ingest API")
    aggregator = f"http://127.0.0.1:{demo.env['STATE_AGGREGATOR_PORT']}"
    for taken in ("temp_living_room", "hub_system"):
        resp = requests.post(f"{api}/ingest", json={"probe_id": taken, "temperature_c": 99.5},
                             timeout=5, headers={"X-Token": demo.hub_token})
        assert resp.status_code == 409, resp.text
        assert resp.json()["error"] == "device_conflict" and taken in resp.json()["message"]
        info = requests.get(f"{aggregator}/devices/{taken}", timeout=5,
                            headers=internal_headers(demo.env)).json()
        assert info["source"] != "probe"
        state = requests.get(f"{aggregator}/device/{taken}", timeout=5,
                             headers=internal_headers(demo.env)).json()["state"]
        assert "temperature_c" not in state
