"""ESP32 probes end to end on this host: a real zeroconf advertisement of ``_temps-probe._tcp``
on the loopback interface, a real probe HTTP server, the hub's discovery, provisioner and LAN
API on a real socket, and the aggregator's registry as the place the readings must land.

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
from typing import Any

import pytest
import requests
from zeroconf import ServiceInfo, Zeroconf

from services.http_poller.api import LanContext, create_lan_app
from services.http_poller.csvlog import CsvLog
from services.http_poller.discovery import SERVICE_TYPE, ProbeBrowser
from services.http_poller.ingest import Ingest
from services.http_poller.lan import LanServer, build_probe_side
from services.http_poller.probes import ProbeDirectory
from services.http_poller.provisioner import Provisioner
from services.state_aggregator.core import Aggregator
from shared.instance import parse_instance
from shared.models import EventObs, ReadingObs
from shared.settings import Settings
from tests.helpers import free_port, wait_for
from tests.probe_fixtures.netns import run_in_private_netns
from tests.probe_fixtures.servers import FakeProbe

TOKEN = "s3cret-token"


def advert(probe_id: str, port: int, *, label: str, ip: str = "127.0.0.1") -> ServiceInfo:
    return ServiceInfo(SERVICE_TYPE, f"{label}.{SERVICE_TYPE}", port=port,
                       addresses=[socket.inet_aton(ip)], server=f"{label}.local.",
                       properties={"id": probe_id, "name": "Kitchen probe"})


def make_aggregator() -> Aggregator:
    instance = parse_instance({"instance_id": "t", "friendly_name": "t", "config": {"sensors": []}})
    return Aggregator(instance, handlers={}, cache_ttl=10, poll_interval=5)


class Hub:
    """The probe side of the poller wired to a real aggregator core, LAN API on a free port."""

    def __init__(self, tmp: Path, *, token: str | None, discovery: bool = False) -> None:
        self.agg = make_aggregator()
        self.directory = ProbeDirectory()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ingest = Ingest(emit=self.emit, register=lambda r: self.agg.register(r) and None,
                             csv=CsvLog(tmp / "temps.csv"), directory=self.directory,
                             token=token, interval_s=10, clock=self.agg.clock)
        self.provisioner = Provisioner(self.directory, server_url=self.url, interval_ms=2000,
                                       token=token, check_every=0.1, timeout=2.0,
                                       on_reboot=self.rebooted)
        self.browser = ProbeBrowser(self.directory, interfaces=["127.0.0.1"]) if discovery else None
        app = create_lan_app(LanContext(self.ingest, self.directory, self.provisioner))
        self.server = LanServer(app, host="127.0.0.1", port=self.port)

    def emit(self, obs: ReadingObs | EventObs) -> None:
        self.agg.ingest([obs], source="http-poller")

    def rebooted(self, probe: Any) -> None:
        self.emit(EventObs(device_id=probe.probe_id, ts=self.agg.clock(), event="probe_rebooted"))

    def start(self) -> None:
        self.server.start()
        if self.browser is not None:
            self.browser.start()
        self.provisioner.start()

    def stop(self) -> None:
        self.provisioner.stop()
        if self.browser is not None:
            self.browser.stop()
        self.server.stop()

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        return requests.request(method, self.url + path, timeout=5, **kw)


@pytest.fixture
def probe() -> Iterator[FakeProbe]:
    p = FakeProbe()
    yield p
    p.close()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path, token=TOKEN)
    h.start()
    yield h
    h.stop()


def isolated(body: Callable[[], None]) -> None:
    """Run an mDNS test in its own network namespace (see tests/probe_fixtures/netns.py)."""
    reason = run_in_private_netns(body)
    if reason is not None:
        pytest.skip(f"no private network namespace for the mDNS test: {reason}")


def test_discover_provision_ingest_and_reprovision_after_reboot(tmp_path: Path) -> None:
    def body() -> None:
        hub, probe = Hub(tmp_path, token=TOKEN, discovery=True), FakeProbe()
        advertiser = Zeroconf(interfaces=["127.0.0.1"])
        hub.start()
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
    assert probe.provisions[0] == {"server_url": hub.url, "interval_ms": 2000, "token": TOKEN}

    # The probe pushes like the firmware: the reading becomes device state in the registry.
    answer = probe.push(temperature_c=21.5, rssi=-61, fw="1.0.0")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"ok": True, "probe_id": "probe_kitchen",
                             "stored": ["rssi", "temperature_c"], "ignored": ["fw"]}
    device = hub.agg.device("probe_kitchen")
    assert device.source == "probe" and device.name == "Kitchen probe"
    assert device.values == {"temperature_c": 21.5, "rssi": -61}
    assert device.online(hub.agg.clock()) and device.units["temperature_c"] == "°C"
    _, _, changes = hub.agg.changes.since(0)
    assert ("device", "added") in [(c.kind, getattr(c, "action", None)) for c in changes]

    rows = list(csv.reader((tmp_path / "temps.csv").open()))
    assert rows[0] == ["timestamp", "probe_id", "temperature_c", "readings"]
    assert rows[1][1:] == ["probe_kitchen", "21.5", '{"rssi":-61}']

    listed = hub.api("GET", "/api/probes", headers={"X-Token": TOKEN}).json()
    assert listed["ok"] is True
    entry = listed["probes"][0]
    assert {k: entry[k] for k in ("id", "ip", "port", "provisioned")} == {
        "id": "probe_kitchen", "ip": "127.0.0.1", "port": probe.port, "provisioned": True}
    assert entry["last_seen"].endswith("Z") and entry["name"] == "Kitchen probe"

    # A reboot loses the provisioning: the hub notices on /status and provisions again.
    probe.reboot()
    wait_for(lambda: len(probe.provisions) >= 2 and probe.server_url == hub.url,
             what="re-provisioning after the reboot")
    wait_for(lambda: any(c.kind == "event" and getattr(c, "event", None) == "probe_rebooted"
                         for c in hub.agg.changes.since(0)[2]), what="a probe_rebooted event")
    assert probe.push(temperature_c=22.0).status_code == 200
    assert hub.agg.device("probe_kitchen").values["temperature_c"] == 22.0


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


def test_token_is_required_and_checked(hub: Hub) -> None:
    body = {"probe_id": "adhoc", "temperature_c": 20.0}
    missing = hub.api("POST", "/api/ingest", json=body)
    assert missing.status_code == 401
    assert missing.json()["ok"] is False and "X-Token" in missing.json()["message"]
    assert hub.api("POST", "/api/ingest", json=body, headers={"X-Token": "wrong"}).status_code == 401
    assert hub.api("GET", "/api/probes").status_code == 401
    assert hub.api("POST", "/api/ingest", json={**body, "token": TOKEN}).status_code == 200
    quick = hub.api("GET", f"/api/ingest?temperature_c=22.3&probe_id=adhoc&token={TOKEN}")
    assert quick.status_code == 200 and quick.json()["stored"] == ["temperature_c"]
    assert hub.agg.device("adhoc").values["temperature_c"] == 22.3
    health = hub.api("GET", "/api/health").json()  # open: for health checks
    assert health["ok"] is True and health["time"].endswith("Z")


@pytest.mark.parametrize(("data", "status", "words"), [
    (b"{nope", 400, "not valid JSON"),
    (b"[1, 2]", 422, "JSON object"),
    (b'{"probe_id": "p1"}', 422, "temperature_c is required"),
    (b'{"probe_id": "p1", "temperature_c": "hot"}', 422, "finite number"),
    (b'{"probe_id": "bad id", "temperature_c": 1}', 422, "probe_id"),
    (b"x" * 70_000, 413, ""),
])
def test_invalid_bodies_get_a_clear_4xx(hub: Hub, data: bytes, status: int, words: str) -> None:
    answer = hub.api("POST", "/api/ingest", data=data,
                     headers={"X-Token": TOKEN, "Content-Type": "application/json"})
    assert answer.status_code == status
    assert words in answer.json()["message"]


def test_provision_on_demand(hub: Hub, probe: FakeProbe) -> None:
    hub.directory.upsert("probe_kitchen", name=None, host=None, ip="127.0.0.1", port=probe.port,
                         via="static")
    wait_for(lambda: probe.provisions, what="the background provisioning")
    before = len(probe.provisions)
    done = hub.api("POST", "/api/provision", json={"probe_id": "probe_kitchen"},
                   headers={"X-Token": TOKEN})
    assert done.status_code == 200 and done.json()["server_url"] == hub.url
    assert len(probe.provisions) == before + 1
    unknown = hub.api("POST", "/api/provision", json={"probe_id": "nope"},
                      headers={"X-Token": TOKEN})
    assert unknown.status_code == 404
    assert hub.api("POST", "/api/provision", json={}, headers={"X-Token": TOKEN}).status_code == 422


def test_static_probe_from_the_instance_file_is_provisioned(
        probe: FakeProbe, tmp_path: Path) -> None:
    instance = parse_instance({"instance_id": "t", "friendly_name": "t", "config": {"sensors": [
        {"sensor_id": "probe_kitchen", "sensor_type": "temperature",
         "source": {"type": "probe", "ip": "127.0.0.1", "port": probe.port}}]}})
    settings = Settings(data_dir=tmp_path, public_base="http://10.0.0.5:8088/",
                        probe_discovery=False, probe_interval_ms=5000,
                        state_aggregator_url="http://127.0.0.1:9")
    side = build_probe_side(settings, instance, emit=lambda _obs: None)
    assert side.browser is None and side.ingest.csv.path == tmp_path / "temperature_log.csv"
    side.start(host="127.0.0.1", port=free_port())
    try:
        wait_for(lambda: probe.provisions, what="the static probe to be provisioned")
        assert probe.provisions[0] == {"server_url": "http://10.0.0.5:8088", "interval_ms": 5000,
                                       "token": ""}
        assert side.status()["running"] == ["lan-api", "provisioner"]
    finally:
        side.stop()
