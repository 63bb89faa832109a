"""The device registry: every reading source the instance knows, with what was last seen of it.

Availability is derived from ``last_seen`` and the device's cadence each time it is asked for;
``announced`` only remembers what the change log last said, so that transitions can be found.

A device's last state is kept in a few fields of its entry (its change's numbers, its time, its
values as a shared tuple of names and a tuple of values), not as the ``StateChange`` model the
change log carried (about 0.6 KB more a device: the model, its dict, a values dict, a ``sampled``
list): ``Device.state`` makes that model again, equal to it field for field, when the snapshot
or ``/device/{id}`` asks.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from shared.errors import HubError
from shared.instance import HttpSource, Instance, SensorConfig, SerialSource
from shared.models import DeviceInfo, Source, StateChange, trusted
from shared.processes import WEB

MIN_OFFLINE_AFTER = 30.0
# Pushers (by their source name) that speak for clients on the LAN: they may write probes only,
# so a probe_id equal to a serial sensor's or hub_system's id cannot overwrite that device.
LAN_WRITERS = frozenset({WEB.name})


# One tuple per set of property names, shared by every device whose values have those names (a
# tuple per device otherwise). Bounded: a pusher inventing names cannot grow it without end;
# clearing it only stops the sharing of the shapes seen so far.
_SHAPES: dict[tuple[str, ...], tuple[str, ...]] = {}
MAX_SHAPES = 4096


def shape(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` as the one tuple every device with these property names shares."""
    known = _SHAPES.get(names)
    if known is None:
        if len(_SHAPES) >= MAX_SHAPES:
            _SHAPES.clear()
        known = _SHAPES[names] = names
    return known


