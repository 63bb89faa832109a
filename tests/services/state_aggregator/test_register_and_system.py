"""Run-time device registration in the aggregator and the ``hub_system`` device."""

from __future__ import annotations

from pathlib import Path

from services.state_aggregator.app import create_app
from services.state_aggregator.core import Aggregator
from services.state_aggregator.system import DEVICE_ID, SystemSampler, cpu_temperature, sample
from shared.instance import parse_instance
from shared.models import ReadingObs, RegisterDevice
from tests.helpers import wait_for


def make_aggregator() -> Aggregator:
    instance = parse_instance({"instance_id": "t", "friendly_name": "t", "config": {"sensors": []}})
    return Aggregator(instance, handlers={}, cache_ttl=10, poll_interval=5)


def test_register_adds_a_device_once_and_logs_a_device_change() -> None:
    agg = make_aggregator()
    req = RegisterDevice(device_id="probe_1", name="Kitchen probe", source="probe", interval=10,
                         units={"temperature_c": "°C"})
    assert agg.register(req) is True
    assert agg.register(req) is False
    info = agg.device("probe_1").info(agg.clock())
    assert (info.source, info.name, info.units) == ("probe", "Kitchen probe", {"temperature_c": "°C"})
    _, _, changes = agg.changes.since(0)
    assert [(c.kind, c.device_id, getattr(c, "action", None)) for c in changes] == [
        ("device", "probe_1", "added")]


def test_register_route_validates_and_reports_added() -> None:
    agg = make_aggregator()
    client = create_app(agg).test_client()
    ok = client.post("/devices/register", json={"device_id": "p2", "source": "probe"})
    assert ok.status_code == 200 and ok.get_json() == {"device_id": "p2", "added": True}
    again = client.post("/devices/register", json={"device_id": "p2", "source": "probe"})
    assert again.get_json()["added"] is False
    bad = client.post("/devices/register", json={"device_id": "bad id!", "source": "probe"})
    assert bad.status_code == 422 and "device_id" in bad.get_json()["message"]
    # A reading for the new device is accepted, not rejected as unknown.
    assert agg.ingest([ReadingObs(device_id="p2", ts=1_700_000_000.0, values={"t": 1})]) == {
        "accepted": 1, "rejected": 0, "durable": False}


def test_cpu_temperature_prefers_the_cpu_zone_and_skips_unreadable(tmp_path: Path) -> None:
    for name, kind, temp in [("thermal_zone0", "acpitz", "27800"),
                             ("thermal_zone1", "x86_pkg_temp", "51250"),
                             ("thermal_zone2", "iwlwifi_1", "not a number")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "type").write_text(kind + "\n")
        (tmp_path / name / "temp").write_text(temp + "\n")
    assert cpu_temperature(tmp_path) == 51.2
    assert cpu_temperature(tmp_path / "nothing-here") is None


def test_sample_omits_what_the_platform_does_not_expose(tmp_path: Path) -> None:
    values = sample(tmp_path / "not-yet-created", thermal_root=tmp_path / "no-thermal")
    assert "cpu_temperature" not in values
    # free can be less than total - used: root's reserved blocks count as neither
    assert values["disk_used"] + values["disk_free"] <= values["disk_total"]
    assert 0 <= values["disk_used_percent"] <= 100


def test_sampler_registers_hub_system_and_feeds_it(tmp_path: Path) -> None:
    thermal = tmp_path / "thermal"
    (thermal / "thermal_zone0").mkdir(parents=True)
    (thermal / "thermal_zone0" / "type").write_text("cpu-thermal\n")
    (thermal / "thermal_zone0" / "temp").write_text("48000\n")
    agg = make_aggregator()
    sampler = SystemSampler(agg, data_dir=tmp_path, interval=3600, thermal_root=thermal)
    sampler.start()
    try:
        wait_for(lambda: DEVICE_ID in agg.devices, what="hub_system to register")
        device = agg.device(DEVICE_ID)
        wait_for(lambda: device.state_ts is not None, what="the first hub_system reading")
        assert device.source == "system"  # the contract's source of the hub's own device
        assert device.values["cpu_temperature"] == 48.0
        assert device.values["disk_free"] > 0 and device.units["disk_free"] == "B"
        assert agg.device_infos()[0].online is True
    finally:
        sampler.stop()
