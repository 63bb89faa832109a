"""The serial handler's logic, free of Flask: one ``PortWorker`` per configured port, the
sensors on them, and the errors seen.

A fresh read asked over REST (the aggregator's force-refresh, the MQTT ``get``) is answered with
the reading and not pushed as well: the aggregator ingests that answer, so the reading becomes
state once. Readings that arrive while no such read waits are pushed as always."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any

from shared.errors import ReadError, UnknownDevice
from shared.instance import Instance, SerialSource
from shared.models import CommandRequest, CommandResult, ErrorObs, EventObs, LinkObs, ReadingObs
from shared.processes import FRESH_READ_TIMEOUT_S
from shared.timeutil import iso

from .ports import PortWorker, SensorSlot

log = logging.getLogger(__name__)

Emit = Callable[[ReadingObs | ErrorObs | EventObs | LinkObs], None]
MAX_ERRORS = 500  # the most recent errors /errors keeps


@dataclass(frozen=True, slots=True)
class SerialSensor:
    """What the handler keeps of one serial sensor of the instance file."""

    sensor_id: str
    sensor_type: str
    name: str
    port: str
    interval: float
    writable: bool
    read_timeout: float | None  # its own; None: the port's


@dataclass(frozen=True, slots=True)
class SerialPlan:
    """The instance file as the handler needs it: its serial sensors in the file's order and
    how each port is opened (the first sensor's source; the file check makes them agree). The
    instance file's models (about 2.3 KB a sensor) are not kept; the app makes the plan with
    ``shared.compact.detached``, out of the memory of loading them."""

    sensors: list[SerialSensor]
    ports: dict[str, SerialSource]

    @classmethod
    def of(cls, instance: Instance, update_interval: float | None = None) -> SerialPlan:
        sensors: list[SerialSensor] = []
        ports: dict[str, SerialSource] = {}
        for sensor in instance.sensors_of("serial"):
            src = sensor.source
            assert isinstance(src, SerialSource)
            ports.setdefault(src.port, src)
            sensors.append(SerialSensor(
                sensor.sensor_id, sensor.sensor_type, sensor.friendly_name or sensor.sensor_id,
                src.port, instance.interval_of(sensor, update_interval), src.writable,
                sensor.read_timeout))
        return cls(sensors, ports)


class SerialHandler:
    def __init__(self, instance: Instance | SerialPlan, emit: Emit, *,
                 update_interval: float | None = None,
                 clock: Callable[[], float] = time.time,
                 backoff: tuple[float, float] = (0.5, 10.0),
                 bad_line_report_every: float = 1.0) -> None:
        plan = (instance if isinstance(instance, SerialPlan)
                else SerialPlan.of(instance, update_interval))
        self._emit = emit
        self._clock = clock
        self._errors_lock = threading.Lock()
        self.errors: deque[dict[str, Any]] = deque(maxlen=MAX_ERRORS)
        self.error_counts: dict[str, int] = defaultdict(int)
        # Only what /sensors shows of each sensor (type, name), in the instance file's order.
        self.sensors: dict[str, tuple[str, str]] = {}
        by_port: dict[str, list[SensorSlot]] = defaultdict(list)
        for sensor in plan.sensors:
            self.sensors[sensor.sensor_id] = (sensor.sensor_type, sensor.name)
            by_port[sensor.port].append(SensorSlot(
                sensor_id=sensor.sensor_id, interval=sensor.interval,
                writable=sensor.writable, read_timeout=sensor.read_timeout))
        configs = plan.ports
        self.ports = {
            url: PortWorker(url, configs[url], slots, self._observe, on_bad_line=self._bad_line,
                            clock=clock, backoff=backoff,
                            bad_line_report_every=bad_line_report_every)
            for url, slots in by_port.items()
        }
        self._port_of = {slot: w for w in self.ports.values() for slot in w.slots}
        # Fresh reads waiting per sensor, and the readings held back from the push for them.
        self._fresh_lock = threading.Lock()
        self._fresh_waiting: dict[str, int] = defaultdict(int)
        self._held: dict[str, list[ReadingObs]] = defaultdict(list)

    def start(self) -> None:
        for worker in self.ports.values():
            worker.start()

    def stop(self) -> None:
        for worker in self.ports.values():
            worker.stop()

    def _record(self, entry: dict[str, Any]) -> None:
        with self._errors_lock:
            self.errors.append(entry)
            self.error_counts[entry["error_code"]] += 1

    def _observe(self, obs: ReadingObs | ErrorObs | EventObs | LinkObs) -> None:
        # Bad lines reach /errors through _bad_line, once each, even when the device error
        # they become is rate-limited.
        if isinstance(obs, ErrorObs) and obs.error_code != "BAD_LINE":
            self._record({"device_id": obs.device_id, "port": self._port_of[obs.device_id].url,
                          "error_code": obs.error_code, "message": obs.message,
                          "timestamp": iso(obs.ts)})
        if isinstance(obs, ReadingObs):
            with self._fresh_lock:
                if self._fresh_waiting.get(obs.device_id):
                    self._held[obs.device_id].append(obs)  # the fresh read's answer carries it
                    return
        self._emit(obs)

    def _bad_line(self, port: str, code: str, message: str, device_id: str | None) -> None:
        self._record({"device_id": device_id, "port": port, "error_code": code,
                      "message": message, "timestamp": iso(self._clock())})

    def _worker(self, sensor_id: str) -> PortWorker:
        worker = self._port_of.get(sensor_id)
        if worker is None:
            raise UnknownDevice(sensor_id)
        return worker

    # --- API -------------------------------------------------------------------------------------
    def sensor_view(self, sensor_id: str) -> dict[str, Any]:
        worker = self._worker(sensor_id)
        slot = worker.slots[sensor_id]
        sensor_type, friendly_name = self.sensors[sensor_id]
        last = slot.last
        return {
            "sensor_id": sensor_id, "sensor_type": sensor_type,
            "friendly_name": friendly_name, "port": worker.url,
            "port_up": worker.is_up, "down_reason": worker.down_reason,
            "mode": worker.config.mode, "writable": slot.writable, "interval": slot.interval,
            "bad_lines": slot.bad_lines, **worker.sensor_status(sensor_id),
            "reading": last.model_dump() if last else None,
            "timestamp": iso(last.ts) if last else None,
        }

    def sensor_list(self) -> list[dict[str, Any]]:
        return [self.sensor_view(s) for s in self.sensors]

    def last_readings(self, offset: int, limit: int) -> tuple[list[ReadingObs], int]:
        """The last reading of the sensors ``offset`` to ``offset + limit`` (those that have one)
        and how many sensors there are: a page of ``GET /readings``."""
        page = islice(self.sensors, offset, offset + limit)
        readings = [last for sensor_id in page
                    if (last := self._worker(sensor_id).slots[sensor_id].last) is not None]
        return readings, len(self.sensors)

    def read(self, sensor_id: str, properties: list[str] | None = None) -> ReadingObs:
        """A fresh reading (``ReadError`` when the sensor does not give one); with
        ``properties``, only those of its values (all of them when it has none of those).

        The reading is the caller's to deliver: it is not pushed. Any other reading held back
        while this read waited (a stream that printed twice, a read that timed out just as
        its answer came) is pushed afterwards, so nothing is lost."""
        worker = self._worker(sensor_id)
        with self._fresh_lock:
            self._fresh_waiting[sensor_id] += 1
        reading: ReadingObs | None = None
        try:
            # the sensor's own read timeout, never longer than the aggregator waits for it
            reading = worker.read(sensor_id, timeout=min(
                worker.read_timeout_of(worker.slots[sensor_id]), FRESH_READ_TIMEOUT_S))
        finally:
            with self._fresh_lock:
                self._fresh_waiting[sensor_id] -= 1
                if sensor_id in self._held:
                    self._held[sensor_id] = [r for r in self._held[sensor_id] if r is not reading]
                # the last read out pushes what nobody took
                rest = self._held.pop(sensor_id, []) if not self._fresh_waiting[sensor_id] else []
            for other in rest:
                self._emit(other)
        if properties:
            picked = {k: v for k, v in reading.values.items() if k in properties}
            if picked:
                return reading.model_copy(update={"values": picked})
        return reading

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

    def errors_view(self) -> dict[str, Any]:
        with self._errors_lock:
            recent = list(self.errors)
            counts = dict(self.error_counts)
        return {"errors": recent, "counts": counts,
                "bad_lines": {w.url: w.garbage for w in self.ports.values()}}

    def health(self) -> dict[str, Any]:
        return {"ports": [w.status() for w in self.ports.values()]}
