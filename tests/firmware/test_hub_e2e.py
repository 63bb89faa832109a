"""Virtual probes against the real hub: discovered over mDNS, provisioned by the hub's own
provisioner, their readings on MQTT as device state; the hub's LAN API down for a minute of the
probes' time → readings buffered in the probe's flash ring → all delivered once it is back (in
batches, each with the time it was sampled), none twice.

The probes' clocks run 10 times as fast as the host's (``speed``, see firmware/hal/host.py):
everything a probe does by its clock during a 60 s outage (30 samples at the hub's 2 s interval
into the ring, the upload backoff climbing to its 30 s cap, the catch-up after) happens as on a
device, in 6 s of the suite's time. The hub is really away for those 6 s; what the hub itself
does about a device silent for longer than 30 s (offline, then online again) is not what this
test is about (tests/services/state_aggregator covers availability)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from zeroconf import Zeroconf

from firmware.host import VirtualProbe
from shared.timeutil import parse_iso
from tests.firmware.hub import TOKEN, NetnsHub, isolated
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e
SPEED = 10.0  # the probes' clocks against the host's
INTERVAL_MS = 2000  # the hub's PROBE_INTERVAL_MS, in the probes' time (200 ms of the host's)
OUTAGE_S = 60  # in the probes' time


def test_discovered_provisioned_buffered_and_delivered_once(tmp_path: Path) -> None:
    def body() -> None:
        hub = NetnsHub(tmp_path, probe_interval_ms=INTERVAL_MS)
        zc = Zeroconf(interfaces=["127.0.0.1"])
        probes = [VirtualProbe(f"probe-fw-{i}", tmp_path / "probes", bind="127.0.0.1",
                               zeroconf=zc, advertise_ip="127.0.0.1", master=False,
                               speed=SPEED).start() for i in (1, 2)]
        try:
            scenario(hub, probes)
        finally:
            for p in probes:
                p.stop()
            zc.close()
            hub.stop()
    isolated(body)


def status(probe: VirtualProbe) -> dict[str, Any]:
    body: dict[str, Any] = requests.get(probe.url + "/status", timeout=5).json()
    return body


def scenario(hub: NetnsHub, probes: list[VirtualProbe]) -> None:
    first = probes[0]
    # mDNS → the hub's provisioner → the probe stores the hub's URL, interval and token.
    for p in probes:
        def provisioned(p: VirtualProbe = p) -> bool:
            return bool(status(p)["provisioned"])

        wait_for(provisioned, timeout=120, what=f"{p.id} provisioned")
        st = status(p)
        assert (st["server_url"], st["interval_ms"]) == (hub.api.removesuffix("/api"), INTERVAL_MS)
        assert p.probe is not None and p.probe.token == TOKEN
        hub.sub.wait(f"{hub.root}/devices/{p.id}/state", timeout=30)
    state = hub.states(first.id)[-1]
    assert isinstance(state["temperature_c"], float) and state["device_id"] == first.id
    assert hub.sub.wait(f"{hub.root}/devices/{first.id}/availability").text == "online"

    # The LAN API goes away for a minute of the probes' lives: readings pile up in the ring,
    # then all go out in order.
    program = hub.lan_program()
    stopped_at = time.time()  # before: the program refuses connections before it has stopped
    assert "stopped" in hub.instance.supervisorctl("stop", program).stdout
    away_from = int(status(first)["uptime_s"])
    wait_for(lambda: int(status(first)["uptime_s"]) >= away_from + OUTAGE_S, timeout=60,
             what=f"{OUTAGE_S} s of the probe's time")
    buffered = int(status(first)["buffered"])
    # 30 intervals: the ring holds about as many (a sample in flight when the API went away
    # may have been delivered or buffered)
    assert buffered >= OUTAGE_S * 1000 // INTERVAL_MS - 2, status(first)
    assert "upload to" in str(status(first)["last_error"])
    restarted_at = time.time()
    assert "started" in hub.instance.supervisorctl("start", program).stdout
    wait_for(lambda: status(first)["buffered"] == 0 and status(probes[1])["buffered"] == 0,
             timeout=60, what="the buffers to drain")
    for p in probes:
        p.stop()  # no more samples: every one taken must now reach the subscriber exactly once
        assert p.probe is not None
        taken = p.probe.sensor.n
        assert p.probe.buffer.count == 0 and p.probe.buffer.dropped == 0
        def arrived(p: VirtualProbe = p, taken: int = taken) -> bool:
            return any(s.get("sample") == taken for s in hub.states(p.id))

        wait_for(arrived, timeout=30, what=f"sample {taken} of {p.id} on MQTT")
        # The hub may republish a state it already published (the bridge resyncs when the LAN
        # process comes back): the same sample with the same timestamp. A second delivery by
        # the probe would be a second CSV row (and for a single reading another timestamp).
        seen = Counter(n for n, _ts in {(s["sample"], s["timestamp"]) for s in hub.states(p.id)})
        rows = Counter(json.loads(r["readings"])["sample"] for r in hub.csv_rows() if r["probe_id"] == p.id)
        # The CSV row is written when the hub accepts the POST: what the probe delivered.
        assert rows == Counter(range(1, taken + 1)), f"{p.id}: delivered {sorted(rows.items())}"
        # Sample 1 is left out on MQTT only: it is the reading that makes the hub register the
        # device, and the hub sometimes publishes no state for it although it accepted it (its
        # CSV row is there, checked above). A hub-side gap, reported; not the probe's doing.
        lost = set(range(2, taken + 1)) - set(seen)
        assert not lost, f"{p.id}: accepted by the hub (CSV) but never on MQTT: {sorted(lost)}"
        assert max(seen.values()) == 1, f"{p.id}: duplicated {[k for k, v in seen.items() if v > 1]}"
    # What the first probe buffered went up in batches stamped when each reading was sampled,
    # so its states carry times from the outage, not the moment they arrived.
    during = [s for s in hub.states(first.id)
              if stopped_at < parse_iso(str(s["timestamp"])) < restarted_at]
    assert len(during) >= buffered, f"{len(during)} states stamped during the outage"


def test_a_provisioned_probe_phones_home_over_the_lan_port(tmp_path: Path) -> None:
    """No master configured on the probe: the hub that provisions it is its master, reached on
    the LAN port (/api/sensor-master, served by the web program) like a board would."""
    def body() -> None:
        hub = NetnsHub(tmp_path, extra_env={"MASTER_CHECK_IN_INTERVAL": "1"})
        zc = Zeroconf(interfaces=["127.0.0.1"])
        probe = None
        try:
            made = requests.post(f"{hub.master}/configs", headers=hub.internal, timeout=10, json={
                "config_name": "lan probes", "sensor_type": "esp32_probe", "priority": 1,
                "config_data": {"check_in_interval": 1, "polling_interval": 0.5,
                                "sensor_mappings": [{"sensor_name": "temperature_c",
                                                     "entry_field": "temperature",
                                                     "unit": "°C", "data_type": "float"}]}})
            assert made.status_code == 201, made.text
            probe = VirtualProbe("probe-lan", tmp_path / "probes", bind="127.0.0.1", zeroconf=zc,
                                 advertise_ip="127.0.0.1",
                                 master_options={"default_check_in_s": 1, "retry_ms": 300}).start()
            phones_home(hub, probe, int(made.json()["id"]))
        finally:
            if probe is not None:
                probe.stop()
            zc.close()
            hub.stop()
    isolated(body)


def phones_home(hub: NetnsHub, probe: VirtualProbe, template_id: int) -> None:
    wait_for(lambda: status(probe)["provisioned"], timeout=60, what="provisioned over mDNS")
    try:
        st = wait_for(lambda: (s := status(probe))["master"]["config_name"] == "lan probes" and s,
                      timeout=30, what="registered and configured through the LAN port")
    except AssertionError as exc:
        lines = [ln for ln in hub.instance.output if "sensor-master" in ln or "master" in ln][-5:]
        raise AssertionError(f"{exc}; the probe's master control: {status(probe)['master']}; "
                             f"the hub said: {lines}") from None
    assert st["master"]["master"] == "provisioning hub" and st["interval_ms"] == 500
    row = requests.get(f"{hub.master}/sensors/probe-lan", headers=hub.internal, timeout=5).json()
    assert row["sensor_type"] == "esp32_probe" and row["firmware_version"] == st["fw"]
    state = hub.sub.wait(f"{hub.root}/devices/probe-lan/state", timeout=30,
                         where=lambda m: "temperature" in m.json()).json()
    assert isinstance(state["temperature"], float)  # the config's mapping: the master data path
    requests.patch(f"{hub.master}/configs/{template_id}", headers=hub.internal, timeout=10, json={
        "config_data": {"check_in_interval": 1, "polling_interval": 0.7}}).raise_for_status()
    wait_for(lambda: status(probe)["interval_ms"] == 700, timeout=10, what="the template edit")
    made = requests.post(f"{hub.master}/command", headers=hub.internal, timeout=10, json={
        "sensor_id": "probe-lan", "command_type": "set_target_temp", "command_data": {"target": 19}})
    cid = made.json()["command_id"]
    done = wait_for(lambda: (c := requests.get(f"{hub.master}/commands/{cid}",
                                               headers=hub.internal, timeout=5).json())
                    ["status"] in ("completed", "failed") and c, what="the command acknowledged")
    assert done["status"] == "completed" and status(probe)["master"]["target_temp"] == 19
