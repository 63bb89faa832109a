"""The serial handler's logic, free of Flask: one ``PortWorker`` per configured port, the
sensors on them, and the errors seen."""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from shared.errors import ReadError, UnknownDevice
from shared.instance import Instance, SerialSource
from shared.models import CommandRequest, CommandResult, ErrorObs, EventObs, LinkObs, ReadingObs
from shared.timeutil import iso

from .ports import PortWorker, SensorSlot

log = logging.getLogger(__name__)

Emit = Callable[[ReadingObs | ErrorObs | EventObs | LinkObs], None]


class SerialHandler:
    def __init__(self, instance: Instance, emit: Emit, *, update_interval: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._emit = emit
        self._clock = clock
        self.errors: deque[dict[str, Any]] = deque(maxlen=500)
        self.sensors = {s.sensor_id: s for s in instance.sensors_of("serial")}
        by_port: dict[str, list[SensorSlot]] = defaultdict(list)
        configs: dict[str, SerialSource] = {}
        for sensor in self.sensors.values():
            src = sensor.source
            assert isinstance(src, SerialSource)
            configs.setdefault(src.port, src)
            by_port[src.port].append(SensorSlot(
                sensor_id=sensor.sensor_id,
                interval=instance.interval_of(sensor, update_interval),
                writable=src.writable,
            ))
        self.ports = {
            url: PortWorker(url, configs[url], slots, self._observe, on_garbage=self._garbage,
                            clock=clock)
            for url, slots in by_port.items()
        }
        self._port_of = {slot: w for w in self.ports.values() for slot in w.slots}

    def start(self) -> None:
        for worker in self.ports.values():
            worker.start()

    def stop(self) -> None:
        for worker in self.ports.values():
            worker.stop()

    def _observe(self, obs: ReadingObs | ErrorObs | EventObs | LinkObs) -> None:
        if isinstance(obs, ErrorObs):
            self.errors.append({"device_id": obs.device_id, "error_code": obs.error_code,
                                "message": obs.message, "timestamp": iso(obs.ts)})
        self._emit(obs)

    def _garbage(self, port: str, message: str, device_id: str | None) -> None:
        if device_id is None or device_id not in self.sensors:
            # Not tied to a device: only here, on /errors, and in the log.
            self.errors.append({"device_id": device_id, "port": port, "error_code": "BAD_LINE",
                                "message": message, "timestamp": iso(self._clock())})
        log.warning("%s", message)

    def _worker(self, sensor_id: str) -> PortWorker:
        worker = self._port_of.get(sensor_id)
        if worker is None:
            raise UnknownDevice(sensor_id)
        return worker

    # --- API -------------------------------------------------------------------------------------
    def sensor_view(self, sensor_id: str) -> dict[str, Any]:
        worker = self._worker(sensor_id)
        slot = worker.slots[sensor_id]
        sensor = self.sensors[sensor_id]
        last = slot.last
        return {
            "sensor_id": sensor_id, "sensor_type": sensor.sensor_type,
            "friendly_name": sensor.friendly_name or sensor_id, "port": worker.url,
            "port_up": worker.is_up, "mode": worker.config.mode, "writable": slot.writable,
            "interval": slot.interval,
            "reading": last.model_dump() if last else None,
            "timestamp": iso(last.ts) if last else None,
        }

    def list(self) -> list[dict[str, Any]]:
        return [self.sensor_view(s) for s in self.sensors]

    def read(self, sensor_id: str) -> ReadingObs:
        return self._worker(sensor_id).read(sensor_id)

    def cached(self, sensor_id: str) -> ReadingObs:
        worker = self._worker(sensor_id)
        last = worker.slots[sensor_id].last
        if last is None:
            raise ReadError("NO_DATA", f"{sensor_id} has not sent a reading yet")
        return last

    def command(self, sensor_id: str, request: CommandRequest) -> CommandResult:
        worker = self._worker(sensor_id)
        if not worker.slots[sensor_id].writable:
            return CommandResult(status="rejected", error=f"{sensor_id} is read-only")
        return worker.command(sensor_id, request)

    def health(self) -> dict[str, Any]:
        return {"ports": [w.status() for w in self.ports.values()]}
