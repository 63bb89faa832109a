"""The demo instance end to end: real supervisord, real config, real broker, asserted as a real
subscriber sees it. Tests run in file order; the crash test is last."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psutil
import pytest

from shared.processes import PROCESS_NAMES
from tests.conftest import ROOT
from tests.e2e.conftest import Instance
from tests.helpers import Broker, Subscriber, publish, retained, wait_for

pytestmark = pytest.mark.e2e

DEMO = json.loads((ROOT / "instances" / "demo.json").read_text())
DEVICES = [s["sensor_id"] for s in DEMO["config"]["sensors"]]
READ_ONLY = "temp_living_room"
HUB_DEVICES = ["hub_system"]  # the hub's own health, present in every instance


@pytest.fixture
def sub(mosquitto: Broker, demo: Instance) -> Iterator[Subscriber]:
    s = Subscriber(mosquitto.host, mosquitto.port).subscribe(f"{demo.root_topic}/#")
    yield s
    s.close()


def test_online_is_retained_and_every_device_has_state(mosquitto: Broker, demo: Instance,
                                                        sub: Subscriber) -> None:
    sub.wait(f"{demo.root_topic}/status", timeout=20, where=lambda m: m.text == "online")
    assert retained(mosquitto.host, mosquitto.port, f"{demo.root_topic}/status").text == "online"
    for device in DEVICES:
        state = sub.wait(f"{demo.root_topic}/devices/{device}/state", timeout=20)
        body = state.json()
        assert body["device_id"] == device
        assert body["timestamp"].endswith("Z")
        assert len(body) > 2, f"state of {device} carries no property: {body}"
        sub.wait(f"{demo.root_topic}/devices/{device}/availability", timeout=20,
                 where=lambda m: m.text == "online")
        for suffix in ("availability", "state"):
            retained(mosquitto.host, mosquitto.port, f"{demo.root_topic}/devices/{device}/{suffix}")


def test_state_per_property_is_bare_json(demo: Instance, sub: Subscriber) -> None:
    topic = f"{demo.root_topic}/devices/temp_bedroom/state/temperature"
    value = json.loads(sub.wait(topic, timeout=20).payload)
    assert isinstance(value, float)
    motion = sub.wait(f"{demo.root_topic}/devices/motion_hallway/state/motion", timeout=20)
    assert json.loads(motion.payload) in (True, False)


def test_devices_list_lists_every_device(mosquitto: Broker, demo: Instance,
                                         sub: Subscriber) -> None:
    publish(mosquitto.host, mosquitto.port, f"{demo.root_topic}/meta/request/devices_list",
            json.dumps({"id": "req-1"}))
    answer = sub.wait(f"{demo.root_topic}/meta/devices_list",
                      where=lambda m: m.json().get("id") == "req-1").json()
    listed = {d["device_id"]: d for d in answer["devices"]}
    assert set(listed) == {*DEVICES, *HUB_DEVICES}
    assert listed[READ_ONLY]["global_id"] == f"demo_{READ_ONLY}"
    assert listed[READ_ONLY]["source"] == "serial"
    assert listed["motion_hallway"]["source"] == "http"
    assert listed["hub_system"]["source"] == "system"
    assert {d["source"] for d in listed.values()} <= {"serial", "http", "probe", "sensor", "system"}
    assert all(set(d) >= {"device_id", "global_id", "name", "model", "source", "enabled",
                          "online", "last_seen"} for d in listed.values())


def test_info_health_and_unknown_meta(mosquitto: Broker, demo: Instance, sub: Subscriber) -> None:
    for kind in ("info", "health", "nonsense"):
        publish(mosquitto.host, mosquitto.port, f"{demo.root_topic}/meta/request/{kind}",
                json.dumps({"id": f"m-{kind}"}))
    info = sub.wait(f"{demo.root_topic}/meta/info",
                    where=lambda m: m.json().get("id") == "m-info").json()
    assert info["connector_type"] == "sensor-hub"
    assert info["instance_id"] == "demo"
    assert info["counts"]["devices"] == len(DEVICES) + len(HUB_DEVICES)
    health = sub.wait(f"{demo.root_topic}/meta/health",
                      where=lambda m: m.json().get("id") == "m-health").json()
    assert set(health["processes"]) == {"mqtt-bridge", "state-aggregator", "serial-handler",
                                        "http-poller"}
    error = sub.wait(f"{demo.root_topic}/meta/nonsense").json()
    assert "unknown meta request" in error["error"]


def test_command_to_read_only_device_is_rejected(mosquitto: Broker, demo: Instance,
                                                 sub: Subscriber) -> None:
    publish(mosquitto.host, mosquitto.port, f"{demo.root_topic}/devices/{READ_ONLY}/cmd",
            json.dumps({"id": "c-ro", "values": {"temperature": 30}}))
    response = sub.wait(f"{demo.root_topic}/devices/{READ_ONLY}/cmd/response").json()
    assert response["cmd_id"] == "c-ro"
    assert response["status"] == "rejected"
    assert "read-only" in response["error"]
    assert not sub.wait(f"{demo.root_topic}/devices/{READ_ONLY}/cmd/response").retain


def test_command_to_relay_succeeds_and_changes_state(mosquitto: Broker, demo: Instance,
                                                     sub: Subscriber) -> None:
    publish(mosquitto.host, mosquitto.port, f"{demo.root_topic}/devices/heater_relay/cmd",
            json.dumps({"id": "c-on", "values": {"state": "on"}, "timeout": 3000}))
    response = sub.wait(f"{demo.root_topic}/devices/heater_relay/cmd/response").json()
    assert response == {**response, "cmd_id": "c-on", "status": "success"}
    sub.wait(f"{demo.root_topic}/devices/heater_relay/state",
             where=lambda m: m.json().get("state") == "on")


def test_group_command_answers_once_per_member(mosquitto: Broker, demo: Instance,
                                               sub: Subscriber) -> None:
    publish(mosquitto.host, mosquitto.port, f"{demo.root_topic}/groups/climate/cmd",
            json.dumps({"id": "g-1", "values": {"x": 1}}))
    for member in ("temp_living_room", "temp_bedroom"):
        topic = f"{demo.root_topic}/devices/{member}/cmd/response"
        assert sub.wait(topic, where=lambda m: m.json()["cmd_id"] == "g-1").json()["status"] \
            == "rejected"


def test_expired_command_is_not_run(mosquitto: Broker, demo: Instance, sub: Subscriber) -> None:
    issued = (datetime.now(UTC) - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    publish(mosquitto.host, mosquitto.port, f"{demo.root_topic}/devices/heater_relay/cmd",
            json.dumps({"id": "c-old", "timestamp": issued, "timeout": 1000,
                        "values": {"state": "off"}}))
    response = sub.wait(f"{demo.root_topic}/devices/heater_relay/cmd/response",
                        where=lambda m: m.json()["cmd_id"] == "c-old").json()
    assert response["status"] == "expired"


def test_retained_command_is_cleared_not_run(mosquitto: Broker, demo: Instance,
                                             sub: Subscriber) -> None:
    topic = f"{demo.root_topic}/devices/heater_relay/cmd"
    publish(mosquitto.host, mosquitto.port, topic,
            json.dumps({"id": "c-ret", "values": {"state": "off"}}), retain=True)
    response = sub.wait(f"{topic}/response", where=lambda m: m.json()["cmd_id"] == "c-ret").json()
    assert response["status"] == "rejected"
    # The bridge removed it from the broker: a new subscriber gets no retained command.
    sub.wait(topic, where=lambda m: m.payload == b"" and not m.retain)
    fresh = Subscriber(mosquitto.host, mosquitto.port).subscribe(topic)
    try:
        time.sleep(0.3)  # a retained message would arrive with the SUBACK; this checks absence
        assert fresh.on(topic) == []
    finally:
        fresh.close()


@pytest.mark.parametrize("suffix", ["devices/heater_relay/cmd", "devices/temp_bedroom/get",
                                    "meta/request/info"])
def test_malformed_json_gets_an_error_and_the_bridge_goes_on(
        mosquitto: Broker, demo: Instance, sub: Subscriber, suffix: str) -> None:
    publish(mosquitto.host, mosquitto.port, f"{demo.root_topic}/{suffix}", b"{not json")
    if suffix.endswith("/cmd"):
        answer = sub.wait(f"{demo.root_topic}/{suffix}/response").json()
        assert answer["status"] == "error" and "not valid JSON" in answer["error"]
    elif suffix.endswith("/get"):
        answer = sub.wait(f"{demo.root_topic}/devices/temp_bedroom/error",
                          where=lambda m: m.json()["error_code"] == "INVALID_REQUEST").json()
        assert "not valid JSON" in answer["message"]
    else:
        answer = sub.wait(f"{demo.root_topic}/meta/info",
                          where=lambda m: "error" in m.json()).json()
        assert "not valid JSON" in answer["error"]
    # Still alive: a good request is answered.
    publish(mosquitto.host, mosquitto.port, f"{demo.root_topic}/meta/request/info",
            json.dumps({"id": f"alive-{suffix}"}))
    sub.wait(f"{demo.root_topic}/meta/info",
             where=lambda m: m.json().get("id") == f"alive-{suffix}")


def test_get_forces_a_fresh_read(mosquitto: Broker, demo: Instance, sub: Subscriber) -> None:
    topic = f"{demo.root_topic}/devices/heater_relay/state"
    # Right after one of the relay's polls (every 10 s), so the next is ~10 s away: a newer
    # state within 3 s can only come from the get.
    sub.clear()
    polled = sub.wait(topic, timeout=15, where=lambda m: not m.retain).json()
    publish(mosquitto.host, mosquitto.port, f"{demo.root_topic}/devices/heater_relay/get", b"")
    fresh = sub.wait(topic, timeout=3,
                     where=lambda m: m.json()["timestamp"] > polled["timestamp"]).json()
    assert fresh["seq"] == polled["seq"] + 1


def test_supervisorctl_shows_every_program_running(demo: Instance) -> None:
    result = wait_for(lambda: (r := demo.supervisorctl("status")).stdout.count("RUNNING")
                      == len(PROCESS_NAMES) and r, timeout=20, what="every program RUNNING")
    for name in PROCESS_NAMES:
        assert name in result.stdout


# supervisord.conf's allocator settings, each measured (bench/README.md, memory per device)
GLIBC = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072",
         "MALLOC_TRIM_THRESHOLD_": "131072"}


def test_every_program_runs_with_the_allocator_settings_of_the_config(demo: Instance) -> None:
    """The settings come from supervisord.conf (not from the test's environment) and reach
    each program's processes as they run, the gunicorn workers too; Python's own allocator
    stays (``PYTHONMALLOC=malloc`` was measured: more memory, more CPU)."""
    assert not {"PYTHONMALLOC", *GLIBC} & demo.env.keys()
    def pid_of(name: str) -> int | None:
        pid = demo.supervisorctl("pid", name).stdout.strip()
        return int(pid) if pid.isdigit() and pid != "0" else None

    for name in PROCESS_NAMES:
        pid = wait_for(lambda: pid_of(name), timeout=20, what=f"{name}'s pid")  # noqa: B023
        master = psutil.Process(pid)
        procs = [master, *master.children()]
        assert len(procs) == (1 if name == "mqtt-bridge" else 2), (name, procs)  # master + worker
        for proc in procs:
            env = proc.environ()
            assert {k: env.get(k) for k in GLIBC} == GLIBC, (name, proc)
            assert "PYTHONMALLOC" not in env, (name, proc)


def test_supervisorctl_restart_brings_the_bridge_back_publishing_once(
        mosquitto: Broker, demo: Instance, sub: Subscriber) -> None:
    status = f"{demo.root_topic}/status"
    sub.clear()
    result = demo.supervisorctl("restart", "mqtt-bridge")
    assert "mqtt-bridge: started" in result.stdout, result.stdout + result.stderr
    # A clean stop says offline itself; the new process says online.
    sub.wait(status, where=lambda m: m.text == "offline")
    sub.wait(status, where=lambda m: m.text == "online")
    # Every topic once: a marker (a fresh read of the relay) goes through the same path after
    # the start-up publishing, so any second copy would be here before it.
    for device in (*DEVICES, *HUB_DEVICES):
        sub.wait(f"{demo.root_topic}/devices/{device}/availability", timeout=20)
    asked = time.time()
    publish(mosquitto.host, mosquitto.port, f"{demo.root_topic}/devices/heater_relay/get", b"")
    sub.wait(f"{demo.root_topic}/devices/heater_relay/state", timeout=10,
             where=lambda m: _ts(m.json()["timestamp"]) >= asked - 0.5)
    with sub.lock:
        online_at = max(i for i, m in enumerate(sub.messages)
                        if m.topic == status and m.text == "online")
        since = sub.messages[online_at:]
    for device in (*DEVICES, *HUB_DEVICES):
        topic = f"{demo.root_topic}/devices/{device}"
        assert len([m for m in since if m.topic == f"{topic}/availability"]) == 1, device
        seqs = [m.json()["seq"] for m in since if m.topic == f"{topic}/state"]
        assert len(seqs) == len(set(seqs)), f"{device} state published twice: {seqs}"


def test_restarting_the_aggregator_loses_no_device(demo: Instance, sub: Subscriber) -> None:
    for device in ("temp_living_room", "temp_bedroom", "heater_relay"):
        sub.wait(f"{demo.root_topic}/devices/{device}/availability", timeout=30,
                 where=lambda m: m.text == "online")
    sub.clear()
    result = demo.supervisorctl("restart", "state-aggregator")
    assert "state-aggregator: started" in result.stdout, result.stdout + result.stderr
    # The bridge resyncs with the new aggregator, which took the handlers' last readings:
    # states keep flowing and no device is announced offline.
    for device in ("temp_living_room", "temp_bedroom", "heater_relay"):
        sub.wait(f"{demo.root_topic}/devices/{device}/state", timeout=30)
    flapped = [m.topic for m in sub.messages
               if m.topic.endswith("/availability") and m.text == "offline"]
    assert flapped == []


def test_healthcheck_passes(demo: Instance) -> None:
    import subprocess
    import sys
    result = wait_for(lambda: (r := subprocess.run(
        [sys.executable, "-m", "shared.healthcheck"], env=demo.env, capture_output=True,
        text=True, check=False)).returncode == 0 and r, timeout=20, what="a healthy instance")
    assert "healthy" in result.stdout


def test_kill_9_bridge_publishes_offline_then_comes_back(mosquitto: Broker, demo: Instance,
                                                         sub: Subscriber) -> None:
    status = f"{demo.root_topic}/status"
    sub.wait(status, where=lambda m: m.text == "online")
    pid = int(demo.supervisorctl("pid", "mqtt-bridge").stdout.strip())
    sub.clear()
    os.kill(pid, signal.SIGKILL)
    sub.wait(status, where=lambda m: m.text == "offline", timeout=15)  # the broker's Last Will
    sub.wait(status, where=lambda m: m.text == "online", timeout=30)
    new_pid = int(wait_for(lambda: (p := demo.supervisorctl("pid", "mqtt-bridge").stdout.strip())
                           .isdigit() and p, what="a new bridge pid"))
    assert new_pid != pid
    # The broker keeps "online" retained for whoever subscribes next.
    assert retained(mosquitto.host, mosquitto.port, status, where=lambda m: m.text == "online")


def _ts(iso_z: str) -> float:
    return datetime.fromisoformat(iso_z.replace("Z", "+00:00")).timestamp()
