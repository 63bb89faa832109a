"""Master control's internal REST (``/master/...``) through the Flask test client, on a real
SQLite file and a real aggregator, including a restart on the same DATA_DIR."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from services.state_aggregator.app import create_app
from services.state_aggregator.core import Aggregator
from services.state_aggregator.master.admin import MasterAdmin
from services.state_aggregator.master.db import Database
from services.state_aggregator.master.routes import MasterControl
from services.state_aggregator.master.service import MasterService
from tests.helpers import Clock
from tests.services.state_aggregator.test_aggregator import INSTANCE

SID = "esp32_fermentation_001"
REGISTER: dict[str, Any] = {
    "sensor_id": SID, "sensor_name": "Fermentation Chamber 1", "sensor_type": "esp32_fermentation",
    "hardware_info": "ESP32-WROOM-32", "firmware_version": "1.0.0", "ip_address": "192.168.1.150",
    "mac_address": "AA:BB:CC:DD:EE:FF", "capabilities": ["temperature", "relay_control"]}
TEMPLATE = {"config_name": "Default ESP32 Fermentation Config", "sensor_type": "esp32_fermentation",
            "config_data": {"polling_interval": 60, "retry_attempts": 3, "sensor_mappings": [
                {"sensor_name": "sensor.temperature", "entry_field": "Temperature", "unit": "°C",
                 "data_type": "float"}]}}


def client_for(db_path: Path, clock: Clock) -> tuple[FlaskClient, MasterService, Aggregator]:
    agg = Aggregator(INSTANCE, handlers={}, cache_ttl=10, poll_interval=5, clock=clock)
    service = MasterService(Database(db_path), sink=agg, clock=clock)
    service.start(tick_s=3600)  # ticks are driven by the tests
    app = create_app(agg, master=MasterControl(service, MasterAdmin(service)))
    return app.test_client(), service, agg


@pytest.fixture
def http(db_path: Path, clock: Clock) -> Iterator[FlaskClient]:
    client, service, _ = client_for(db_path, clock)
    yield client
    service.stop()
    service.db.close()


def body(resp: Any) -> Any:
    return resp.get_json()


def test_the_seed_walkthrough(http: FlaskClient) -> None:
    master = http.post("/master/instances", json={"name": "Production Master",
                                                  "api_endpoint": "http://192.168.1.100:8088"})
    assert master.status_code == 201
    assert http.post("/master/configs", json=TEMPLATE).status_code == 201
    reg = body(http.post("/master/register", json=REGISTER))
    assert {k: reg[k] for k in ("status", "assigned_master", "master_id", "has_config",
                                "check_in_interval", "config_endpoint")} == {
        "status": "registered", "assigned_master": "Production Master",
        "master_id": body(master)["id"], "has_config": True, "check_in_interval": 60.0,
        "config_endpoint": f"/api/sensor-master/config/{SID}"}
    cfg = http.get(f"/master/config/{SID}")
    assert cfg.status_code == 200 and cfg.headers["ETag"] == f'"{body(cfg)["config_hash"]}"'
    assert set(body(cfg)) >= {"config_available", "config_changed", "config_hash", "config_name",
                              "config_version", "config", "commands", "check_in_interval"}
    same = http.get(f"/master/config/{SID}", headers={"If-None-Match": cfg.headers["ETag"]})
    assert (same.status_code, same.data) == (304, b"")
    by_arg = http.get(f"/master/config/{SID}?if_none_match={body(cfg)['config_hash']}")
    assert by_arg.status_code == 304
    # a template edit reaches the sensor on its next check-in
    http.patch("/master/configs/1", json={"config_data": {"polling_interval": 30}})
    beat = body(http.post("/master/heartbeat", json={"sensor_id": SID, "status": "online",
                                                    "config_hash": body(cfg)["config_hash"],
                                                    "metrics": {"uptime": 3600}}))
    assert (beat["in_sync"], beat["config_version"]) == (False, 2)
    assert "config_message" not in beat
    with_config = body(http.post("/master/heartbeat?include_config=1", json={"sensor_id": SID}))
    assert with_config["config_message"]["config_version"] == 2
    fresh = http.get(f"/master/config/{SID}", headers={"If-None-Match": cfg.headers["ETag"]})
    assert fresh.status_code == 200 and body(fresh)["config"] == {"polling_interval": 30}
    # command round trip
    cmd = body(http.post("/master/command", json={"sensor_id": SID, "command_type":
                                                 "set_target_temp", "command_data": {"target": 18.5}}))
    beat = body(http.post("/master/heartbeat", json={"sensor_id": SID}))
    assert [c["command_id"] for c in beat["commands"]] == [cmd["command_id"]]
    ack = http.post(f"/master/commands/{cmd['command_id']}/ack", json={"status": "completed"})
    assert body(ack)["status"] == "completed"
    listed = body(http.get(f"/master/commands?sensor_id={SID}&status=completed"))["commands"]
    assert [c["command_id"] for c in listed] == [cmd["command_id"]]
    # data
    up = http.post("/master/data", json={"sensor_id": SID, "readings": {"sensor.temperature": 18.9}})
    assert body(up)["accepted"] == 1
    sensors = body(http.get("/master/sensors"))["sensors"]
    assert [(s["sensor_id"], s["status"]) for s in sensors] == [(SID, "online")]


def test_history_rollback_and_explanation(http: FlaskClient) -> None:
    http.post("/master/register", json=REGISTER)
    http.post("/master/configs", json=TEMPLATE)
    http.post("/master/configs", json={"config_name": "mine", "sensor_id": SID,
                                       "config_data": {"x": 1}, "priority": 5})
    why = body(http.get(f"/master/sensors/{SID}/effective-config"))
    assert why["winner"]["config_name"] == "mine"
    assert [c["outcome"] for c in why["candidates"]] == [
        "won", "outranked by template 2: sensor templates come before type templates"]
    history = body(http.get(f"/master/sensors/{SID}/config-history"))["versions"]
    assert [v["config_version"] for v in history] == [3, 2, 1]
    back = http.post(f"/master/sensors/{SID}/rollback", json={"version": 2})
    assert (back.status_code, body(back)["config_version"], body(back)["pinned"]) == (200, 4, True)
    assert body(http.get(f"/master/config/{SID}"))["config_name"] == TEMPLATE["config_name"]


def test_a_template_preview_names_the_sensors_and_hashes_a_save_would_give(
        http: FlaskClient) -> None:
    for n in (1, 2, 3):
        http.post("/master/register", json={**REGISTER, "sensor_id": f"{SID}_{n}"})
    http.post("/master/register", json={**REGISTER, "sensor_id": "other", "sensor_type": "x"})
    http.post(f"/master/sensors/{SID}_3/rollback", json={"version": 1})  # pinned: keeps its own
    before = {s: body(http.get(f"/master/config/{SID}_{s}"))["config_hash"] for s in (1, 2)}
    preview = body(http.post("/master/configs/preview", json=TEMPLATE))
    assert [s["sensor_id"] for s in preview["sensors"]] == [f"{SID}_1", f"{SID}_2"]
    assert preview["pinned"] == [f"{SID}_3"] and preview["sensors_changed"] == 2
    assert all(s["previous_hash"] == before[int(s["sensor_id"][-1])] for s in preview["sensors"])
    # nothing was saved: no template, every sensor still on its old config
    assert body(http.get("/master/configs"))["configs"] == []
    assert body(http.get(f"/master/config/{SID}_1"))["config_hash"] == before[1]
    # the save gives exactly what the preview said
    assert body(http.post("/master/configs", json=TEMPLATE))["sensors_changed"] == 2
    for s in preview["sensors"]:
        got = body(http.get(f"/master/config/{s['sensor_id']}"))
        assert (got["config_hash"], got["config_version"]) == (s["config_hash"],
                                                                s["config_version"])
    # a new version of a template: only what changes counts; a no-op changes nothing
    edit = {"config_data": {"polling_interval": 5}}
    assert body(http.post("/master/configs/1/preview", json=edit))["sensors_changed"] == 2
    same = {"config_data": TEMPLATE["config_data"]}
    assert body(http.post("/master/configs/1/preview", json=same))["sensors"] == []
    assert http.post("/master/configs/9/preview", json=edit).status_code == 404
    assert http.post("/master/configs/preview", json={"config_name": "x"}).status_code == 422


@pytest.mark.parametrize(("method", "path", "payload", "status", "needle"), [
    ("post", "/master/heartbeat", {"sensor_id": "ghost"}, 404, "register first"),
    ("post", "/master/heartbeat", {"sensor_id": "a/b"}, 422, "sensor_id"),
    ("post", "/master/register", {"sensor_id": "bad+id"}, 422, "sensor_id"),
    ("get", "/master/config/bad%23id", None, 400, "sensor_id"),
    ("get", "/master/config/ghost", None, 404, "register first"),
    ("post", "/master/configs", {"config_name": "x", "config_data": {}}, 422,
     "exactly one of sensor_id, group or sensor_type; this one names none"),
    ("post", "/master/configs", {"config_name": "x", "config_data": {}, "sensor_id": "a",
                                 "sensor_type": "b"}, 422, "names sensor_id, sensor_type"),
    ("post", "/master/configs", {"config_name": "x", "sensor_type": "b", "config_data": [1]}, 422,
     "config_data"),
    ("post", "/master/configs", {"config_name": "x", "sensor_type": "b",
                                 "config_data": {"big": "x" * 70_000}}, 422, "at most 65536"),
    ("post", "/master/configs", {"config_name": "x", "sensor_type": "b", "config_data": {},
                                 "master_id": 9}, 422, "master_id: no master instance 9"),
    ("patch", "/master/configs/99", {"priority": 1}, 404, "no config template 99"),
    ("post", "/master/command", {"sensor_id": "ghost", "command_type": "restart"}, 404,
     "not registered"),
    ("post", "/master/instances", {"name": "m", "api_endpoint": "ftp://x"}, 422, "api_endpoint"),
    ("post", "/master/data", {"sensor_id": "s"}, 422, "exactly one of readings"),
    ("get", "/master/commands?status=lost", None, 400, "status must be one of"),
    ("post", "/master/data", {"sensor_id": "s", "readings": {"x": "a" * 20_000}}, 422,
     "readings: Value error, readings are 20008 bytes; at most 16384"),
    ("post", "/master/data", {"sensor_id": "s", "batch": [{"readings": {"x": "a" * 20_000}}]}, 422,
     "batch.0.readings"),
    ("post", "/master/commands/nope/ack", {"status": "completed"}, 404, "no command 'nope'"),
    ("post", "/master/commands/x/ack", {"status": "eaten"}, 422, "status"),
])
def test_bad_input_gets_a_clear_error(http: FlaskClient, method: str, path: str,
                                      payload: Any, status: int, needle: str) -> None:
    resp = getattr(http, method)(path, json=payload)
    assert resp.status_code == status, body(resp)
    assert set(body(resp)) >= {"error", "message"}
    assert needle in body(resp)["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b'"text"'])
def test_malformed_bodies_are_refused_on_every_write_route(http: FlaskClient, raw: bytes) -> None:
    for path in ("/master/register", "/master/heartbeat", "/master/data", "/master/configs",
                 "/master/command", "/master/instances", "/master/groups"):
        resp = http.post(path, data=raw, content_type="application/json")
        assert resp.status_code in (400, 422), (path, body(resp))
        assert body(resp)["error"] in ("invalid_json", "invalid_body", "empty_body")


def test_the_queue_refuses_the_101st_command(http: FlaskClient) -> None:
    http.post("/master/register", json=REGISTER)
    for _ in range(100):
        assert http.post("/master/command", json={"sensor_id": SID, "command_type": "identify"}
                         ).status_code == 201
    refused = http.post("/master/command", json={"sensor_id": SID, "command_type": "identify"})
    assert refused.status_code == 429 and body(refused)["error"] == "queue_full"


def test_groups_over_rest(http: FlaskClient) -> None:
    http.post("/master/register", json=REGISTER)
    made = http.post("/master/groups", json={"group_name": "floor_1", "config": {"g": 1}})
    assert made.status_code == 201
    assert body(http.put(f"/master/groups/floor_1/sensors/{SID}"))["sensors"] == [SID]
    assert body(http.get(f"/master/config/{SID}"))["config"] == {"g": 1}
    assert body(http.delete("/master/groups/floor_1"))["sensors_changed"] == 1
    assert body(http.get(f"/master/config/{SID}"))["config_available"] is False
    assert http.get("/master/groups/floor_1").status_code == 404


def test_a_restart_keeps_sensors_templates_versions_and_the_queue(db_path: Path,
                                                                  clock: Clock) -> None:
    first, service, _ = client_for(db_path, clock)
    first.post("/master/register", json=REGISTER)
    first.post("/master/configs", json=TEMPLATE)
    cmd = body(first.post("/master/command", json={"sensor_id": SID, "command_type": "restart"}))
    before = body(first.get(f"/master/sensors/{SID}/config-history"))
    service.stop()
    service.db.close()

    second, service2, agg2 = client_for(db_path, clock)
    try:
        assert [s["sensor_id"] for s in body(second.get("/master/sensors"))["sensors"]] == [SID]
        assert [c["config_name"] for c in body(second.get("/master/configs"))["configs"]] == [
            TEMPLATE["config_name"]]
        assert body(second.get(f"/master/sensors/{SID}/config-history")) == before
        beat = body(second.post("/master/heartbeat", json={"sensor_id": SID}))
        assert [c["command_id"] for c in beat["commands"]] == [cmd["command_id"]]
        assert agg2.devices[SID].source == "sensor"
        assert body(second.get("/devices"))["devices"][-1]["device_id"] == SID
    finally:
        service2.stop()
        service2.db.close()


def test_without_master_control_the_routes_say_so(clock: Clock) -> None:
    agg = Aggregator(INSTANCE, handlers={}, cache_ttl=10, poll_interval=5, clock=clock)
    resp = create_app(agg).test_client().get("/master/sensors")
    assert resp.status_code == 503 and body(resp)["error"] == "master_disabled"


def test_the_feed_tells_the_mqtt_side_what_to_publish(http: FlaskClient) -> None:
    start = body(http.get("/master/changes"))
    http.post("/master/register", json=REGISTER)
    http.post("/master/configs", json=TEMPLATE)
    cmd = body(http.post("/master/command", json={"sensor_id": SID, "command_type": "restart"}))
    page = body(http.get(f"/master/changes?since={start['seq']}&epoch={start['epoch']}&wait=5"))
    assert [(c["kind"], c.get("config_version"), c.get("command_id")) for c in page["changes"]] == [
        ("config", 1, None), ("config", 2, None), ("command", None, cmd["command_id"])]
    assert body(http.get("/master/changes?since=0&epoch=other"))["resync"] is True
    configs = body(http.get("/master/sensor-configs"))
    assert configs["seq"] == page["seq"]
    [only] = configs["configs"]
    assert (only["sensor_id"], only["config_version"], only["config_name"]) == (
        SID, 2, TEMPLATE["config_name"])
    assert body(http.get(f"/master/sensor-configs?sensor_id={SID},ghost"))["configs"] == [only]
    assert body(http.get("/master/sensor-configs?sensor_id=ghost"))["configs"] == []
    delivered = body(http.post(f"/master/sensors/{SID}/deliver"))["commands"]
    assert [c["command_id"] for c in delivered] == [cmd["command_id"]]
    assert body(http.get(f"/master/commands/{cmd['command_id']}"))["status"] == "sent"


def test_a_10_mb_body_is_refused_unread(http: FlaskClient) -> None:
    huge = b'{"sensor_id": "s", "readings": {"x": "' + b"a" * 10_000_000 + b'"}}'
    resp = http.post("/master/data", data=huge, content_type="application/json")
    assert resp.status_code == 413 and body(resp)["error"] == "body_too_large"


@pytest.mark.parametrize(("method", "path"), [
    ("PATCH", "/master/configs/228429642113998028800"),
    ("POST", "/master/configs/228429642113998028800/preview"),
    ("DELETE", "/master/configs/9223372036854775808"),
    ("PATCH", "/master/instances/228429642113998028800"),
    ("DELETE", "/master/instances/228429642113998028800"),
])
def test_a_row_id_larger_than_sqlite_holds_is_no_row(http: FlaskClient, method: str,
                                                      path: str) -> None:
    """Found by the REST fuzzer: an id past 2**63 - 1 reached SQLite and answered 500
    (OverflowError); now no route matches it, as for any id that names no row."""
    resp = http.open(path, method=method, json={"priority": 5})
    assert resp.status_code == 404, resp.get_data(as_text=True)
    assert http.delete("/master/configs/9223372036854775807").status_code == 404  # the largest
