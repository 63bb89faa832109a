"""ESP32 probes end to end on this host: a real zeroconf advertisement of ``_temps-probe._tcp``
on the loopback interface, a real probe HTTP server, the poller's discovery and provisioner,
the web program's LAN API on a real socket, and the aggregator's registry as the place the
readings must land (all wired as in production, see tests/services/web/support.py).

Multicast on loopback: ``lo`` has no MULTICAST flag, yet with ``interfaces=["127.0.0.1"]``
python-zeroconf sets ``IP_MULTICAST_IF`` to 127.0.0.1 and joins 224.0.0.251 on it; the kernel
routes the group's packets out of ``lo`` and loops them back (``IP_MULTICAST_LOOP``) to every
socket joined there, so two Zeroconf instances on 127.0.0.1 see each other. The test skips
with that reason if a kernel does not allow it. The mDNS tests run in a network namespace of
their own, because every sensor-hub on this host (e2e and container tests, ``./hub run``)
browses ``lo`` as well and would provision the test's probe with its own URL.
"""

from __future__ import annotations

import csv
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from zeroconf import ServiceInfo, Zeroconf

from services.http_poller.discovery import SERVICE_TYPE, ProbeBrowser
from services.http_poller.lan import build_probe_side, reboot_announcer
from services.http_poller.probes import Probe, ProbeDirectory
from shared.instance import parse_instance
from shared.models import EventObs, RegisterDevice
from shared.rest import RestClient
from shared.settings import Settings
from tests.helpers import wait_for
from tests.probe_fixtures.netns import run_in_private_netns
from tests.probe_fixtures.servers import FakeProbe
from tests.services.web.support import SERIAL_ID, Hub, Served, start_hub

TOKEN = "s3cret-token"
KEY = "mgmt-key"


def advert(probe_id: str, port: int, *, label: str, ip: str = "127.0.0.1") -> ServiceInfo:
    return ServiceInfo(SERVICE_TYPE, f"{label}.{SERVICE_TYPE}", port=port,
                       addresses=[socket.inet_aton(ip)], server=f"{label}.local.",
                       properties={"id": probe_id, "name": "Kitchen probe"})


def reboot_events(hub: Hub) -> list[str]:
    return [c.device_id for c in hub.agg.changes.since(0)[2]
            if c.kind == "event" and getattr(c, "event", None) == "probe_rebooted"]


@pytest.fixture
def probe() -> Iterator[FakeProbe]:
    p = FakeProbe()
    yield p
    p.close()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = start_hub(tmp_path, token=TOKEN, key=KEY)
    yield h
    h.stop()


def isolated(body: Callable[[], None]) -> None:
    """Run an mDNS test in its own network namespace (see tests/probe_fixtures/netns.py)."""
    reason = run_in_private_netns(body)
    if reason is not None:
        pytest.skip(f"no private network namespace for the mDNS test: {reason}")


def test_discover_provision_ingest_and_reprovision_after_reboot(tmp_path: Path) -> None:
    def body() -> None:
        hub, probe = start_hub(tmp_path, token=TOKEN, discovery=True), FakeProbe()
        advertiser = Zeroconf(interfaces=["127.0.0.1"])
        try:
            discover_provision_ingest(hub, probe, advertiser, tmp_path)
        finally:
            advertiser.close()
            hub.stop()
            probe.close()
    isolated(body)


