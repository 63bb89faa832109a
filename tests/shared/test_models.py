"""The shared models' fast paths give exactly what pydantic's own would: ``trusted`` builds
the validated model, ``to_json`` writes pydantic's JSON, the property-name check refuses what it
refused before."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from shared.models import (
    AvailabilityChange,
    ChangesPage,
    DeviceChange,
    DeviceInfo,
    DeviceSnapshot,
    ErrorChange,
    EventChange,
    ReadingObs,
    Snapshot,
    StateChange,
    to_json,
    trusted,
)

INFO = DeviceInfo(device_id="d1", name="D", model="m", sensor_type="climate", source="serial",
                  enabled=True, writable=False, online=True, last_seen=1.5, interval=10.0)
CASES: list[tuple[type[Any], dict[str, Any]]] = [
    (StateChange, {"seq": 7, "device_seq": 3, "device_id": "d1", "ts": 1.5,
                   "values": {"t": 21.5, "on": True, "label": "x", "n": None},
                   "sampled": ["t"]}),
    (ErrorChange, {"seq": 1, "device_id": "d1", "ts": 2.0, "error_code": "E", "message": "m",
                   "severity": "warning"}),
    (EventChange, {"seq": 2, "device_id": "d1", "ts": 2.0, "event": "motion_started"}),
    (EventChange, {"seq": 2, "device_id": "d1", "ts": 2.0, "event": "e", "data": {"a": [1]}}),
    (AvailabilityChange, {"seq": 3, "device_id": "d1", "ts": 2.0, "online": False}),
    (DeviceChange, {"seq": 4, "device_id": "d1", "ts": 2.0, "action": "added", "info": INFO}),
]


@pytest.mark.parametrize(("cls", "fields"), CASES)
def test_trusted_builds_the_validated_model(cls: type[Any], fields: dict[str, Any]) -> None:
    fast, checked = trusted(cls, **fields), cls(**fields)
    assert fast == checked and fast.model_dump() == checked.model_dump()
    assert fast.model_fields_set == checked.model_fields_set | set(cls.model_fields)
    with pytest.raises(ValidationError):  # still frozen
        fast.seq = 99


def test_trusted_refuses_a_missing_or_unknown_field() -> None:
    with pytest.raises(TypeError, match=r"missing \['device_seq'\]"):
        trusted(StateChange, seq=1, device_id="d", ts=1.0, values={}, sampled=[])
    with pytest.raises(TypeError, match=r"unknown \['colour'\]"):
        trusted(AvailabilityChange, seq=1, device_id="d", ts=1.0, online=True, colour="red")


@pytest.mark.parametrize(("cls", "fields"), CASES)
def test_to_json_writes_what_pydantic_writes(cls: type[Any], fields: dict[str, Any]) -> None:
    model = cls(**fields)
    assert orjson.loads(to_json(model)) == orjson.loads(model.model_dump_json())


def test_to_json_of_a_page_and_a_snapshot_round_trips() -> None:
    changes = [cls(**fields) for cls, fields in CASES]
    page = ChangesPage.model_construct(epoch="e1", seq=4, resync=False, changes=changes)
    assert ChangesPage.model_validate_json(to_json(page)) == ChangesPage(
        epoch="e1", seq=4, changes=changes)
    snap = Snapshot(epoch="e1", seq=4, groups={"g": ["d1"]},
                    devices=[DeviceSnapshot(info=INFO, state=StateChange(**CASES[0][1]))])
    assert Snapshot.model_validate_json(to_json(snap)) == snap
    with pytest.raises(TypeError, match="not JSON serializable"):
        to_json({"x": object()})


@pytest.mark.parametrize("name", ["bad name", "", "x" * 65, "ü", "a/b"])
def test_a_bad_property_name_is_refused_and_named(name: str) -> None:
    with pytest.raises(ValidationError, match="invalid property name"):
        ReadingObs(device_id="d1", ts=1_700_000_000.0, values={"ok": 1, name: 2})
    assert ReadingObs(device_id="d1", ts=1_700_000_000.0, values={"ok_1": 1, "x-2": 2}).values["x-2"] == 2
