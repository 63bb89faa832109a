"""The LAN port of the real instance (supervisord, the web program under gunicorn with its
worker, the aggregator with master control on SQLite) is locked by default: every door refuses a
request without credentials, the hub token it generated opens ingest, a sensor's own token opens
only that sensor's check-ins and can be refreshed and revoked, bodies are bounded, and a client
past its budget gets 429 with Retry-After. All over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Instance, demo_instance
from tests.helpers import Broker, wait_for

pytestmark = pytest.mark.e2e

KEY = "e2e-management-key"
API = "/api/sensor-master"
INGEST_BUDGET = 200  # per minute, per client: far above what the other tests here spend
MANAGEMENT_BUDGET = 100


@pytest.fixture(scope="module")
def hub(mosquitto: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    env = {k: v for k, v in os.environ.items() if k != "SERVER_TOKEN"}
    assert "SERVER_TOKEN" not in env  # the default: nothing set, the hub makes its own
    with demo_instance(mosquitto, tmp_path_factory.mktemp("lan"), MASTER_API_KEY=KEY,
                       RATE_LIMIT_INGEST=f"{INGEST_BUDGET}/minute",
                       RATE_LIMIT_MANAGEMENT=f"{MANAGEMENT_BUDGET}/minute") as inst:
        wait_for(lambda: ask(inst, "GET", "/api/health").ok, timeout=30, what="the LAN port")
        yield inst


def ask(hub: Instance, method: str, path: str, **kw: Any) -> requests.Response:
    return requests.request(method, f"http://127.0.0.1:{hub.env['PORT']}{path}", timeout=10,
                            **kw)


def hub_auth(hub: Instance) -> dict[str, str]:
    return {"X-Token": hub.hub_token}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register(hub: Instance, sensor_id: str) -> dict[str, Any]:
    reg = ask(hub, "POST", f"{API}/register", headers=hub_auth(hub),
              json={"sensor_id": sensor_id, "sensor_type": "esp32_lan"})
    assert reg.status_code == 200, reg.text
    answer: dict[str, Any] = reg.json()
    return answer


# every route on the LAN port that takes or gives data, with a body where it takes one
DOORS: list[tuple[str, str, Any]] = [
    ("POST", "/api/ingest", {"probe_id": "p", "temperature_c": 20}),
    ("GET", "/api/ingest?probe_id=p&temperature_c=20", None),
    ("GET", "/api/probes", None),
    ("DELETE", "/api/probes/p", None),
    ("POST", "/api/provision", {"probe_id": "p"}),
    ("GET", "/api/readings", None),
    ("GET", "/api/readings/latest", None),
    ("GET", "/api/readings/export.csv", None),
    ("POST", "/api/readings", {"device_id": "d", "ts_utc": "2026-01-01T00:00:00Z",
                               "payload": {"t": 1}}),
    ("POST", "/api/readings/bulk", {"readings": []}),
    ("POST", f"{API}/register", {"sensor_id": "door_sensor"}),
    ("GET", f"{API}/config/door_sensor", None),
    ("POST", f"{API}/heartbeat", {"sensor_id": "door_sensor"}),
    ("POST", f"{API}/data", {"sensor_id": "door_sensor", "readings": {"t": 1}}),
    ("POST", f"{API}/commands/c1/ack", {"status": "completed"}),
    ("POST", f"{API}/token/refresh", {}),
    ("GET", f"{API}/sensors", None),
    ("POST", f"{API}/configs", {"config_name": "x", "sensor_type": "y", "config_data": {}}),
    ("DELETE", f"{API}/sensors/door_sensor/tokens", None),
]


def test_every_door_is_locked_by_default(hub: Instance) -> None:
    for method, path, body in DOORS:
        for headers in ({}, {"X-Token": "wrong"}, {"X-API-Key": "wrong"},
                        {"Authorization": "Bearer wrong.token"}):
            answer = ask(hub, method, path, json=body, headers=headers)
            assert answer.status_code == 401, (method, path, headers, answer.text)
            refusal = answer.json()
            assert refusal["ok"] is False and refusal["error"] in ("unauthorized", "invalid_token")
            # says what is missing, never what exists
            assert hub.hub_token not in answer.text and KEY not in answer.text
            assert "door_sensor" not in refusal["message"]
    assert ask(hub, "GET", "/api/health").json()["ok"] is True  # open: for health checks
    # the dashboard reads openly (DASHBOARD_AUTH unset); 503 only while the aggregator is busy
    page = wait_for(lambda: (r := ask(hub, "GET", "/")).status_code != 503 and r, timeout=30,
                    what="the dashboard")
    assert page.status_code == 200, page.text


def test_the_generated_hub_token_is_stored_printed_once_and_kept(hub: Instance) -> None:
    path = Path(hub.env["DATA_DIR"]) / "server_token"
    token = hub.hub_token
    assert path.stat().st_mode & 0o777 == 0o600 and len(token) >= 43
    printed = [line for line in hub.output if token in line]
    assert len(printed) == 1 and str(path) in printed[0], printed
    reading = {"probe_id": "probe_lan", "temperature_c": 21.5}
    assert ask(hub, "POST", "/api/ingest", json=reading, headers=hub_auth(hub)).status_code == 200
    # the hub token does not open management (403: valid, but not for this)
    assert ask(hub, "GET", f"{API}/sensors", headers=hub_auth(hub)).status_code == 403
    restarted = hub.supervisorctl("restart", "web")
    assert "started" in restarted.stdout, restarted.stdout + restarted.stderr
    again = wait_for(lambda: _quietly(hub, "POST", "/api/ingest", json=reading,
                                      headers=hub_auth(hub)), timeout=30, what="the web program")
    assert again.status_code == 200 and path.read_text().strip() == token
    assert len([line for line in hub.output if token in line]) == 1  # not printed again


def _quietly(hub: Instance, method: str, path: str, **kw: Any) -> requests.Response | None:
    try:
        return ask(hub, method, path, **kw)
    except requests.RequestException:
        return None


def test_a_sensor_token_opens_only_that_sensors_check_ins(hub: Instance) -> None:
    reg = register(hub, "lan_s1")
    other = register(hub, "lan_s2")
    me = bearer(reg["token"])
    assert reg["token"] != other["token"] and reg["token_expires_in"] > 0
    beat = ask(hub, "POST", f"{API}/heartbeat", json={"sensor_id": "lan_s1"}, headers=me)
    assert beat.status_code == 200 and beat.json()["sensor_id"] == "lan_s1"
    assert ask(hub, "GET", f"{API}/config/lan_s1", headers=me).status_code == 200
    data = ask(hub, "POST", f"{API}/data", json={"readings": {"t": 1.5}}, headers=me)  # no id
    assert data.status_code == 200 and data.json()["sensor_id"] == "lan_s1"
    # another sensor's check-ins: 403, whether that sensor exists or not
    for sid in ("lan_s2", "nobody"):
        assert ask(hub, "GET", f"{API}/config/{sid}", headers=me).status_code == 403
        assert ask(hub, "POST", f"{API}/heartbeat", json={"sensor_id": sid},
                   headers=me).status_code == 403
    # an ack of another sensor's command looks like one of a command that does not exist
    cmd = ask(hub, "POST", f"{API}/command", headers={"X-API-Key": KEY},
              json={"sensor_id": "lan_s2", "command_type": "identify"}).json()
    stolen = ask(hub, "POST", f"{API}/commands/{cmd['command_id']}/ack",
                 json={"status": "completed"}, headers=me)
    none = ask(hub, "POST", f"{API}/commands/no_such_cmd/ack", json={"status": "completed"},
               headers=me)
    assert stolen.status_code == none.status_code == 404
    # the hub token is not a sensor token; a sensor token is not the hub token or a key
    assert ask(hub, "POST", f"{API}/heartbeat", json={"sensor_id": "lan_s1"},
               headers=bearer(hub.hub_token)).status_code == 401
    assert ask(hub, "POST", "/api/ingest", json={"probe_id": "x", "temperature_c": 1},
               headers=me).status_code == 401
    assert ask(hub, "GET", f"{API}/sensors", headers={"X-API-Key": reg["token"]}).status_code == 401
    listed = ask(hub, "GET", f"{API}/sensors/lan_s1/tokens", headers={"X-API-Key": KEY}).json()
    assert [t["valid"] for t in listed["tokens"]] == [True]
    assert reg["token"].split(".")[1] not in json.dumps(listed)  # no secret ever comes back


def test_refresh_keeps_the_old_token_for_the_overlap_and_revoke_ends_them(hub: Instance) -> None:
    old = register(hub, "lan_s3")
    fresh = ask(hub, "POST", f"{API}/token/refresh", headers=bearer(old["token"]))
    assert fresh.status_code == 201, fresh.text
    new = fresh.json()
    assert new["token"] != old["token"] and new["sensor_id"] == "lan_s3"
    for token in (old["token"], new["token"]):  # the old one within SENSOR_TOKEN_OVERLAP
        assert ask(hub, "POST", f"{API}/heartbeat", json={"sensor_id": "lan_s3"},
                   headers=bearer(token)).status_code == 200
    mgmt = {"X-API-Key": KEY}
    one = ask(hub, "DELETE", f"{API}/sensors/lan_s3/tokens/{old['token_id']}", headers=mgmt)
    assert one.json()["revoked"] == 1
    refused = ask(hub, "POST", f"{API}/heartbeat", json={"sensor_id": "lan_s3"},
                  headers=bearer(old["token"]))
    assert refused.status_code == 401 and "register again" in refused.json()["message"]
    assert ask(hub, "POST", f"{API}/token/refresh", headers=bearer(old["token"])).status_code == 401
    assert ask(hub, "POST", f"{API}/heartbeat", json={"sensor_id": "lan_s3"},
               headers=bearer(new["token"])).status_code == 200
    assert ask(hub, "DELETE", f"{API}/sensors/lan_s3/tokens", headers=mgmt).json()["revoked"] == 1
    assert ask(hub, "GET", f"{API}/config/lan_s3", headers=bearer(new["token"])).status_code == 401
    again = register(hub, "lan_s3")  # the hub token lets it back in, with a new token
    assert ask(hub, "GET", f"{API}/config/lan_s3", headers=bearer(again["token"])).status_code == 200


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_oversize_deep_and_overlong_bodies_are_refused_and_cost_nothing(hub: Instance) -> None:
    auth = hub_auth(hub)
    big = ask(hub, "POST", "/api/ingest", data=b'{"pad": "' + b"x" * 70_000 + b'"}',
              headers={**auth, "Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["error"] == "body_too_large"
    deep = ask(hub, "POST", "/api/ingest", headers=auth,
               json={"probe_id": "p", "temperature_c": 1, "x": nested(40)})
    assert deep.status_code == 422 and deep.json()["error"] == "too_deep"
    me = bearer(register(hub, "lan_s4")["token"])
    deep_metrics = ask(hub, "POST", f"{API}/heartbeat", headers=me,
                       json={"sensor_id": "lan_s4", "metrics": nested(40)})
    assert deep_metrics.status_code == 422 and deep_metrics.json()["error"] == "too_deep"
    # string and list lengths: the pydantic models
    long_name = ask(hub, "POST", f"{API}/register", headers=auth,
                    json={"sensor_id": "lan_s5", "sensor_name": "n" * 300})
    assert long_name.status_code == 422 and "sensor_name" in long_name.json()["message"]
    many = ask(hub, "POST", f"{API}/register", headers=auth,
               json={"sensor_id": "lan_s5", "capabilities": ["c"] * 65})
    assert many.status_code == 422 and "capabilities" in many.json()["message"]
    bulk = ask(hub, "POST", "/api/readings/bulk", headers=auth, json={"readings": [
        {"device_id": "d", "ts_utc": "2026-01-01T00:00:00Z", "payload": {"t": i}}
        for i in range(1001)]})
    assert bulk.status_code in (413, 422), bulk.text
    assert ask(hub, "GET", "/api/health").json()["ok"] is True


def test_zz_a_client_past_its_budget_gets_429_with_retry_after(hub: Instance) -> None:
    """Last in this module: it spends the budgets of 127.0.0.1."""
    mgmt = {"X-API-Key": KEY}
    answers = [ask(hub, "GET", f"{API}/sensors", headers=mgmt)
               for _ in range(MANAGEMENT_BUDGET + 1)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited, [a.status_code for a in answers]
    assert int(limited[0].headers["Retry-After"]) >= 1
    assert limited[0].json()["error"] == "rate_limited"
    # unauthenticated guesses spend the same budget
    assert ask(hub, "GET", f"{API}/sensors", headers={"X-API-Key": "guess"}).status_code == 429
    # the ingest budget is another one, until it is spent too
    reading = {"probe_id": "probe_lan", "temperature_c": 20}
    answers = [ask(hub, "POST", "/api/ingest", json=reading, headers=hub_auth(hub))
               for _ in range(INGEST_BUDGET + 1)]
    codes = [a.status_code for a in answers]
    assert codes[0] == 200 and 429 in codes and set(codes) == {200, 429}, codes
    assert ask(hub, "GET", "/api/health").json()["ok"] is True  # reading pages have no budget
