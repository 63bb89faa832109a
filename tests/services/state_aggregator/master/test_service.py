"""Master control's sensor side and management, without HTTP: a real SQLite file, a real
aggregator as the device sink, and one injectable clock."""

from __future__ import annotations

import pytest

from services.state_aggregator.core import Aggregator
from services.state_aggregator.master.admin import MasterAdmin
from services.state_aggregator.master.errors import Conflict, Invalid, NotFound, QueueFull
from services.state_aggregator.master.service import MasterService
from shared.master_models import (
    CommandAck,
    CommandCreate,
    DataUpload,
    GroupIn,
    Heartbeat,
    MasterInstanceIn,
    MasterInstancePatch,
    SensorPatch,
    SensorRegister,
    TemplateIn,
    TemplatePatch,
)
from shared.models import (
    AvailabilityChange,
    DeviceChange,
    EventChange,
    RegisterDevice,
    StateChange,
)
from shared.timeutil import iso
from tests.helpers import Clock

ESP = SensorRegister(sensor_id="esp32_001", sensor_name="Chamber 1", sensor_type="esp32_ferm",
                     hardware_info="ESP32-WROOM-32", capabilities=["temperature"])
CONFIG = {
    "polling_interval": 60, "check_in_interval": 30,
    "sensor_mappings": [
        {"sensor_name": "sensor.temperature", "entry_field": "Temperature", "unit": "°C",
         "data_type": "float"},
        {"sensor_name": "relay.state", "entry_field": "Relay State", "unit": "", "data_type": "text"},
    ],
}


def test_register_answers_the_seed_fields_and_the_masters(service: MasterService,
                                                          admin: MasterAdmin,
                                                          agg: Aggregator) -> None:
    admin.create_instance(MasterInstanceIn(name="Backup", api_endpoint="http://10.0.0.2:8088",
                                           priority=2))
    primary = admin.create_instance(MasterInstanceIn(name="Production Master",
                                                     api_endpoint="http://10.0.0.1:8088"))
    admin.create_template(TemplateIn(config_name="Default", sensor_type="esp32_ferm",
                                     config_data=CONFIG))
    answer = service.register(ESP)
    assert answer["status"] == "registered"
    assert (answer["assigned_master"], answer["master_id"]) == ("Production Master", primary["id"])
    assert answer["has_config"] is True and answer["check_in_interval"] == 30
    assert answer["config_endpoint"] == "/api/sensor-master/config/esp32_001"
    assert [m["name"] for m in answer["masters"]] == ["Production Master", "Backup"]
    assert service.register(ESP)["config_version"] == answer["config_version"]  # idempotent
    device = agg.devices["esp32_001"]
    assert (device.source, device.name, device.interval) == ("sensor", "Chamber 1", 30)
    assert device.units == {"temperature": "°C"}
    # a disabled master leaves every sensor's list at once
    admin.update_instance(primary["id"], MasterInstancePatch(enabled=False))
    assert [m["name"] for m in service.config("esp32_001").body["masters"]] == ["Backup"]


def test_config_changed_then_not_and_if_none_match(service: MasterService,
                                                   admin: MasterAdmin) -> None:
    service.register(ESP)
    first = service.config("esp32_001").body
    assert (first["config_available"], first["config_changed"], first["config"]) == (False, True,
                                                                                    None)
    assert service.config("esp32_001").body["config_changed"] is False
    assert service.config("esp32_001", if_none_match=f'"{first["config_hash"]}"').not_modified
    admin.create_template(TemplateIn(config_name="Default", sensor_type="esp32_ferm",
                                     config_data=CONFIG))
    after = service.config("esp32_001", if_none_match=first["config_hash"])
    assert not after.not_modified
    assert (after.body["config_changed"], after.body["config_version"]) == (True, 2)
    assert after.body["config_name"] == "Default"
    old = service.config("esp32_001", version=1).body
    assert (old["config_version"], old["config_available"]) == (1, False)
    with pytest.raises(NotFound, match="no config version 7"):
        service.config("esp32_001", version=7)


def test_heartbeat_of_an_unknown_sensor_asks_it_to_register(service: MasterService) -> None:
    with pytest.raises(NotFound, match="not registered: register first"):
        service.heartbeat(Heartbeat(sensor_id="ghost"))


