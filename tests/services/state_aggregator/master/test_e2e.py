"""Master control in the real instance (supervisord, real broker): a virtual sensor speaks HTTP to
the aggregator's master routes, and a real MQTT subscriber sees it as a device: mapped state,
availability that follows its check-ins, status events; a restart of the aggregator keeps it all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Instance, demo
from tests.helpers import Broker, Subscriber, internal_headers, publish, retained, wait_for

pytestmark = pytest.mark.e2e
__all__ = ["demo"]  # the module-scoped instance fixture, shared with tests/e2e

SID = "esp32_e2e_001"


class VirtualSensor:
    """A sensor as firmware would drive it, over plain HTTP: it registers with the hub token
    and sends the sensor token it got back with every check-in."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        self.base = base
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.headers.update(headers or {})

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        answer = self.http.request(method, f"{self.base}{path}", timeout=10, **kw)
        if path == "/register" and answer.ok and "token" in answer.json():
            self.http.headers["Authorization"] = f"Bearer {answer.json()['token']}"
        return answer


@pytest.fixture
def sensor(demo: Instance) -> VirtualSensor:
    return VirtualSensor(f"http://127.0.0.1:{demo.env['STATE_AGGREGATOR_PORT']}/master",
                         internal_headers(demo.env))


@pytest.fixture
def lan(demo: Instance) -> VirtualSensor:
    """The sensor side on the LAN port (the web program), as firmware reaches it."""
    return VirtualSensor(f"http://127.0.0.1:{demo.env['PORT']}/api/sensor-master",
                         {"X-Token": demo.hub_token})


@pytest.fixture
def sub(mosquitto: Broker, demo: Instance) -> Iterator[Subscriber]:
    s = Subscriber(mosquitto.host, mosquitto.port).subscribe(f"{demo.root_topic}/devices/{SID}/#")
    yield s
    s.close()


def test_a_master_controlled_sensor_on_the_real_wire(demo: Instance, sensor: VirtualSensor,
                                                     lan: VirtualSensor, sub: Subscriber) -> None:
    dev = f"{demo.root_topic}/devices/{SID}"
    made = sensor.call("POST", "/configs", json={
        "config_name": "e2e", "sensor_id": SID, "config_data": {
            "check_in_interval": 1,
            "sensor_mappings": [{"sensor_name": "sensor.temperature", "entry_field": "Temperature",
                                 "unit": "°C", "data_type": "float"}]}})
    assert made.status_code == 201, made.text
    reg = lan.call("POST", "/register", json={"sensor_id": SID, "sensor_type": "esp32_e2e"})
    assert reg.json()["has_config"] is True and reg.json()["check_in_interval"] == 1
    etag = lan.call("GET", f"/config/{SID}").headers["ETag"]
    up = lan.call("POST", "/data", json={"sensor_id": SID,
                                            "readings": {"sensor.temperature": "18.5"}})
    assert up.json()["accepted"] == 1
    state = sub.wait(f"{dev}/state", timeout=20).json()
    assert (state["device_id"], state["temperature"]) == (SID, 18.5)
    sub.wait(f"{dev}/availability", timeout=20, where=lambda m: m.text == "online")
    # silence: stale after 1.5 s, offline after 3 s: status_changed events on devices/{s}/events
    # and availability offline. Nothing is cleared before, so a transition that came quickly is
    # not lost. (They once went missing when they came while the bridge's first snapshot waited
    # for the aggregator's warm-up: the snapshot folded them in.)
    def status_events() -> list[str]:
        found = [m.json()["data"]["status"] for m in sub.on(f"{dev}/events")
                 if m.json()["event"] == "status_changed"]
        # pending -> online at the first check-in shows only when the aggregator's 1 s tick saw
        # the sensor pending first (registration and the first check-in are separate requests)
        return found[1:] if found[:1] == ["online"] else found

    wait_for(lambda: status_events() == ["stale", "offline"], timeout=20,
             what="stale then offline after the silence")
    sub.wait(f"{dev}/availability", timeout=20, where=lambda m: m.text == "offline")
    sub.clear()
    lan.call("POST", "/heartbeat", json={"sensor_id": SID})
    sub.wait(f"{dev}/availability", timeout=20, where=lambda m: m.text == "online")

    # a restart of the aggregator keeps sensors, templates, versions and the queue
    cmd = sensor.call("POST", "/command", json={"sensor_id": SID, "command_type": "identify"}).json()
    result = demo.supervisorctl("restart", "state-aggregator")
    assert "started" in result.stdout, result.stdout + result.stderr

    def answered() -> requests.Response | None:
        try:
            return lan.call("GET", f"/config/{SID}", headers={"If-None-Match": etag})
        except requests.RequestException:
            return None

    again = wait_for(answered, timeout=30, what="the restarted aggregator")
    assert again is not None
    assert again.status_code == 304
    beat = lan.call("POST", "/heartbeat", json={"sensor_id": SID}).json()
    assert [c["command_id"] for c in beat["commands"]] == [cmd["command_id"]]
    history = sensor.call("GET", f"/sensors/{SID}/config-history").json()["versions"]
    assert [v["config_version"] for v in history] == [1]
    listed = sensor.call("GET", "/sensors").json()["sensors"]
    assert [s["sensor_id"] for s in listed] == [SID]


