"""The web program's routes through the Flask test client, against the real internal side
(aggregator and poller apps on real sockets, see support.py)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from shared.models import ReadingObs, RegisterDevice
from tests.helpers import wait_for
from tests.services.web.support import SERIAL_ID, Hub, start_hub

TOKEN = "s3cret-token"
KEY = "mgmt-key"
MGMT = {"X-API-Key": KEY}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = start_hub(tmp_path, token=TOKEN, key=KEY)
    yield h
    h.stop()


@pytest.fixture
def client(hub: Hub) -> FlaskClient:
    return hub.app.test_client()


def post(client: FlaskClient, body: dict[str, object], **kw: object) -> object:
    return client.post("/api/ingest", json=body, headers={"X-Token": TOKEN}, **kw)


def test_a_reading_registers_the_probe_and_reaches_the_aggregator(hub: Hub,
                                                                   client: FlaskClient) -> None:
    answer = client.post("/api/ingest", headers={"X-Token": TOKEN},
                         json={"probe_id": "probe_a", "temperature_c": 21.5, "rssi": -60,
                               "fw": "1.2"})
    assert answer.status_code == 200, answer.text
    assert answer.get_json() == {"ok": True, "probe_id": "probe_a",
                                 "stored": ["rssi", "temperature_c"], "ignored": ["fw"],
                                 "csv": True}
    device = hub.agg.device("probe_a")
    assert (device.source, device.units["temperature_c"]) == ("probe", "°C")
    wait_for(lambda: device.values == {"temperature_c": 21.5, "rssi": -60},
             what="the reading to reach the aggregator through the pusher")
    rows = list(csv.reader(hub.csv.open()))
    assert rows[1][1:] == ["probe_a", "21.5", '{"rssi":-60}']


def test_token_is_required_and_checked(client: FlaskClient) -> None:
    body = {"probe_id": "adhoc", "temperature_c": 20.0}
    missing = client.post("/api/ingest", json=body)
    assert missing.status_code == 401
    assert missing.get_json()["ok"] is False and "X-Token" in missing.get_json()["message"]
    assert client.post("/api/ingest", json=body, headers={"X-Token": "no"}).status_code == 401
    assert client.get("/api/probes").status_code == 401
    assert client.get("/api/probes", headers=MGMT).status_code == 200  # reading: either
    assert client.get("/api/probes", headers={"X-Token": TOKEN}).status_code == 200
    # Removing and provisioning are management: the hub token does not grant them (403).
    assert client.delete("/api/probes/adhoc").status_code == 401
    assert client.delete("/api/probes/adhoc", headers={"X-Token": TOKEN}).status_code == 403
    assert client.post("/api/provision", json={"probe_id": "adhoc"},
                       headers={"X-Token": TOKEN}).status_code == 403
    assert client.delete("/api/probes/adhoc", headers={"X-API-Key": "no"}).status_code == 401
    bearer = client.post("/api/ingest", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200
    # a body that is not JSON tells nothing to a client without the token
    garbage = client.post("/api/ingest", data=b"{nope", content_type="application/json")
    assert garbage.status_code == 401
    assert client.post("/api/ingest", json={**body, "token": TOKEN}).status_code == 200
    quick = client.get(f"/api/ingest?temperature_c=22.3&probe_id=adhoc&token={TOKEN}")
    assert quick.status_code == 200 and quick.get_json()["stored"] == ["temperature_c"]
    health = client.get("/api/health").get_json()  # open: for health checks
    assert health["ok"] is True and health["time"].endswith("Z")


def test_a_csv_row_the_disk_refuses_never_fails_a_published_reading(
        hub: Hub, client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    """The reading went to the aggregator before its CSV row: the probe gets its 200 (a retry
    would duplicate the reading), /api/health says degraded and why, one log line."""
    hub.csv.parent.mkdir(parents=True, exist_ok=True)
    blocker = hub.csv.parent / "blocked"
    blocker.write_text("a file where the CSV's folder should be")
    hub.app.extensions["web"].ingest.csv.path = blocker / "readings.csv"
    for i in range(3):
        answer = post(client, {"probe_id": "probe_d", "temperature_c": 20.0 + i})
        assert answer.status_code == 200 and answer.get_json()["csv"] is False  # type: ignore[attr-defined]
    wait_for(lambda: hub.agg.device("probe_d").values.get("temperature_c") == 22.0,
             what="the readings to reach the aggregator")
    health = client.get("/api/health").get_json()
    assert health["status"] == "degraded" and "CSV log" in health["reasons"][0]
    assert caplog.text.count("cannot store rows") == 1
    hub.app.extensions["web"].ingest.csv.path = hub.csv
    assert post(client, {"probe_id": "probe_d", "temperature_c": 1.0}).get_json()["csv"]  # type: ignore[attr-defined]
    assert client.get("/api/health").get_json()["status"] == "ok"


@pytest.mark.parametrize(("data", "status", "words"), [
    (b"{nope", 400, "not valid JSON"),
    (b"[1, 2]", 422, "JSON object"),
    (b'{"probe_id": "p1"}', 422, "temperature_c is required"),
    (b'{"probe_id": "p1", "temperature_c": "hot"}', 422, "finite number"),
    (b'{"probe_id": "bad id", "temperature_c": 1}', 422, "probe_id"),
    (b"x" * 70_000, 413, "larger than 64 KiB"),
])
def test_invalid_bodies_get_a_clear_4xx(client: FlaskClient, data: bytes, status: int,
                                        words: str) -> None:
    answer = client.post("/api/ingest", data=data,
                         headers={"X-Token": TOKEN, "Content-Type": "application/json"})
    assert answer.status_code == status
    body = answer.get_json()
    assert body["ok"] is False and words in body["message"]


@pytest.mark.parametrize("taken", [SERIAL_ID, "hub_system"])
def test_a_probe_cannot_take_the_id_of_another_device(hub: Hub, client: FlaskClient,
                                                      taken: str) -> None:
    hub.agg.register(RegisterDevice(device_id="hub_system", source="sensor", interval=10))
    hub.agg.ingest([ReadingObs(device_id=taken, ts=hub.agg.clock(), values={"t": 1.0})],
                   source="serial-handler")
    answer = client.post("/api/ingest", headers={"X-Token": TOKEN},
                         json={"probe_id": taken, "temperature_c": 99.0})
    assert answer.status_code == 409
    body = answer.get_json()
    assert body["error"] == "device_conflict" and taken in body["message"]
    assert "may not take its id" in body["message"]
    device = hub.agg.device(taken)
    assert device.source != "probe" and device.values == {"t": 1.0}
    assert not hub.csv.exists()


def test_the_aggregator_refuses_web_readings_for_devices_that_are_not_probes(hub: Hub) -> None:
    """Ownership is the aggregator's, not only the web program's check: a batch from ``web``
    may write probes only."""
    before = dict(hub.agg.device(SERIAL_ID).values)
    result = hub.agg.ingest([ReadingObs(device_id=SERIAL_ID, ts=hub.agg.clock(),
                                        values={"temperature": 99.0})], source="web")
    assert result == {"accepted": 0, "rejected": 1, "durable": False}
    assert hub.agg.device(SERIAL_ID).values == before
    assert hub.agg.errors[-1]["error_code"] == "NOT_OWNER"


def test_max_devices_refuses_clearly_and_removal_makes_room(tmp_path: Path) -> None:
    hub = start_hub(tmp_path, token=None, max_devices=3, key=KEY)
    client = hub.app.test_client()
    t = hub.auth  # the token the hub generated
    try:
        for i in range(3):
            assert client.post("/api/ingest", json={"probe_id": f"p{i}", "temperature_c": 20},
                               headers=t).status_code == 200
        refused = client.post("/api/ingest", json={"probe_id": "p3", "temperature_c": 20},
                              headers=t)
        assert refused.status_code == 409, refused.text
        body = refused.get_json()
        assert body["error"] == "device_limit" and "MAX_DEVICES=3" in body["message"]
        assert "p3" not in hub.agg.devices

        listed = client.get("/api/probes", headers=t).get_json()
        assert sorted(d["device_id"] for d in listed["devices"]) == ["p0", "p1", "p2"]
        assert client.delete("/api/probes/p0", headers=MGMT).get_json() == {
            "ok": True, "removed": "p0"}
        assert "p0" not in hub.agg.devices
        _, _, changes = hub.agg.changes.since(0)
        removal = changes[-1]
        assert (removal.kind, removal.device_id, getattr(removal, "action", None)) == (
            "device", "p0", "removed")
        assert client.post("/api/ingest", json={"probe_id": "p3", "temperature_c": 20},
                           headers=t).status_code == 200
        # Only run-time probes can go; the others are refused or unknown.
        not_removable = client.delete(f"/api/probes/{SERIAL_ID}", headers=MGMT)
        assert not_removable.status_code == 409
        assert "instance file" in not_removable.get_json()["message"]
        assert client.delete("/api/probes/nope", headers=MGMT).status_code == 404
        assert client.delete("/api/probes/bad%20id", headers=MGMT).status_code == 422
        # A removed probe that pushes again is registered again at once.
        assert client.delete("/api/probes/p1", headers=MGMT).status_code == 200
        assert client.post("/api/ingest", json={"probe_id": "p1", "temperature_c": 20},
                           headers=t).status_code == 200
        assert hub.agg.device("p1").source == "probe"
    finally:
        hub.stop()


def test_a_500_never_carries_the_exception_text(hub: Hub, client: FlaskClient) -> None:
    # A fault inside the route that is no disk condition (a full or failing disk only degrades
    # the CSV log, see above): the CSV log has lost its path.
    hub.app.extensions["web"].ingest.csv.path = None
    answer = client.post("/api/ingest", headers={"X-Token": TOKEN},
                         json={"probe_id": "probe_b", "temperature_c": 20})
    assert answer.status_code == 500
    body = answer.get_json()
    assert body["error"] == "internal_error" and body["message"] == (
        "internal error; the hub's log has the details")
    assert "NoneType" not in answer.text and "AttributeError" not in answer.text


def test_without_the_poller_the_answer_says_retry_and_hides_internal_addresses(
        tmp_path: Path) -> None:
    hub = start_hub(tmp_path, token=None, poller=False)
    try:
        answer = hub.app.test_client().get("/api/probes", headers=hub.auth)
        assert answer.status_code == 503
        assert "send the request again" in answer.get_json()["message"]
        assert "127.0.0.1" not in answer.text
        # Readings with a probe_id need only the aggregator.
        ok = hub.app.test_client().post("/api/ingest", json={"probe_id": "p", "temperature_c": 1},
                                        headers=hub.auth)
        assert ok.status_code == 200, ok.text
    finally:
        hub.stop()


def test_provision_asks_the_poller(client: FlaskClient) -> None:
    unknown = client.post("/api/provision", json={"probe_id": "nope"}, headers=MGMT)
    assert unknown.status_code == 404 and unknown.get_json()["error"] == "unknown_probe"
    missing = client.post("/api/provision", json={}, headers=MGMT)
    assert missing.status_code == 422 and "probe_id is required" in missing.get_json()["message"]