def discover_provision_ingest(hub: Hub, probe: FakeProbe, advertiser: Zeroconf,
                              tmp_path: Path) -> None:
    advertiser.register_service(advert(probe.probe_id, probe.port, label="probe-kitchen"))
    found = wait_for(lambda: hub.directory.get("probe_kitchen"), what="mDNS discovery")
    assert (found.ip, found.port, found.host) == ("127.0.0.1", probe.port, "probe-kitchen.local.")
    wait_for(lambda: probe.provisions, what="the probe to be provisioned")
    assert probe.provisions[0] == {"server_url": hub.web_url, "interval_ms": 2000, "token": TOKEN}

    # The probe pushes like the firmware, to the web program: the reading becomes device state.
    answer = probe.push(temperature_c=21.5, rssi=-61, fw="1.0.0")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"ok": True, "probe_id": "probe_kitchen",
                             "stored": ["rssi", "temperature_c"], "ignored": ["fw"], "csv": True}
    device = hub.agg.device("probe_kitchen")
    assert device.source == "probe" and device.name == "Kitchen probe"  # the mDNS name
    wait_for(lambda: device.values == {"temperature_c": 21.5, "rssi": -61}, what="the state")
    assert device.online(hub.agg.clock()) and device.units["temperature_c"] == "°C"
    _, _, changes = hub.agg.changes.since(0)
    assert ("device", "added") in [(c.kind, getattr(c, "action", None)) for c in changes]

    rows = list(csv.reader((tmp_path / "temperature_log.csv").open()))
    assert rows[0] == ["timestamp", "probe_id", "temperature_c", "readings"]
    assert rows[1][1:] == ["probe_kitchen", "21.5", '{"rssi":-61}']

    listed = hub.api("GET", "/api/probes", headers={"X-Token": TOKEN}).json()
    assert listed["ok"] is True
    entry = listed["probes"][0]
    assert {k: entry[k] for k in ("id", "ip", "port", "provisioned")} == {
        "id": "probe_kitchen", "ip": "127.0.0.1", "port": probe.port, "provisioned": True}
    assert entry["last_seen"].endswith("Z") and entry["name"] == "Kitchen probe"
    assert [d["device_id"] for d in listed["devices"]] == ["probe_kitchen"]

    # Without a probe_id, a reading from a known probe's address is that probe's.
    by_ip = hub.api("POST", "/api/ingest", headers={"X-Token": TOKEN}, json={"temperature_c": 21.0})
    assert by_ip.json()["probe_id"] == "probe_kitchen"

    # A reboot loses the provisioning: the hub notices on /status and provisions again.
    probe.reboot()
    wait_for(lambda: len(probe.provisions) >= 2 and probe.server_url == hub.web_url,
             what="re-provisioning after the reboot")
    wait_for(lambda: reboot_events(hub) == ["probe_kitchen"], what="a probe_rebooted event")
    assert probe.push(temperature_c=22.0).status_code == 200
    wait_for(lambda: hub.agg.device("probe_kitchen").values["temperature_c"] == 22.0,
             what="the reading after the reboot")


def test_probe_rebooted_goes_only_to_a_registered_probe_device(hub: Hub) -> None:
    """The poller asks the aggregator before it sends the event: a probe that never pushed has
    no device, and a probe advertising the id of a serial sensor must not write an event there."""
    events: list[EventObs] = []
    agg_url = next(p.url for p in hub.parts if isinstance(p, Served))
    announce = reboot_announcer(RestClient(agg_url, name="state-aggregator"), events.append)

    def rebooted(probe_id: str) -> None:
        announce(Probe(probe_id, probe_id, None, "127.0.0.1", 80, "mdns"))

    rebooted("never_pushed")
    rebooted(SERIAL_ID)
    hub.agg.register(RegisterDevice(device_id="probe_known", source="probe", interval=10))
    rebooted("probe_known")
    assert [e.device_id for e in events] == ["probe_known"]
    assert events[0].event == "probe_rebooted"


def test_a_probe_is_followed_by_id_when_its_ip_changes() -> None:
    isolated(follow_by_id)


