"""The bridge's compact per-device records: what goes in comes out as the models it was made
from (the registry entry as its JSON, the state as seq, time and values)."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from connector.context import DeviceRecord, LastState
from connector.features.device_topics import SnapshotRecords
from shared.models import DeviceInfo, Snapshot, StateChange


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


def _snapshot_body() -> bytes:
    """A ``/snapshot`` body as the aggregator sends it: devices with and without a state."""
    devices = [
        {"info": _info().model_dump(mode="json"),
         "state": StateChange(seq=41, device_seq=7, device_id="climate_1", ts=1_700_000_002.25,
                              values={"temperature": 21.5, "on": True},
                              sampled=["on"]).model_dump(mode="json")},
        {"info": _info(device_id="climate_2", online=False, last_seen=None).model_dump(
            mode="json"), "state": None},
        {"info": _info(device_id="climate_3", units={}).model_dump(mode="json"),
         "state": StateChange(seq=44, device_seq=1, device_id="climate_3", ts=1_700_000_003.0,
                              values={"humidity": 40}).model_dump(mode="json")},
    ]
    return orjson.dumps({"epoch": "e1", "seq": 44, "asked_seq": 40, "devices": devices,
                         "groups": {"upstairs": ["climate_1", "climate_3"]}})


def test_a_snapshot_becomes_the_records_the_model_of_each_device_gives() -> None:
    body = _snapshot_body()
    snap = SnapshotRecords.of(body)
    model = Snapshot.model_validate_json(body)
    # what the bridge made of the snapshot model device by device before it kept only records
    assert snap.records == [
        DeviceRecord.of(e.info, state=None if e.state is None else LastState.of(e.state))
        for e in model.devices]
    assert [r.info for r in snap.records] == [e.info for e in model.devices]
    assert snap.held == {"climate_1": 41, "climate_2": None, "climate_3": 44}
    assert (snap.epoch, snap.seq, snap.asked_seq, snap.groups) == (
        "e1", 44, 40, {"upstairs": ["climate_1", "climate_3"]})
    assert snap == SnapshotRecords.of_model(model)


def test_a_snapshot_that_is_not_one_is_refused_as_the_model_refuses_it() -> None:
    body = orjson.loads(_snapshot_body())
    body["devices"][1]["info"].pop("device_id")
    with pytest.raises(ValidationError):
        SnapshotRecords.of(orjson.dumps(body))
    with pytest.raises(ValidationError):
        SnapshotRecords.of(b"{not json")
