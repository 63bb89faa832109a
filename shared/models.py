"""Pydantic models: the single schema of every payload that crosses a process boundary.

Wire models (MQTT, contract) come first, then the internal REST models between the processes.
Inside the hub time is epoch seconds (``ts``); the bridge renders ISO timestamps at the edge.

Data is validated once where it enters a process (a device line, an HTTP response, a REST body,
an MQTT payload); after that the model instances themselves travel: the aggregator's change log
and snapshot hold them, and ``to_json`` writes them at the REST edge in one orjson pass.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticUndefined

from shared.timeutil import EARLIEST_OBS_TS, FUTURE_SKEW_S, obs_time_problem
from shared.topics import ID_RE, validate_id

DeviceId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Severity = Literal["info", "warning", "error", "critical"]
CommandStatus = Literal["accepted", "success", "error", "timeout", "expired", "rejected"]
# The contract's device sources; ``system`` is the hub's own device (``hub_system``).
Source = Literal["serial", "http", "probe", "sensor", "system"]


_is_id = ID_RE.fullmatch


def _check_obs_time(ts: float) -> float:
    # The good case first, in one comparison: this runs for every reading that crosses a process.
    now = time.time()
    if EARLIEST_OBS_TS <= ts <= now + FUTURE_SKEW_S:
        return ts
    problem = obs_time_problem(ts, now)
    if problem is None:  # the hub's own clock is before 2000
        return ts
    raise ValueError(problem)


ObsTime = Annotated[float, AfterValidator(_check_obs_time)]
"""An observation's time, epoch seconds: from 2000-01-01 to ``FUTURE_SKEW_S`` (300 s) ahead of
this host's clock (``shared.timeutil.obs_time_problem``). Checked wherever one is built or
parsed, so a handler's bad clock is a 422 at the aggregator's ``/ingest`` naming the field, not
a device state frozen in the future."""


def _check_property_names(values: dict[str, Any]) -> dict[str, Any]:
    # One C-level pass for the common, valid case (a Python loop per key was most of the cost
    # of a reading); the loop only runs to name the offending key.
    if not all(map(_is_id, values)):
        for key in values:
            validate_id(key, "property name")
    return values


class _Model(BaseModel):
    # cache_strings="keys": pydantic's JSON parser keeps a global cache of the strings it
    # made, field values too by default; those few cached strings, scattered over the memory
    # of a 10,000-change page, keep it from being given back after the page is gone
    # (measured: RSS 21 MB higher after five such pages with the default, 8 MB with keys
    # only, at the same parse time). Keys are the same few names every time.
    model_config = ConfigDict(extra="ignore", frozen=True, cache_strings="keys")


M = TypeVar("M", bound=_Model)
_TRUSTED: dict[type[_Model], tuple[dict[str, Any], frozenset[str]]] = {}
_new = object.__new__
_set = object.__setattr__


def trusted(cls: type[M], /, **fields: Any) -> M:
    """``cls`` built from the hub's own, already validated data, without validating it again.

    What pydantic's ``model_construct`` does, for models of plain fields, at a third of its cost
    (and 40 % of a validated build: 1.7 vs 4.3 us for a ``StateChange`` here; the aggregator
    builds one per reading). Every field without a plain default must be given; a test checks
    that the result equals the validated model, should pydantic's internals change."""
    known = _TRUSTED.get(cls)
    if known is None:
        defaults = {name: f.default for name, f in cls.model_fields.items()
                    if f.default is not PydanticUndefined and f.default_factory is None}
        known = _TRUSTED[cls] = (defaults, frozenset(cls.model_fields))
    defaults, names = known
    data = {**defaults, **fields}
    if data.keys() != names:
        raise TypeError(f"{cls.__name__}: trusted() needs every field; "
                        f"missing {sorted(names - data.keys())}, unknown {sorted(data.keys() - names)}")
    obj = _new(cls)
    _set(obj, "__dict__", data)
    _set(obj, "__pydantic_fields_set__", names)
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