def follow_by_id() -> None:
    directory = ProbeDirectory()
    advertiser = Zeroconf(interfaces=["127.0.0.1"])
    browser = ProbeBrowser(directory, interfaces=["127.0.0.1"])
    browser.start()
    try:
        first = advert("probe_moving", 8080, label="probe-a")
        advertiser.register_service(first)
        wait_for(lambda: directory.get("probe_moving"), what="the first advertisement")
        advertiser.unregister_service(first)
        # The same probe (TXT id) comes back under a new name and a new DHCP address.
        advertiser.register_service(advert("probe_moving", 8081, label="probe-b", ip="127.0.0.2"))
        wait_for(lambda: directory.get("probe_moving").ip == "127.0.0.2",  # type: ignore[union-attr]
                 what="the probe's new address")
        assert [p.probe_id for p in directory.all()] == ["probe_moving"]
        assert directory.get("probe_moving").port == 8081  # type: ignore[union-attr]
    finally:
        browser.stop()
        advertiser.close()


def test_provision_on_demand(hub: Hub, probe: FakeProbe) -> None:
    hub.directory.upsert("probe_kitchen", name=None, host=None, ip="127.0.0.1", port=probe.port,
                         via="static")
    wait_for(lambda: probe.provisions, what="the background provisioning")
    before = len(probe.provisions)
    done = hub.api("POST", "/api/provision", json={"probe_id": "probe_kitchen"},
                   headers={"X-API-Key": KEY})
    assert done.status_code == 200 and done.json()["server_url"] == hub.web_url
    assert len(probe.provisions) == before + 1
    # what the probe said of itself and how the last provisioning went, for the probes page
    seen = done.json()["probe"]
    assert seen["whoami"] == {"id": "probe_kitchen", "name": "Kitchen probe",
                              "mac": "24:6F:28:00:00:01", "fw": "1.0.0-test"}
    assert seen["status"]["boot_id"] == probe.boot_id and seen["status_at"].endswith("Z")
    assert seen["last_provision"]["ok"] is True
    assert seen["last_provision"]["message"] == f"sent {hub.web_url}, every 2000 ms"
    with socket.socket() as spare:  # a port nothing listens on: the probe moved and is gone
        spare.bind(("127.0.0.1", 0))
        dead = spare.getsockname()[1]
    hub.directory.upsert("probe_kitchen", name=None, host=None, ip="127.0.0.1", port=dead,
                         via="static")
    failed = hub.api("POST", "/api/provision", json={"probe_id": "probe_kitchen"},
                     headers={"X-API-Key": KEY})
    assert failed.status_code >= 400
    listed = hub.api("GET", "/api/probes", headers={"X-Token": TOKEN}).json()["probes"][0]
    assert listed["last_provision"]["ok"] is False
    assert "unreachable" in listed["last_provision"]["message"]
    unknown = hub.api("POST", "/api/provision", json={"probe_id": "nope"},
                      headers={"X-API-Key": KEY})
    assert unknown.status_code == 404
    assert hub.api("POST", "/api/provision", json={}, headers={"X-API-Key": KEY}).status_code == 422


def test_static_probe_from_the_instance_file_is_provisioned(
        probe: FakeProbe, tmp_path: Path) -> None:
    instance = parse_instance({"instance_id": "t", "friendly_name": "t", "config": {"sensors": [
        {"sensor_id": "probe_kitchen", "sensor_type": "temperature",
         "source": {"type": "probe", "ip": "127.0.0.1", "port": probe.port}}]}})
    settings = Settings(data_dir=tmp_path, public_base="http://10.0.0.5:8088/",
                        probe_discovery=False, probe_interval_ms=5000,
                        state_aggregator_url="http://127.0.0.1:9")
    side = build_probe_side(settings, instance, emit=lambda _obs: None)
    assert side.browser is None
    side.start()
    try:
        wait_for(lambda: probe.provisions, what="the static probe to be provisioned")
        # SERVER_TOKEN unset: the hub made one, kept it under DATA_DIR (0600), and gives it out
        stored = tmp_path / "server_token"
        assert stored.stat().st_mode & 0o777 == 0o600
        token = stored.read_text().strip()
        assert len(token) >= 43
        assert probe.provisions[0] == {"server_url": "http://10.0.0.5:8088", "interval_ms": 5000,
                                       "token": token}
        assert side.status()["running"] == ["provisioner"]
    finally:
        side.stop()
