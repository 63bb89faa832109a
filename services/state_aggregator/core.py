"""The aggregator's logic, free of Flask: it takes observations in batches from the handlers,
keeps the registry and the TTL cache, writes the change log, judges availability, and routes
commands and fresh reads to the handler that owns each device."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from shared.errors import ReadError, ServiceError, UnknownDevice
from shared.instance import Instance
from shared.models import (
    CommandRequest,
    CommandResult,
    DeviceInfo,
    ErrorObs,
    EventObs,
    LinkObs,
    Observation,
    ReadingObs,
    RegisterDevice,
)
from shared.rest import RestClient
from shared.timeutil import iso

from .cache import TTLCache
from .changes import ChangeLog
from .persist import Registration, RegistryStore
from .registry import Device, build_registry

log = logging.getLogger(__name__)

SNAPSHOT_WARM_WAIT_S = 5.0


class Aggregator:
    def __init__(
        self,
        instance: Instance,
        *,
        handlers: Mapping[str, RestClient],
        cache_ttl: float,
        poll_interval: float,
        update_interval: float | None = None,
        clock: Callable[[], float] = time.time,
        changelog_capacity: int = 200_000,
        store: RegistryStore | None = None,
    ) -> None:
        self.instance = instance
        self.handlers = dict(handlers)
        self.clock = clock
        self.started = clock()
        self.devices: dict[str, Device] = build_registry(
            instance, poll_interval=poll_interval, update_interval=update_interval
        )
        self.groups: dict[str, list[str]] = {g.group_id: list(g.devices) for g in instance.groups}
        self.cache: TTLCache[dict[str, Any]] = TTLCache(cache_ttl)
        self.changes = ChangeLog(changelog_capacity)
        self.errors: deque[dict[str, Any]] = deque(maxlen=500)
        self.counters = {"readings": 0, "errors": 0, "events": 0, "rejected": 0, "stale": 0}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self.warmed = threading.Event()
        self.warmed.set()  # until start() begins a warm-up there is nothing to wait for
        self._registered: dict[str, Registration] = {}
        # Reload what was saved without writing it back once per device; save from now on.
        self._store: RegistryStore | None = None
        for saved in store.load() if store else []:
            self.register(saved.device, handler=saved.handler)
        self._store = store

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._monitor = threading.Thread(target=self._watch, name="availability", daemon=True)
        self._monitor.start()
        self.warmed.clear()
        threading.Thread(target=self.warm_up, name="warm-up", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.changes.wake_all()

    # --- ingest ----------------------------------------------------------------------------------
    def ingest(self, items: Iterable[Observation], *, source: str = "?") -> dict[str, int]:
        """Apply a batch of observations in order; unknown devices are counted and reported."""
        accepted = rejected = 0
        now = self.clock()
        with self._lock:
            for item in items:
                device = self.devices.get(item.device_id)
                if device is None:
                    rejected += 1
                    self._record_error(item.device_id, "UNKNOWN_DEVICE",
                                       f"{source} sent data for unknown device {item.device_id!r}",
                                       "warning", now, publish=False)
                    continue
                accepted += 1
                if isinstance(item, ReadingObs):
                    self._apply_reading(device, item)
                elif isinstance(item, ErrorObs):
                    self._record_error(device.device_id, item.error_code, item.message,
                                       item.severity, item.ts)
                elif isinstance(item, EventObs):
                    self.counters["events"] += 1
                    self.changes.append({"kind": "event", "device_id": device.device_id,
                                         "ts": item.ts, "event": item.event, "data": item.data})
                elif isinstance(item, LinkObs):
                    device.link_down = None if item.up else (item.reason or "transport down")
                self._announce(device, now)
            self.counters["rejected"] += rejected
        return {"accepted": accepted, "rejected": rejected}

    def _apply_reading(self, device: Device, reading: ReadingObs) -> None:
        if device.state_ts is not None and reading.ts <= device.state_ts:
            # Older than what we hold (or the same reading again, e.g. a fresh read that the
            # handler also pushed): it must not roll the state back.
            self.counters["stale"] += 1
            return
        self.counters["readings"] += 1
        device.values = {**device.values, **reading.values}
        device.state_ts = reading.ts
        device.last_seen = reading.ts if device.last_seen is None else max(device.last_seen, reading.ts)
        state = {"device_id": device.device_id, "ts": reading.ts, "values": device.values,
                 "sampled": list(reading.values)}
        self.cache.put(device.device_id, state)
        self.changes.append({"kind": "state", **state})

    def _record_error(self, device_id: str, code: str, message: str, severity: str, ts: float,
                      *, publish: bool = True) -> None:
        self.counters["errors"] += 1
        entry = {"device_id": device_id, "error_code": code, "message": message,
                 "severity": severity, "ts": ts, "timestamp": iso(ts)}
        self.errors.append(entry)
        if publish:
            self.changes.append({"kind": "error", **entry})

    def _announce(self, device: Device, now: float) -> None:
        online = device.online(now)
        if online != device.announced:
            device.announced = online
            self.changes.append({"kind": "availability", "device_id": device.device_id,
                                 "ts": now, "online": online})

    def _watch(self) -> None:
        """Devices go offline by the clock, not by an event: look once a second."""
        while not self._stop.wait(1.0):
            now = self.clock()
            with self._lock:
                for device in self.devices.values():
                    self._announce(device, now)

    # --- registration at run time ---------------------------------------------------------------
    def register(self, request: RegisterDevice, *, handler: str | None = None) -> bool:
        """Add a device found at run time (a probe, ``hub_system``); ``False`` when it is known.

        The ``device`` change carries the device, so the bridge publishes it (availability, and
        discovery later) without a restart and without republishing every other device."""
        with self._lock:
            if request.device_id in self.devices:
                return False
            self.devices[request.device_id] = Device(
                device_id=request.device_id, name=request.name or request.device_id,
                model=request.model or request.source, sensor_type=request.sensor_type,
                source=request.source, handler=handler, enabled=True, writable=False,
                interval=request.interval, units=dict(request.units))
            now = self.clock()
            # The device travels with its change, so the bridge publishes it alone.
            self.changes.append({"kind": "device", "device_id": request.device_id, "ts": now,
                                 "action": "added",
                                 "info": self.devices[request.device_id].info(now).model_dump()})
            self._registered[request.device_id] = Registration(device=request, handler=handler)
            if self._store is not None:
                self._store.save(list(self._registered.values()))
        log.info("registered %s device %s", request.source, request.device_id)
        return True

    def seen(self, device_id: str, ts: float) -> None:
        """A sign of life without a reading (a master-control heartbeat): the device stays
        available, and no state is published."""
        with self._lock:
            device = self.devices.get(device_id)
            if device is None:
                return
            device.last_seen = ts if device.last_seen is None else max(device.last_seen, ts)
            self._announce(device, self.clock())

    def warm_up(self, *, deadline_s: float = 20.0) -> None:
        """Take the handlers' last readings, so that a restarted aggregator does not announce
        every device offline until its next reading. Handlers still starting are retried until
        the deadline."""
        try:
            self._warm_up(deadline_s)
        finally:
            self.warmed.set()

    def _warm_up(self, deadline_s: float) -> None:
        end = time.monotonic() + deadline_s
        pending = dict(self.handlers)
        while pending and not self._stop.is_set():
            for name, client in list(pending.items()):
                try:
                    sensors = client.get("/sensors", timeout=2.0)["sensors"]
                except (ServiceError, KeyError, TypeError):
                    continue
                readings = [ReadingObs.model_validate(s["reading"])
                            for s in sensors if isinstance(s, dict) and s.get("reading")]
                self.ingest(readings, source=f"{client.name} (warm-up)")
                log.info("warm-up: %d last readings from %s", len(readings), client.name)
                del pending[name]
            if time.monotonic() > end:
                break
            self._stop.wait(0.5)

    # --- queries ---------------------------------------------------------------------------------
    def device(self, device_id: str) -> Device:
        device = self.devices.get(device_id)
        if device is None:
            raise UnknownDevice(device_id)
        return device

    def device_infos(self) -> list[DeviceInfo]:
        now = self.clock()
        with self._lock:
            return [d.info(now) for d in self.devices.values()]

    def snapshot(self) -> dict[str, Any]:
        """Every device with its last state, and the change-log position they are valid at.

        Waits (a little) for the warm-up, so a bridge that resyncs right after a restart does
        not announce every device offline."""
        self.warmed.wait(SNAPSHOT_WARM_WAIT_S)
        now = self.clock()
        with self._lock:
            devices = []
            for d in self.devices.values():
                state = None
                if d.state_ts is not None:
                    state = {"kind": "state", "seq": 0, "device_id": d.device_id,
                             "ts": d.state_ts, "values": d.values, "sampled": list(d.values)}
                devices.append({"info": d.info(now).model_dump(), "state": state})
            return {"epoch": self.changes.epoch, "seq": self.changes.seq, "devices": devices,
                    "groups": self.groups}

    def cached_state(self, device_id: str) -> dict[str, Any]:
        """The device as ``/device/{id}`` shows it: from the cache while fresh, else read now."""
        device = self.device(device_id)
        hit = self.cache.get(device_id)
        if hit is not None:
            return self._device_view(device, cached=True, age=hit.age)
        return self.refresh(device_id)

    def refresh(self, device_id: str, properties: list[str] | None = None) -> dict[str, Any]:
        """A fresh read through the owning handler; it becomes state like any reading."""
        device = self.device(device_id)
        client = self._handler(device)
        params = {"properties": ",".join(properties)} if properties else None
        try:
            body = client.get(f"/sensor/{device_id}", params=params, timeout=15.0)
        except ServiceError as exc:
            if isinstance(exc.body, dict) and exc.status == 503:
                raise ReadError(str(exc.body.get("error", "READ_FAILED")),
                                str(exc.body.get("message", exc))) from exc
            raise
        reading = ReadingObs.model_validate(body["reading"])
        self.ingest([reading], source=f"{device.handler}-handler")
        return self._device_view(device, cached=False, age=0.0)

    def _device_view(self, device: Device, *, cached: bool, age: float) -> dict[str, Any]:
        now = self.clock()
        with self._lock:
            return {**device.info(now).model_dump(), "state": dict(device.values),
                    "timestamp": iso(device.state_ts) if device.state_ts else None,
                    "cached": cached, "cache_age": round(age, 3)}

    def _handler(self, device: Device) -> RestClient:
        client = self.handlers.get(device.handler or "")
        if client is None:
            raise ServiceError(f"no handler serves device {device.device_id!r}")
        return client

    # --- commands --------------------------------------------------------------------------------
    def command(self, device_id: str, request: CommandRequest) -> CommandResult:
        device = self.device(device_id)
        if not device.writable:
            return CommandResult(
                status="rejected",
                error=f"device {device_id!r} is read-only ({device.model}); it takes no commands",
            )
        try:
            body = self._handler(device).post(
                f"/sensor/{device_id}/command", request.model_dump(),
                timeout=request.timeout_s + 5.0,
            )
        except ServiceError as exc:
            if isinstance(exc.body, dict) and "status" in exc.body:
                return CommandResult.model_validate(exc.body)
            return CommandResult(status="error", error=str(exc))
        return CommandResult.model_validate(body)

    # --- health ----------------------------------------------------------------------------------
    def handler_health(self) -> dict[str, str]:
        result: dict[str, str] = {}
        for client in self.handlers.values():
            try:
                client.get("/health", timeout=1.0)
                result[client.name] = "running"
            except ServiceError:
                result[client.name] = "down"
        return result

    def counts(self) -> dict[str, int]:
        now = self.clock()
        with self._lock:
            online = sum(1 for d in self.devices.values() if d.online(now))
        return {"online": online, "offline": len(self.devices) - online}
