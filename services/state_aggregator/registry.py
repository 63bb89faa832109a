"""The device registry: every reading source the instance knows, with what was last seen of it.

Availability is derived from ``last_seen`` and the device's cadence each time it is asked for;
``announced`` only remembers what the change log last said, so that transitions can be found.
``state`` is the device's last ``StateChange`` as the change log carried it: the snapshot and
``/device/{id}`` serve that object, nothing rebuilt by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.instance import HttpSource, Instance, SensorConfig, SerialSource
from shared.models import DeviceInfo, Source, StateChange

MIN_OFFLINE_AFTER = 30.0


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
    state: StateChange | None = None
    device_seq: int = 0  # states this device has had since the aggregator started
    cached_at: float | None = None  # when ``state`` was stored; None after /cache/clear
    announced: bool = False

    @property
    def state_ts(self) -> float | None:
        return None if self.state is None else self.state.ts

    @property
    def values(self) -> dict[str, Any]:
        return {} if self.state is None else self.state.values

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
    return Device(
        device_id=sensor.sensor_id,
        name=sensor.friendly_name or sensor.sensor_id,
        model=sensor.model or model,
        sensor_type=sensor.sensor_type,
        source=source,
        handler=handler,
        enabled=sensor.enabled,
        writable=getattr(src, "writable", False),
        interval=interval,
        units={k: v.unit for k, v in sensor.properties.items() if v.unit},
    )


def build_registry(instance: Instance, *, poll_interval: float,
                   update_interval: float | None = None) -> dict[str, Device]:
    """The devices of the instance file; HTTP sensors default to the poll interval."""
    devices: dict[str, Device] = {}
    for sensor in instance.config.sensors:
        default = poll_interval if sensor.source.type == "http" else update_interval
        devices[sensor.sensor_id] = _from_sensor(sensor, instance.interval_of(sensor, default))
    return devices
