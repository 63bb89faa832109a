"""Virtual probes against the real hub's master control (the aggregator under supervisord, a real
mosquitto): register → config → data as device state on MQTT, a template edit within one
check-in, commands with acks, fail-over and fail-back between two masters, the hub away and every
buffered reading delivered once, OTA good / corrupt / never checking in.

Until the ``web`` program serves ``/api/sensor-master`` on the LAN port, the masters' endpoints
are the aggregator's own ``/master`` routes (same handlers, a path prefix apart)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from firmware import VERSION
from firmware.host import VirtualProbe
from tests.firmware.masterhub import Images, MasterHub
from tests.helpers import Broker, Subscriber, wait_for

pytestmark = pytest.mark.e2e
FAST = {"tries": 2, "failback_after": 3, "retry_ms": 300, "default_check_in_s": 1}


@pytest.fixture(scope="module")
def hub(mosquitto: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MasterHub]:
    h = MasterHub(mosquitto, tmp_path_factory.mktemp("mc"))
    yield h
    h.stop()


@pytest.fixture
def sub(mosquitto: Broker, hub: MasterHub) -> Iterator[Subscriber]:
    s = Subscriber(mosquitto.host, mosquitto.port).subscribe(f"{hub.root}/devices/#")
    yield s
    s.close()


def start(hub: MasterHub, tmp: Path, sensor_id: str, *, sensor_type: str, **options: Any) -> VirtualProbe:
    # Not provisioned by the hub: the hub token comes from its settings (device.json "token").
    return VirtualProbe(sensor_id, tmp, bind="127.0.0.1", masters=[hub.primary_url, hub.secondary_url],
                        sensor_type=sensor_type,
                        master_options={**FAST, "hub_token": hub.instance.hub_token,
                                        **options}).start()


def status(probe: VirtualProbe) -> dict[str, Any]:
    """The probe's /status; a probe that is rebooting is unreachable for a moment."""
    def get() -> dict[str, Any] | None:
        try:
            return requests.get(probe.url + "/status", timeout=5).json()  # type: ignore[no-any-return]
        except requests.ConnectionError:
            return None
    return wait_for(get, timeout=15, what=f"{probe.id}'s /status")


def template(hub: MasterHub, sensor_type: str, **config: Any) -> int:
    data = {"check_in_interval": 1, "polling_interval": 0.5,
            "sensor_mappings": [{"sensor_name": "temperature_c", "entry_field": "temperature",
                                 "unit": "°C", "data_type": "float"}], **config}
    made = hub.call("POST", "/configs", {"config_name": f"{sensor_type} v1", "sensor_type": sensor_type,
                                         "config_data": data, "priority": 10})
    return int(made["id"])


def test_register_config_data_template_edit_and_commands(hub: MasterHub, sub: Subscriber,
                                                         tmp_path: Path) -> None:
    tid = template(hub, "fw_a")
    probe = start(hub, tmp_path, "mc-a", sensor_type="fw_a")
    try:
        wait_for(lambda: status(probe)["master"]["config_name"] == "fw_a v1", timeout=30,
                 what="the config applied")
        st = status(probe)
        assert st["interval_ms"] == 500 and st["master"]["master"] == "primary"
        row = wait_for(lambda: (s := hub.sensor("mc-a")) and s["in_sync"] and s, what="in sync")
        assert row["sensor_type"] == "fw_a" and row["firmware_version"] == VERSION
        metrics = wait_for(lambda: hub.sensor("mc-a")["metrics"], what="a heartbeat")  # type: ignore[index]
        assert metrics["interval_ms"] == 500 and "free_memory" in metrics and "uptime" in metrics
        # Readings through the config's mapping become device state on MQTT.
        state = sub.wait(f"{hub.root}/devices/mc-a/state", timeout=30).json()
        assert isinstance(state["temperature"], float) and state["sample"] >= 1

        # A template edit reaches the probe within one check-in (1 s here).
        edited = time.monotonic()
        hub.call("PATCH", f"/configs/{tid}", {"config_data": {"check_in_interval": 1,
                                                              "polling_interval": 0.7}})
        wait_for(lambda: status(probe)["interval_ms"] == 700, timeout=10, what="the edit applied")
        took = time.monotonic() - edited
        assert took < 2.5, f"the edit took {took:.2f} s"
        wait_for(lambda: hub.sensor("mc-a")["in_sync"], what="in sync after the edit")  # type: ignore[index]

        # Commands: each acked once with its outcome.
        cid = hub.command("mc-a", "set_target_temp", {"target": 18.5})
        assert wait_for(lambda: hub.command_done(cid))["status"] == "completed"
        assert status(probe)["master"]["target_temp"] == 18.5
        cid = hub.command("mc-a", "self_destruct", {})
        done = wait_for(lambda: hub.command_done(cid))
        assert done["status"] == "failed" and "unknown command_type" in done["result"]["error"]
        cid = hub.command("mc-a", "set_interval", {"blob": "x" * 5000})
        done = wait_for(lambda: hub.command_done(cid))
        assert done["status"] == "failed" and "larger than" in done["result"]["error"]
        cid = hub.command("mc-a", "set_interval", {"interval_ms": "often"})
        done = wait_for(lambda: hub.command_done(cid))
        assert done["status"] == "failed" and "interval_ms" in done["result"]["error"]
        cid = hub.command("mc-a", "identify", {"seconds": 30})
        assert wait_for(lambda: hub.command_done(cid))["status"] == "completed"
        assert probe.hal.led is True
        boot = status(probe)["boot_id"]
        cid = hub.command("mc-a", "restart", {})
        assert wait_for(lambda: hub.command_done(cid))["status"] == "completed"
        wait_for(lambda: probe.boots == 2, what="the restart")
        assert wait_for(lambda: status(probe)["boot_id"]) != boot
        assert status(probe)["master"]["target_temp"] == 18.5  # persisted across the reboot
        assert probe.hal.read("commands.json") is not None
    finally:
        probe.stop()