def test_heartbeat_says_whether_the_sensor_is_in_sync(service: MasterService,
                                                      admin: MasterAdmin) -> None:
    reg = service.register(ESP)
    assert service.heartbeat(Heartbeat(sensor_id="esp32_001",
                                       config_hash=reg["config_hash"]))["in_sync"] is True
    admin.create_template(TemplateIn(config_name="t", sensor_id="esp32_001", config_data={"a": 1}))
    beat = service.heartbeat(Heartbeat(sensor_id="esp32_001", config_hash=reg["config_hash"],
                                       metrics={"uptime": 5, "wifi_rssi": -45}))
    assert (beat["in_sync"], beat["config_changed"], beat["config_version"]) == (False, True, 2)
    sensor = admin.sensor("esp32_001")
    assert sensor["metrics"]["wifi_rssi"] == -45 and sensor["in_sync"] is False


def test_commands_ride_on_answers_by_priority_until_acknowledged(service: MasterService,
                                                                 admin: MasterAdmin) -> None:
    service.register(ESP)
    low = admin.create_command(CommandCreate(sensor_id="esp32_001", command_type="identify",
                                             priority=9))
    high = admin.create_command(CommandCreate(sensor_id="esp32_001", command_type="set_target_temp",
                                              command_data={"target": 18.5}, priority=1))
    beat = service.heartbeat(Heartbeat(sensor_id="esp32_001"))
    assert [c["command_id"] for c in beat["commands"]] == [high["command_id"], low["command_id"]]
    assert beat["commands"][0]["command_data"] == {"target": 18.5}
    # not acknowledged: sent again, one more attempt
    service.heartbeat(Heartbeat(sensor_id="esp32_001"))
    assert admin.command(high["command_id"])["attempts"] == 2
    service.ack(high["command_id"], CommandAck(status="delivered"))
    done = service.ack(high["command_id"], CommandAck(status="completed", result={"ok": True}))
    assert (done["status"], done["result"]) == ("completed", {"ok": True})
    assert service.ack(high["command_id"], CommandAck(status="completed"))["status"] == "completed"
    with pytest.raises(Conflict, match="already completed"):
        service.ack(high["command_id"], CommandAck(status="failed"))
    left = service.heartbeat(Heartbeat(sensor_id="esp32_001"))["commands"]
    assert [c["command_id"] for c in left] == [low["command_id"]]
    assert admin.cancel_command(low["command_id"])["status"] == "canceled"
    assert service.heartbeat(Heartbeat(sensor_id="esp32_001"))["commands"] == []
    assert [c["status"] for c in admin.commands(sensor_id="esp32_001", status=None)] == [
        "completed", "canceled"]  # newest first


def test_commands_expire_and_the_queue_is_bounded(service: MasterService, admin: MasterAdmin,
                                                  clock: Clock) -> None:
    service.register(ESP)
    short = admin.create_command(CommandCreate(sensor_id="esp32_001", command_type="restart",
                                               expires_in=10))
    for _ in range(99):
        admin.create_command(CommandCreate(sensor_id="esp32_001", command_type="identify"))
    with pytest.raises(QueueFull, match="already has 100 undelivered commands"):
        admin.create_command(CommandCreate(sensor_id="esp32_001", command_type="identify"))
    clock.now += 11
    assert service.tick()["expired"] == 1
    assert admin.command(short["command_id"])["status"] == "expired"
    admin.create_command(CommandCreate(sensor_id="esp32_001", command_type="identify"))  # room
    with pytest.raises(NotFound, match="not registered"):
        admin.create_command(CommandCreate(sensor_id="ghost", command_type="identify"))
    with pytest.raises(Invalid, match=r"expires_at: .* already past"):
        admin.create_command(CommandCreate(sensor_id="esp32_001", command_type="x",
                                           expires_at=iso(clock.now - 5)))