def test_a_virtual_mqtt_sensor_in_the_real_instance(mosquitto: Broker, demo: Instance,
                                                    sensor: VirtualSensor) -> None:
    """The same over MQTT, through the real bridge process: retained config on registration and
    again after a template edit, a queued command out, its ack in, data into device state."""
    sid = "esp32_e2e_mqtt"
    s = f"{demo.root_topic}/sensors/{sid}"
    watch = Subscriber(mosquitto.host, mosquitto.port).subscribe(f"{s}/#")
    state_sub = Subscriber(mosquitto.host, mosquitto.port).subscribe(
        f"{demo.root_topic}/devices/{sid}/state")
    try:
        made = sensor.call("POST", "/configs", json={"config_name": "mqtt", "sensor_id": sid,
                                                     "config_data": {"polling_interval": 60}})
        assert made.status_code == 201, made.text
        publish(mosquitto.host, mosquitto.port, f"{s}/register",
                json.dumps({"sensor_type": "esp32_e2e", "firmware_version": "1.0.0"}))
        first = retained(mosquitto.host, mosquitto.port, f"{s}/config", timeout=20).json()
        assert (first["config_version"], first["config"]) == (1, {"polling_interval": 60})

        sensor.call("PATCH", f"/configs/{made.json()['id']}",
                    json={"config_data": {"polling_interval": 15}})
        edited = watch.wait(f"{s}/config", timeout=20,
                            where=lambda m: m.json()["config_version"] == 2)
        assert edited.json()["config"] == {"polling_interval": 15}
        assert retained(mosquitto.host, mosquitto.port, f"{s}/config", timeout=20,
                        where=lambda m: m.json()["config_version"] == 2).json()["config"] == {
            "polling_interval": 15}

        cmd = sensor.call("POST", "/command", json={"sensor_id": sid, "command_type": "restart"})
        sent = watch.wait(f"{s}/commands", timeout=20).json()
        assert sent["command_id"] == cmd.json()["command_id"]
        publish(mosquitto.host, mosquitto.port, f"{s}/commands/ack",
                json.dumps({"command_id": sent["command_id"], "status": "completed"}))
        wait_for(lambda: sensor.call("GET", f"/commands/{sent['command_id']}").json()["status"]
                 == "completed", timeout=20, what="the ack over MQTT recorded")

        publish(mosquitto.host, mosquitto.port, f"{s}/data",
                json.dumps({"readings": {"temperature": 17.25}}))
        state = state_sub.wait(f"{demo.root_topic}/devices/{sid}/state", timeout=20).json()
        assert state["temperature"] == 17.25
    finally:
        watch.close()
        state_sub.close()