# --- MQTT payloads (contract) ----------------------------------------------------------------


class CommandIn(_Model):
    """``devices/{d}/cmd`` and ``groups/{g}/cmd``."""

    id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    timestamp: str | None = None
    values: dict[str, Any]
    timeout: Annotated[int, Field(gt=0, le=3_600_000)] | None = None  # milliseconds

    _names = field_validator("values")(_check_property_names)


class GetIn(_Model):
    """``devices/{d}/get``; an empty payload means every property."""

    properties: list[str] | None = None


class MetaRequestIn(_Model):
    id: Annotated[str, Field(max_length=128)] | None = None


# --- internal: handlers -> aggregator ----------------------------------------------------------


class ReadingObs(_Model):
    """A good reading: property values sampled at ``ts``."""

    kind: Literal["reading"] = "reading"
    device_id: DeviceId
    ts: ObsTime
    values: dict[str, Any]

    _names = field_validator("values")(_check_property_names)


class ErrorObs(_Model):
    """A failed read or a protocol problem, published on ``devices/{d}/error``."""

    kind: Literal["error"] = "error"
    device_id: DeviceId
    ts: ObsTime
    error_code: str
    message: str
    severity: Severity = "error"


class EventObs(_Model):
    """A discrete event (motion started, probe rebooted), published on ``devices/{d}/events``."""

    kind: Literal["event"] = "event"
    device_id: DeviceId
    ts: ObsTime
    event: str
    data: dict[str, Any] | None = None


class LinkObs(_Model):
    """The transport's word on a device: ``up=False`` makes it offline at once (port gone)."""

    kind: Literal["link"] = "link"
    device_id: DeviceId
    ts: ObsTime
    up: bool
    reason: str | None = None


Observation = Annotated[ReadingObs | ErrorObs | EventObs | LinkObs, Field(discriminator="kind")]


class IngestBatch(_Model):
    source: str
    items: list[Observation] = Field(max_length=100_000)
    # The pusher's name for this batch: a batch resent after the aggregator stored it but
    # could not answer (it restarted) is answered again, not applied twice.
    batch_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None


class ReadingsPage(_Model):
    """A handler's ``GET /readings``: the last reading of its sensors ``offset`` to ``offset +
    limit`` (in the handler's order; a sensor with none yet has no entry), ``next`` the next
    page's offset (``None`` after the last), ``total`` how many sensors it has. What the
    aggregator's warm-up takes, a page at a time, instead of every sensor's ``/sensors`` view."""

    readings: list[ReadingObs]
    next: int | None = None
    total: int


class RegisterDevice(_Model):
    """``POST /devices/register``: a device found at run time (an ESP32 probe, ``hub_system``)."""

    device_id: DeviceId
    name: str | None = None
    model: str | None = None
    sensor_type: Annotated[str, Field(min_length=1, max_length=64)] = "sensor"
    source: Source
    interval: Annotated[float, Field(gt=0)] = 60.0
    units: dict[str, str] = Field(default_factory=dict)


# --- internal: aggregator -> bridge --------------------------------------------------------------


class DeviceInfo(_Model):
    """One entry of the registry as ``/devices`` and ``meta/devices_list`` show it."""

    device_id: DeviceId
    name: str
    model: str
    sensor_type: str
    source: Source
    enabled: bool
    writable: bool
    online: bool
    last_seen: float | None
    interval: float
    units: dict[str, str] = Field(default_factory=dict)


class StateChange(_Model):
    """The device's whole state after a reading; ``sampled`` names what this reading carried.

    ``seq`` is the change's position in the aggregator's change log (all devices, all kinds);
    ``device_seq`` counts this device's states, one more per state: the contract's per-device
    ``seq`` of ``devices/{d}/state``. Both start again after an aggregator restart (new epoch).
    """

    kind: Literal["state"] = "state"
    seq: int
    device_seq: int
    device_id: DeviceId
    ts: float
    values: dict[str, Any]
    sampled: list[str] = Field(default_factory=list)