def test_data_is_mapped_into_device_state_and_replays_are_ignored(service: MasterService,
                                                                  admin: MasterAdmin,
                                                                  agg: Aggregator,
                                                                  clock: Clock) -> None:
    admin.create_template(TemplateIn(config_name="Default", sensor_type="esp32_ferm",
                                     config_data=CONFIG))
    service.register(ESP)
    batch = DataUpload.model_validate({"sensor_id": "esp32_001", "batch": [
        {"timestamp": clock.now - 20, "readings": {"sensor.temperature": "19.5"}},
        {"timestamp": clock.now - 30, "readings": {"sensor.temperature": 19.0, "rssi": -50}},
        {"id": "r3", "readings": {"relay.state": "on", "sensor.temperature": "hot"}},
    ]})
    first = service.data(batch)
    assert (first["accepted"], first["duplicates"]) == (3, 0)
    assert "sensor.temperature (float)" in first["errors"][0]
    assert agg.devices["esp32_001"].values == {"temperature": 19.5, "rssi": -50,
                                              "relay_state": "on"}
    states = [c for c in agg.changes.since(0)[2] if isinstance(c, StateChange)]
    assert [s.values["temperature"] for s in states] == [19.0, 19.5, 19.5]  # oldest first
    again = service.data(batch)
    assert (again["accepted"], again["duplicates"]) == (0, 3)
    assert len([c for c in agg.changes.since(0)[2] if isinstance(c, StateChange)]) == 3
    with pytest.raises(Invalid, match=r"batch\.0\.timestamp: .* is in the future"):
        service.data(DataUpload.model_validate({"sensor_id": "esp32_001", "batch": [
            {"timestamp": clock.now + 3600, "readings": {"t": 1}}]}))
    # Before 2000: an uptime counter, not a time (a reading could not even be built with it).
    with pytest.raises(Invalid, match=r"batch\.0\.timestamp: 1999-12-31T23:59:59.000Z is before "
                                      r"2000-01-01"):
        service.data(DataUpload.model_validate({"sensor_id": "esp32_001", "batch": [
            {"timestamp": 946_684_799, "readings": {"t": 1}}]}))


@pytest.mark.parametrize("ts", [-1e300, -1, "0001-01-01T00:00:00+14:00"])
def test_a_time_the_hub_cannot_render_is_refused(service: MasterService, admin: MasterAdmin,
                                                 agg: Aggregator, ts: float | str) -> None:
    """A reading at -1e300 s passed (it is not in the future), then broke the history's writer
    thread and every ISO rendering of it; refused where it enters, with the reason."""
    admin.create_template(TemplateIn(config_name="Default", sensor_type="esp32_ferm",
                                     config_data=CONFIG))
    service.register(ESP)
    with pytest.raises(Invalid, match=r"batch\.0\.timestamp: .* not a time between 1970 and 9999"):
        service.data(DataUpload.model_validate({"sensor_id": "esp32_001", "batch": [
            {"timestamp": ts, "readings": {"sensor.temperature": 1}}]}))
    assert "temperature" not in agg.devices["esp32_001"].values


def test_status_transitions_become_availability_and_events(service: MasterService,
                                                           admin: MasterAdmin, agg: Aggregator,
                                                           clock: Clock) -> None:
    service.register(ESP)  # the device's own cadence: the default 60 s
    admin.update_sensor("esp32_001", SensorPatch(check_in_interval=5))
    service.tick()
    assert admin_status(service) == "pending"
    service.heartbeat(Heartbeat(sensor_id="esp32_001"))
    assert agg.devices["esp32_001"].online(clock.now)
    for step, expected in ((8, "stale"), (7, "stale"), (1, "offline")):
        clock.now += step
        service.tick()
        assert admin_status(service) == expected
        # offline at once with master control's status, not the aggregator's later judgment
        assert agg.devices["esp32_001"].online(clock.now) == (expected != "offline")
    service.heartbeat(Heartbeat(sensor_id="esp32_001"))
    events = [(c.event, (c.data or {})["previous"], (c.data or {})["status"])
              for c in agg.changes.since(0)[2] if isinstance(c, EventChange)]
    assert events == [("status_changed", "pending", "online"), ("status_changed", "online", "stale"),
                      ("status_changed", "stale", "offline"), ("status_changed", "offline", "online")]
    availability = [c.online for c in agg.changes.since(0)[2]
                    if isinstance(c, AvailabilityChange)]
    assert availability[0] is True and availability[-1] is True


def admin_status(service: MasterService) -> str:
    return str(MasterAdmin(service).sensor("esp32_001")["status"])


def test_group_templates_sit_between_sensor_and_type(service: MasterService,
                                                     admin: MasterAdmin) -> None:
    service.register(ESP)
    admin.create_template(TemplateIn(config_name="type", sensor_type="esp32_ferm",
                                     config_data={"from": "type"}, priority=0))
    group = admin.create_group(GroupIn(group_name="floor_1", sensors=["esp32_001"],
                                       config={"from": "group"}, priority=50))
    assert group["sensors"] == ["esp32_001"] and len(group["templates"]) == 1
    assert service.config("esp32_001").body["config"] == {"from": "group"}
    why = admin.explain("esp32_001")
    assert why["winner"]["applies_to"] == "group" and why["groups"] == ["floor_1"]
    assert [c["outcome"] for c in why["candidates"]][1].startswith("outranked by template")
    admin.set_member("floor_1", "esp32_001", member=False)
    assert service.config("esp32_001").body["config"] == {"from": "type"}
    with pytest.raises(Conflict, match="exists"):
        admin.create_group(GroupIn(group_name="floor_1"))