class RegistryRefusal(HubError):
    """Raised when a run-time registration or removal is refused: ``status`` 409 with ``error``
    ``device_conflict`` (the id belongs to a device of another source), ``device_limit``
    (``MAX_DEVICES`` run-time devices exist) or ``not_removable`` (not a run-time probe)."""

    def __init__(self, error: str, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


@dataclass(slots=True)
class Device:
    device_id: str
    name: str
    model: str
    sensor_type: str
    source: Source
    handler: str | None  # which handler process owns it ("serial", "http"), None when none
    enabled: bool
    writable: bool
    interval: float
    units: dict[str, str] = field(default_factory=dict)
    last_seen: float | None = None
    link_down: str | None = None
    # The last state (``state`` makes its model again); ``state_ts`` None: none yet.
    state_ts: float | None = None
    state_seq: int = 0  # its change's position in the change log
    device_seq: int = 0  # states this device has had since the aggregator started
    names: tuple[str, ...] = ()  # its property names: one tuple shared by the devices (``shape``)
    readings: tuple[Any, ...] = ()  # their values, in that order
    sampled: tuple[str, ...] = ()  # what the reading that made it carried (``shape``)
    cached_at: float | None = None  # when the state was stored; None after /cache/clear
    announced: bool = False

    @property
    def state(self) -> StateChange | None:
        """The last state as the change log carried it: the same model, made again (not
        validated again: it is the hub's own data)."""
        if self.state_ts is None:
            return None
        # The fields in the order of the change the log carried, as the snapshot's JSON does.
        return trusted(StateChange, seq=self.state_seq, device_seq=self.device_seq,
                       device_id=self.device_id, ts=self.state_ts, values=self.values,
                       sampled=list(self.sampled))

    @property
    def values(self) -> dict[str, Any]:
        """The last state's values, in the order its change had them (the aggregator reads them
        under its lock; without it a reading may be caught between ``names`` and ``readings``)."""
        return dict(zip(self.names, self.readings, strict=False))

    def keep(self, change: StateChange) -> None:
        """Hold ``change`` as the last state (a restart's states from the durable log)."""
        self.hold(change, shape(tuple(change.values)), shape(tuple(change.sampled)))

    def hold(self, change: StateChange, names: tuple[str, ...],
             sampled: tuple[str, ...]) -> None:
        """Hold ``change`` as the last state, ``names`` and ``sampled`` its values' names and
        what its reading carried as shared tuples (``shape``; ingest has them already)."""
        self.state_ts, self.state_seq, self.device_seq = change.ts, change.seq, change.device_seq
        self.names, self.readings, self.sampled = names, tuple(change.values.values()), sampled

    @property
    def offline_after(self) -> float:
        return max(3 * self.interval, MIN_OFFLINE_AFTER)

    def online(self, now: float) -> bool:
        return (
            self.link_down is None
            and self.last_seen is not None
            and now - self.last_seen <= self.offline_after
        )

    def info(self, now: float) -> DeviceInfo:
        return DeviceInfo(
            device_id=self.device_id, name=self.name, model=self.model,
            sensor_type=self.sensor_type, source=self.source, enabled=self.enabled,
            writable=self.writable, online=self.online(now), last_seen=self.last_seen,
            interval=self.interval, units=self.units,
        )


def _from_sensor(sensor: SensorConfig, interval: float) -> Device:
    src = sensor.source
    source: Source
    if isinstance(src, SerialSource):
        source, handler, model = "serial", "serial", f"serial {sensor.sensor_type} sensor"
    elif isinstance(src, HttpSource):
        source, handler, model = "http", "http", f"HTTP {sensor.sensor_type} sensor"
    else:
        source, handler, model = "probe", "http", "ESP32 probe"
    # Types, models and units repeat across thousands of sensors: one string each, not one
    # per sensor.
    return Device(
        device_id=sensor.sensor_id,
        name=sensor.friendly_name or sensor.sensor_id,
        model=sys.intern(sensor.model or model),
        sensor_type=sys.intern(sensor.sensor_type),
        source=source,
        handler=handler,
        enabled=sensor.enabled,
        writable=getattr(src, "writable", False),
        interval=interval,
        units={sys.intern(k): sys.intern(v.unit) for k, v in sensor.properties.items() if v.unit},
    )


def build_registry(instance: Instance, *, poll_interval: float,
                   update_interval: float | None = None) -> dict[str, Device]:
    """The devices of the instance file; HTTP sensors default to the poll interval."""
    devices: dict[str, Device] = {}
    # Sensors with the same units share one dict (about 0.2 KB a device otherwise); nothing
    # changes a device's units in place (``DeviceInfo`` takes a copy).
    units: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    intervals: dict[float, float] = {}  # and one float per interval (each sensor parsed its own)
    for sensor in instance.config.sensors:
        default = poll_interval if sensor.source.type == "http" else update_interval
        interval = instance.interval_of(sensor, default)
        device = _from_sensor(sensor, intervals.setdefault(interval, interval))
        device.units = units.setdefault(tuple(device.units.items()), device.units)
        devices[sensor.sensor_id] = device
    return devices


@dataclass(frozen=True, slots=True)
class InstanceRegistry:
    """The instance file as the aggregator keeps it: its devices, groups and defaults. The
    instance file's models (about 2.3 KB a sensor) are not kept; the app makes this with
    ``shared.compact.detached``, out of the memory of loading them."""

    instance_id: str
    devices: dict[str, Device]
    groups: dict[str, list[str]]
    update_interval: float
    cache_ttl: float

    @classmethod
    def of(cls, instance: Instance, *, poll_interval: float,
           update_interval: float | None = None) -> InstanceRegistry:
        return cls(instance.instance_id,
                   build_registry(instance, poll_interval=poll_interval,
                                  update_interval=update_interval),
                   {g.group_id: list(g.devices) for g in instance.groups},
                   instance.update_interval, instance.config.cache_ttl)


def refusal(device: Device | None, device_id: str, source: str) -> tuple[str, str] | None:
    """Why an observation from ``source`` may not touch ``device_id`` (error code, message), or
    ``None`` when it may."""
    if device is None:
        return "UNKNOWN_DEVICE", f"{source} sent data for unknown device {device_id!r}"
    if source in LAN_WRITERS and device.source != "probe":
        return "NOT_OWNER", (f"{source} may write probes only; {device_id!r} is a "
                             f"{device.source} device")
    return None
