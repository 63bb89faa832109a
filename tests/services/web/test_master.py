"""Master control's LAN face (``/api/sensor-master/...`` on the web program): registering with the
hub token, the sensor's own token for its check-ins, management behind ``X-API-Key``, everything
forwarded over real HTTP to a real aggregator with master control on a real SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from pydantic import SecretStr

from services.state_aggregator.app import create_app as aggregator_app
from services.state_aggregator.core import Aggregator
from services.state_aggregator.master.admin import MasterAdmin
from services.state_aggregator.master.db import Database
from services.state_aggregator.master.routes import MasterControl
from services.state_aggregator.master.service import MasterService
from services.web.app import build_context
from services.web.app import create_app as web_app
from shared.instance import parse_instance
from shared.settings import Settings
from tests.helpers import free_port
from tests.services.web.support import INSTANCE, Served

KEY = "s3cret-key"
HUB = "hub-token"
API = "/api/sensor-master"
SID = "esp32_lan_001"
TEMPLATE = {"config_name": "lan", "sensor_type": "esp32", "config_data": {"polling_interval": 60}}


def make_web(agg_url: str, tmp: Path, key: str | None) -> FlaskClient:
    settings = Settings(state_aggregator_url=agg_url, http_poller_url=f"http://127.0.0.1:{free_port()}",
                        data_dir=tmp, server_token=HUB)
    ctx, _pusher = build_context(settings)
    app = web_app(ctx, master_api_key=SecretStr(key) if key else None)
    return app.test_client()


@pytest.fixture
def aggregator(tmp_path: Path) -> Iterator[str]:
    agg = Aggregator(parse_instance(INSTANCE), handlers={}, cache_ttl=10, poll_interval=5)
    service = MasterService(Database(tmp_path / "master.db"), sink=agg)
    service.start(tick_s=3600)
    served = Served(aggregator_app(agg, master=MasterControl(service, MasterAdmin(service))))
    yield served.url
    served.stop()
    service.stop()
    service.db.close()


@pytest.fixture
def lan(aggregator: str, tmp_path: Path) -> FlaskClient:
    return make_web(aggregator, tmp_path, KEY)


def admin(client: FlaskClient, method: str, path: str, **kw: Any) -> Any:
    return getattr(client, method)(f"{API}{path}", headers={"X-API-Key": KEY}, **kw)


def register(client: FlaskClient, sensor_id: str = SID, **body: Any) -> dict[str, Any]:
    """Register with the hub token; the answer, with the sensor's token."""
    reg = client.post(f"{API}/register", json={"sensor_id": sensor_id, **body},
                      headers={"X-Token": HUB})
    assert reg.status_code == 200, reg.get_json()
    answer: dict[str, Any] = reg.get_json()
    return answer


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_sensor_over_the_lan(lan: FlaskClient) -> None:
    assert admin(lan, "post", "/configs", json=TEMPLATE).status_code == 201
    reg = register(lan, sensor_type="esp32")
    assert reg["config_endpoint"] == f"{API}/config/{SID}"
    me = bearer(reg["token"])
    cfg = lan.get(f"{API}/config/{SID}", headers=me)
    assert cfg.status_code == 200 and cfg.headers["ETag"] == f'"{cfg.get_json()["config_hash"]}"'
    same = lan.get(f"{API}/config/{SID}", headers={"If-None-Match": cfg.headers["ETag"], **me})
    assert (same.status_code, same.data) == (304, b"")
    # a template edit: 304 before, 200 after, at the next check-in
    admin(lan, "patch", "/configs/1", json={"config_data": {"polling_interval": 15}})
    fresh = lan.get(f"{API}/config/{SID}", headers={"If-None-Match": cfg.headers["ETag"], **me})
    assert fresh.status_code == 200 and fresh.get_json()["config"] == {"polling_interval": 15}
    cmd = admin(lan, "post", "/command", json={"sensor_id": SID, "command_type": "restart"})
    assert cmd.status_code == 201
    beat = lan.post(f"{API}/heartbeat", json={"sensor_id": SID, "metrics": {"uptime": 3}},
                    headers=me)
    [sent] = beat.get_json()["commands"]
    ack = lan.post(f"{API}/commands/{sent['command_id']}/ack", json={"status": "completed"},
                   headers=me)
    assert ack.get_json()["status"] == "completed"
    data = lan.post(f"{API}/data", json={"sensor_id": SID, "readings": {"t": 1.5}}, headers=me)
    assert data.get_json()["accepted"] == 1
    listed = admin(lan, "get", f"/commands?sensor_id={SID}&status=completed").get_json()
    assert [c["command_id"] for c in listed["commands"]] == [sent["command_id"]]
    why = admin(lan, "get", f"/sensors/{SID}/effective-config").get_json()
    assert why["winner"]["config_name"] == "lan"