def test_fail_over_and_back_without_flapping(hub: MasterHub, tmp_path: Path) -> None:
    template(hub, "fw_b")
    probe = start(hub, tmp_path, "mc-b", sensor_type="fw_b")
    try:
        wait_for(lambda: status(probe)["master"]["registered"], timeout=30, what="registered")
        assert status(probe)["master"]["master"] == "primary"
        hub.relay.cut()
        cut = time.monotonic()
        wait_for(lambda: status(probe)["master"]["master"] == "secondary", timeout=20,
                 what="fail-over to the secondary")
        # tries=2 at a 1 s check-in and 0.3 s retries: well under 5 s.
        assert time.monotonic() - cut < 5
        wait_for(lambda: status(probe)["master"]["registered"], what="registered with the secondary")
        sent = status(probe)["delivered"]
        wait_for(lambda: status(probe)["delivered"] > sent + 2, what="data through the secondary")
        hub.relay.restore()
        back = time.monotonic()
        wait_for(lambda: status(probe)["master"]["master"] == "primary", timeout=20,
                 what="fail-back to the primary")
        assert time.monotonic() - back >= 2.0  # only after three answers a check-in apart
        switches = status(probe)["master"]["switches"]
        assert switches == 2
        time.sleep(3)  # three more check-ins: nothing may move (a stability check, not a wait)
        assert status(probe)["master"]["switches"] == 2
    finally:
        hub.relay.restore() if hub.relay._listener is None else None
        probe.stop()


def test_hub_away_readings_buffered_then_delivered_once(hub: MasterHub, sub: Subscriber,
                                                        tmp_path: Path) -> None:
    """The hub unreachable for the probe (only the primary is enabled, and its relay is cut):
    readings go to the flash ring, then all go out in order, each once.

    Why not stop the aggregator: the bridge then resyncs from a snapshot, which holds only each
    device's latest state, so states ingested before the resync never reach MQTT one by one; that
    is the hub's behaviour on a restart, not something the probe could change."""
    template(hub, "fw_c")
    hub.call("PATCH", f"/instances/{hub.secondary_id}", {"enabled": False})
    probe = start(hub, tmp_path, "mc-c", sensor_type="fw_c")
    try:
        wait_for(lambda: status(probe)["master"]["masters"] == ["primary"], timeout=30,
                 what="the masters list with the primary only")
        wait_for(lambda: status(probe)["delivered"] >= 2, timeout=30, what="first readings")
        hub.relay.cut()
        wait_for(lambda: status(probe)["buffered"] >= 8, timeout=30, what="readings buffered")
        hub.relay.restore()
        wait_for(lambda: status(probe)["buffered"] == 0, timeout=60, what="the buffer drained")
    finally:
        probe.stop()
        if hub.relay._listener is None:
            hub.relay.restore()
        hub.call("PATCH", f"/instances/{hub.secondary_id}", {"enabled": True})
    p = probe.probe
    assert p is not None and p.buffer.dropped == 0
    taken = p.taken
    topic = f"{hub.root}/devices/mc-c/state"
    wait_for(lambda: any(m.json().get("sample") == taken for m in sub.on(topic)), timeout=30,
             what=f"sample {taken} on MQTT")
    # Count (sample, timestamp) pairs: a state the bridge republishes has the same timestamp,
    # a second delivery by the probe would be a second ingest with a later one.
    seen = Counter(n for n, _ts in {(m.json()["sample"], m.json()["timestamp"]) for m in sub.on(topic)})
    lost = set(range(1, taken + 1)) - set(seen)
    assert not lost, f"lost {sorted(lost)}"
    assert max(seen.values()) == 1, f"duplicated {[k for k, v in seen.items() if v > 1]}"