class ErrorChange(_Model):
    kind: Literal["error"] = "error"
    seq: int
    device_id: DeviceId
    ts: float
    error_code: str
    message: str
    severity: Severity


class EventChange(_Model):
    kind: Literal["event"] = "event"
    seq: int
    device_id: DeviceId
    ts: float
    event: str
    data: dict[str, Any] | None = None


class AvailabilityChange(_Model):
    kind: Literal["availability"] = "availability"
    seq: int
    device_id: DeviceId
    ts: float
    online: bool


class DeviceChange(_Model):
    """A device was added to or removed from the registry, or what it says of itself changed
    (``updated``: its units, name or interval). ``info`` (with ``added`` and ``updated``) lets the
    bridge publish that device alone instead of reloading every device."""

    kind: Literal["device"] = "device"
    seq: int
    device_id: DeviceId
    ts: float
    action: Literal["added", "updated", "removed"]
    info: DeviceInfo | None = None


class CommandChange(_Model):
    """A command's final result, whoever sent it (an MQTT client through the bridge, the
    dashboard): the dashboard shows it on the device's page. The bridge publishes nothing for
    it (it answers on ``cmd/response`` itself)."""

    kind: Literal["command"] = "command"
    seq: int
    device_id: DeviceId
    ts: float
    cmd_id: str
    values: dict[str, Any]
    status: CommandStatus
    result: dict[str, Any] | None = None
    error: str | None = None


Change = Annotated[
    StateChange | ErrorChange | EventChange | AvailabilityChange | DeviceChange | CommandChange,
    Field(discriminator="kind"),
]


class ChangesPage(_Model):
    """``GET /changes``: everything after ``since`` (``resync`` when the log no longer has it)."""

    epoch: str
    seq: int
    resync: bool = False
    changes: list[Change]


class CursorCommit(_Model):
    """``POST /cursors/{reader}``: everything up to ``seq`` of the log ``epoch`` is delivered."""

    epoch: str
    seq: Annotated[int, Field(ge=0)]


class DeviceSnapshot(_Model):
    info: DeviceInfo
    state: StateChange | None = None  # the device's last state change, as the log carried it


class Snapshot(_Model):
    """``GET /snapshot``: every device with its last state, and the change-log position."""

    epoch: str
    seq: int
    devices: list[DeviceSnapshot]
    groups: dict[str, list[str]]
    # The log's position when the snapshot was asked for. The aggregator may answer later (it
    # waits for its warm-up): the changes in between are in the snapshot only as their end
    # result, so the bridge reads them from the log (their events, errors and earlier states).
    asked_seq: int | None = None


# --- internal: commands ----------------------------------------------------------------------


class CommandRequest(_Model):
    """A command on its way from the bridge to the handler that owns the device."""

    cmd_id: Annotated[str, Field(min_length=1, max_length=128)]
    values: dict[str, Any]
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 5.0


class CommandResult(_Model):
    """The final outcome of a command, as the owning handler reports it."""

    status: CommandStatus
    result: dict[str, Any] | None = None
    error: str | None = None


class RefreshRequest(_Model):
    properties: list[str] | None = None


class ErrorBody(_Model):
    """Every REST error answer: ``{error, message, timestamp}``."""

    error: str
    message: str
    timestamp: str


def _fields(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        # Our models are flat data with no aliases or custom serializers, so their fields are
        # their JSON: orjson writes a page of 10,000 changes about 4x faster this way than
        # pydantic's own serializer, and the output is the same.
        return obj.__dict__
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def to_json(obj: Any) -> bytes:
    """``obj`` (models, or plain data holding models) as JSON, in one orjson pass."""
    return orjson.dumps(obj, default=_fields, option=orjson.OPT_NON_STR_KEYS)
