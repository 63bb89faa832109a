"""The bridge's compact per-device records: what goes in comes out as the models it was made
from (the registry entry as its JSON, the state as seq, time and values)."""

from __future__ import annotations

from connector.context import DeviceRecord, LastState
from shared.models import DeviceInfo, StateChange


def _info(**fields: object) -> DeviceInfo:
    base: dict[str, object] = dict(
        device_id="climate_1", name="Living room", model="serial climate sensor",
        sensor_type="climate", source="serial", enabled=True, writable=False, online=True,
        last_seen=1_700_000_000.5, interval=10.0, units={"temperature": "°C", "humidity": "%"})
    return DeviceInfo.model_validate(base | fields)


def test_a_record_gives_back_the_registry_entry_it_was_made_from() -> None:
    info = _info()
    rec = DeviceRecord.of(info)
    assert (rec.device_id, rec.online, rec.state) == ("climate_1", True, None)
    assert rec.info == info
    assert rec.info.units == {"temperature": "°C", "humidity": "%"}


def test_online_is_the_records_own_and_info_with_replaces_fields() -> None:
    rec = DeviceRecord.of(_info(online=True), online=False)
    assert rec.online is False and rec.info.online is True  # as the aggregator sent it
    view = rec.info_with(online=False, last_seen=None)
    assert view == _info(online=False, last_seen=None)
    assert rec.info.last_seen == 1_700_000_000.5  # the record itself is unchanged


def test_set_info_replaces_the_entry_and_keeps_the_state() -> None:
    state = LastState(3, 1_700_000_001.0, {"temperature": 21.5})
    rec = DeviceRecord.of(_info(), state=state)
    rec.set_info(_info(name="Kitchen", units={"temperature": "K"}))
    assert (rec.info.name, rec.info.units, rec.state) == ("Kitchen", {"temperature": "K"}, state)


def test_last_state_keeps_what_a_state_topic_is_made_of() -> None:
    change = StateChange(seq=41, device_seq=7, device_id="climate_1", ts=1_700_000_002.25,
                         values={"temperature": 21.5, "on": True}, sampled=["on"])
    state = LastState.of(change)
    assert (state.device_seq, state.ts, state.values) == (7, 1_700_000_002.25,
                                                          {"temperature": 21.5, "on": True})
    assert state == LastState(7, 1_700_000_002.25, {"temperature": 21.5, "on": True})