def test_ota_good_corrupt_and_rolled_back(hub: MasterHub, tmp_path: Path) -> None:
    template(hub, "fw_d")
    images = Images(tmp_path / "images")
    (tmp_path / "images").mkdir(exist_ok=True)
    probe = start(hub, tmp_path, "mc-d", sensor_type="fw_d", trial_ms=2000)
    try:
        wait_for(lambda: status(probe)["master"]["registered"], timeout=30, what="registered")
        # A corrupted image: refused before anything is switched.
        url, digest = images.add("bad.bin", b"\x00" * 10_000)
        cid = hub.command("mc-d", "ota", {"url": url, "sha256": "0" * 64, "version": "9.9.9"})
        done = wait_for(lambda: hub.command_done(cid), timeout=20)
        assert done["status"] == "failed" and "sha256 mismatch" in done["result"]["error"]
        assert probe.hal.active_image() == "a" and status(probe)["fw"] == VERSION

        # A good image: verified, switched, booted on trial, kept after its first check-in.
        url, digest = images.add("good.bin", b"\xe9" + bytes(range(256)) * 400)
        cid = hub.command("mc-d", "ota", {"url": url, "sha256": digest, "version": "1.1.0"})
        assert wait_for(lambda: hub.command_done(cid), timeout=20)["status"] == "completed"
        wait_for(lambda: status(probe)["master"]["ota"] == "good", timeout=30, what="marked good")
        assert probe.hal.active_image() == "b" and status(probe)["fw"] == "1.1.0"
        wait_for(lambda: hub.sensor("mc-d")["firmware_version"] == "1.1.0",  # type: ignore[index]
                 what="the new version registered")

        # An image that never checks in: only the primary is left, and it is gone as soon as
        # the image is downloaded.
        hub.call("PATCH", f"/instances/{hub.secondary_id}", {"enabled": False})
        wait_for(lambda: status(probe)["master"]["masters"] == ["primary"], timeout=20,
                 what="the masters list without the secondary")
        url, digest = images.add("silent.bin", b"\xe9" * 5000)
        images.on_get = hub.relay.cut
        cid = hub.command("mc-d", "ota", {"url": url, "sha256": digest, "version": "1.2.0"})
        st = wait_for(lambda: (s := status(probe))["master"]["ota"] == "rolled_back" and s,
                      timeout=40, what="the trial boot to time out and the rollback")
        assert probe.hal.active_image() == "b" and st["fw"] == "1.1.0"  # back on 1.1.0's slot
        assert probe.boots >= 4  # first boot, 1.1.0, the 1.2.0 trial, 1.1.0 again
        images.on_get = None
        hub.relay.restore()
        wait_for(lambda: hub.sensor("mc-d")["firmware_version"] == "1.1.0",  # type: ignore[index]
                 what="the rolled-back version registered")
    finally:
        images.on_get = None
        hub.call("PATCH", f"/instances/{hub.secondary_id}", {"enabled": True})
        if hub.relay._listener is None:
            hub.relay.restore()
        images.close()
        probe.stop()


def test_mqtt_transport_when_the_config_names_a_broker(hub: MasterHub, sub: Subscriber,
                                                       mosquitto: Broker, tmp_path: Path) -> None:
    """The config names the hub's broker: the probe moves to MQTT (B/sensors/{s}/...), and with
    every HTTP master out of reach it still checks in, sends data and acknowledges commands."""
    template(hub, "fw_e", mqtt={"host": mosquitto.host, "port": mosquitto.port, "base": hub.root})
    probe = start(hub, tmp_path, "mc-e", sensor_type="fw_e")
    try:
        wait_for(lambda: status(probe)["master"]["transport"] == "mqtt", timeout=30,
                 what="the switch to MQTT")
        hub.relay.cut()
        hub.call("PATCH", f"/instances/{hub.secondary_id}", {"enabled": False})
        first = wait_for(lambda: hub.sensor("mc-e")["last_check_in"], what="a check-in")  # type: ignore[index]
        wait_for(lambda: hub.sensor("mc-e")["last_check_in"] != first, timeout=10,  # type: ignore[index]
                 what="a heartbeat over MQTT")
        state = sub.wait(f"{hub.root}/devices/mc-e/state", timeout=20).json()
        assert isinstance(state["temperature"], float)
        cid = hub.command("mc-e", "set_target_temp", {"target": 21.0})
        assert wait_for(lambda: hub.command_done(cid), timeout=20)["status"] == "completed"
        st = status(probe)
        assert st["master"]["transport"] == "mqtt" and st["master"]["target_temp"] == 21.0
    finally:
        probe.stop()
        hub.call("PATCH", f"/instances/{hub.secondary_id}", {"enabled": True})
        if hub.relay._listener is None:
            hub.relay.restore()