def test_a_sensor_may_not_take_the_id_of_another_device(service: MasterService) -> None:
    with pytest.raises(Conflict, match="'temp' is a serial device of this hub"):
        service.register(SensorRegister(sensor_id="temp"))
    with pytest.raises(NotFound):
        MasterAdmin(service).sensor("temp")


def test_a_probe_that_phones_home_is_managed_and_stays_a_probe(service: MasterService,
                                                               admin: MasterAdmin,
                                                               agg: Aggregator,
                                                               clock: Clock) -> None:
    agg.register(RegisterDevice(device_id="probe-7", source="probe", interval=10))
    admin.create_template(TemplateIn(config_name="Default", sensor_type="esp32_ferm",
                                     config_data=CONFIG))
    answer = service.register(SensorRegister(sensor_id="probe-7", sensor_type="esp32_ferm"))
    assert answer["status"] == "registered" and answer["has_config"] is True
    assert agg.source_of("probe-7") == "probe"
    service.data(DataUpload.model_validate({"sensor_id": "probe-7", "readings": {
        "sensor.temperature": 21.5}}))
    assert agg.devices["probe-7"].values == {"temperature": 21.5}
    admin.delete_sensor("probe-7")  # master control lets go; the probe device stays
    assert agg.source_of("probe-7") == "probe"


def test_deleting_a_sensor_keeps_its_version_numbers_growing(service: MasterService,
                                                             admin: MasterAdmin,
                                                             agg: Aggregator) -> None:
    service.register(ESP)
    admin.create_template(TemplateIn(config_name="t", sensor_id="esp32_001", config_data={"a": 1}))
    admin.delete_sensor("esp32_001")
    with pytest.raises(NotFound):
        admin.sensor("esp32_001")
    assert "esp32_001" not in agg.devices  # its device goes too
    last = agg.changes.since(0)[2][-1]
    assert isinstance(last, DeviceChange) and last.action == "removed"
    assert service.register(ESP)["config_version"] == 2  # same document: no new version


def test_a_late_tick_does_not_skip_stale(service: MasterService, agg: Aggregator,
                                         clock: Clock) -> None:
    service.register(ESP)
    service.heartbeat(Heartbeat(sensor_id="esp32_001"))
    clock.now += 1000  # no tick saw the stale window
    service.tick()
    events = [(c.data or {})["status"] for c in agg.changes.since(0)[2]
              if isinstance(c, EventChange)]
    assert events[-2:] == ["stale", "offline"]


def test_a_mapping_change_updates_the_device_units_and_interval(service: MasterService,
                                                                 admin: MasterAdmin,
                                                                 agg: Aggregator) -> None:
    made = admin.create_template(TemplateIn(config_name="Default", sensor_type="esp32_ferm",
                                            config_data=CONFIG))
    service.register(ESP)
    assert agg.devices["esp32_001"].units == {"temperature": "°C"}
    seq = agg.changes.since(0)[0]
    fahrenheit = {**CONFIG, "check_in_interval": 45, "sensor_mappings": [
        {"sensor_name": "sensor.temperature", "entry_field": "Temperature", "unit": "°F",
         "data_type": "float"},
        {"sensor_name": "sensor.humidity", "entry_field": "Humidity", "unit": "%"}]}
    admin.update_template(made["id"], TemplatePatch(config_data=fahrenheit))
    device = agg.devices["esp32_001"]
    assert device.units == {"temperature": "°F", "humidity": "%"}
    assert device.interval == 45
    updates = [c for c in agg.changes.since(seq)[2] if isinstance(c, DeviceChange)]
    assert [(u.action, u.info.units if u.info else None) for u in updates] == [
        ("updated", {"temperature": "°F", "humidity": "%"})]
    # the same config again changes nothing, so nothing is announced
    seq = agg.changes.since(0)[0]
    admin.update_template(made["id"], TemplatePatch(config_name="Renamed only"))
    assert not [c for c in agg.changes.since(seq)[2] if isinstance(c, DeviceChange)]
