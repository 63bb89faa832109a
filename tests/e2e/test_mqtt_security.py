"""A whole instance under the real supervisord against a locked broker: a real mosquitto with a
password file and a TLS listener that wants a client certificate, its certificates from a CA the
test makes. With the right settings the instance is online and its sensor's state arrives; with
a wrong password the bridge says so once, the health check says why, and ``status`` is never
``online``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Instance, instance_env, start_supervisord, stop_supervisord
from tests.helpers import LOCKED_USERS, Broker, Subscriber, TestCa, wait_for

pytestmark = pytest.mark.e2e

SENSOR = {"sensor_id": "t1", "sensor_type": "climate", "interval": 1,
          "source": {"type": "serial", "port": "sim://sec?profile=climate&ids=t1",
                     "mode": "poll", "read_timeout": 1.0}}


def start(broker: Broker, tmp: Path, **env: str) -> Instance:
    instances = tmp / "instances"
    instances.mkdir()
    (instances / "sec.json").write_text(json.dumps({
        "instance_id": "sec", "friendly_name": "locked broker", "config": {"sensors": [SENSOR]}}))
    full = instance_env(broker, tmp, instances, "sec") | env
    proc, output = start_supervisord(full)
    return Instance(full, f"{full['MQTT_BASE_TOPIC']}/v1/instances/sec", proc, output)


def healthcheck(inst: Instance) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.healthcheck"], env=inst.env,
                          capture_output=True, text=True, timeout=30, check=False)


def test_the_instance_works_through_a_password_and_tls(locked: Broker, ca: TestCa,
                                                       tmp_path: Path) -> None:
    inst = start(locked, tmp_path, MQTT_PORT=str(locked.tls_port), MQTT_TLS="true",
                 MQTT_CA_FILE=str(ca.ca), MQTT_CERT_FILE=str(ca.client_cert),
                 MQTT_KEY_FILE=str(ca.client_key), MQTT_USERNAME="hub",
                 MQTT_PASSWORD=LOCKED_USERS["hub"])
    sub = Subscriber(locked.host, locked.port, username="observer", password=LOCKED_USERS["observer"])
    try:
        sub.subscribe(f"{inst.root_topic}/#")
        try:
            sub.wait(f"{inst.root_topic}/status", timeout=60, where=lambda m: m.text == "online")
            state = sub.wait(f"{inst.root_topic}/devices/t1/state", timeout=30).json()
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{inst.log()}") from None
        assert "temperature" in state
        wait_for(lambda: healthcheck(inst).returncode == 0, timeout=60, interval=0.5,
                 what="the health check to pass")
        assert f"connected to mqtts://127.0.0.1:{locked.tls_port}" in inst.log()
    finally:
        sub.close()
        stop_supervisord(inst.proc)


def test_a_wrong_password_is_one_line_and_the_instance_never_online(locked: Broker,
                                                                     tmp_path: Path) -> None:
    inst = start(locked, tmp_path, MQTT_USERNAME="hub", MQTT_PASSWORD="wrong")
    sub = Subscriber(locked.host, locked.port, username="observer", password=LOCKED_USERS["observer"])
    try:
        sub.subscribe(f"{inst.root_topic}/#")
        # The bridge's status file (rewritten every few seconds) carries why, for the check.
        why = ("mqtt-bridge is not connected to the broker: the broker refused the connection: "
               "Not authorized")
        checked = wait_for(lambda: (c := healthcheck(inst)) and why in c.stdout and c,
                           timeout=60, interval=0.5, what="the health check to say why")
        assert checked.returncode == 1
        wait_for(lambda: "RUNNING" in inst.supervisorctl("status", "mqtt-bridge").stdout,
                 timeout=60, what="the bridge RUNNING (it waits for the broker, never exits)")
        refused = [line for line in inst.output if "refused the connection" in line]
        assert len(refused) == 1, refused
        assert "check MQTT_USERNAME and MQTT_PASSWORD" in refused[0]
        assert "Traceback" not in inst.log()
        assert sub.on(f"{inst.root_topic}/status") == []  # never online, not even retained
    finally:
        sub.close()
        stop_supervisord(inst.proc)