def test_management_needs_the_key(lan: FlaskClient) -> None:
    for headers in ({}, {"X-API-Key": "wrong"}):
        refused = lan.get(f"{API}/sensors", headers=headers)
        assert refused.status_code == 401 and refused.get_json()["error"] == "unauthorized"
    assert admin(lan, "get", "/sensors").status_code == 200


def test_without_master_api_key_management_is_disabled_not_open(aggregator: str,
                                                                tmp_path: Path) -> None:
    client = make_web(aggregator, tmp_path, None)
    for method, path in (("get", "/sensors"), ("post", "/configs"), ("get", "/instances"),
                         ("delete", "/sensors/x")):
        resp = getattr(client, method)(f"{API}{path}", headers={"X-API-Key": "anything"},
                                       json=TEMPLATE if method == "post" else None)
        assert resp.status_code == 503, path
        assert "management disabled" in resp.get_json()["message"]
    # the sensor side still works
    assert register(client)["token"]


@pytest.mark.parametrize(("method", "path", "payload", "status", "needle"), [
    # another sensor's id with a sensor's token: refused, whether that sensor exists or not
    ("post", "/heartbeat", {"sensor_id": "ghost"}, 403, "not valid for that sensor_id"),
    ("get", "/tokens/verify", None, 404, "no route"),
    ("post", "/tokens/issue", {"sensor_id": "known"}, 404, "no route"),
    ("post", "/register", {"sensor_id": "a/b"}, 422, "sensor_id"),
    ("get", "/config/bad+id", None, 400, "invalid id 'bad+id'"),
    ("get", "/config/bad%23id", None, 400, "invalid id 'bad#id'"),
    ("get", "/changes", None, 404, "no route"),
    ("get", "/sensor-configs", None, 404, "no route"),
    ("post", "/sensors/x/deliver", None, 404, "no route"),
])
def test_bad_requests_get_clear_errors(lan: FlaskClient, method: str, path: str, payload: Any,
                                       status: int, needle: str) -> None:
    token = register(lan, "known")["token"]  # a good sensor token: the ghost is unknown
    resp = getattr(lan, method)(f"{API}{path}", json=payload,
                                headers={"X-API-Key": KEY, "X-Token": HUB, **bearer(token)})
    assert resp.status_code == status, resp.get_json()
    body = resp.get_json()
    assert body["ok"] is False and needle in body["message"], body


def test_a_template_naming_neither_target_is_refused_with_the_field(lan: FlaskClient) -> None:
    resp = admin(lan, "post", "/configs", json={"config_name": "x", "config_data": {}})
    assert resp.status_code == 422
    assert "exactly one of sensor_id, group or sensor_type" in resp.get_json()["message"]


def test_bodies_bigger_than_a_probes_but_bounded(lan: FlaskClient) -> None:
    me = bearer(register(lan)["token"])
    batch = [{"id": f"r{i}", "timestamp": 1_700_000_000 + i, "readings": {"t": i}}
             for i in range(3000)]  # about 200 KB: past the probe API's 64 KiB
    resp = lan.post(f"{API}/data", json={"sensor_id": SID, "batch": batch}, headers=me)
    assert resp.status_code == 200 and resp.get_json()["accepted"] == 3000
    huge = lan.post(f"{API}/data", data=b"x" * 10_000_000, content_type="application/json",
                    headers=me)
    assert huge.status_code == 413


def test_an_absent_aggregator_means_retry_without_internal_addresses(tmp_path: Path) -> None:
    client = make_web(f"http://127.0.0.1:{free_port()}", tmp_path, KEY)
    resp = client.post(f"{API}/register", json={"sensor_id": SID}, headers={"X-Token": HUB})
    assert resp.status_code == 503 and resp.get_json()["error"] == "not_ready"
    assert "127.0.0.1" not in resp.get_data(as_text=True)


def test_the_internal_master_routes_are_not_on_the_lan_port(lan: FlaskClient) -> None:
    assert lan.get("/master/sensors").status_code == 404
    assert lan.post("/master/register", json={"sensor_id": SID}).status_code == 404
