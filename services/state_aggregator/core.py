"""The aggregator's logic, free of Flask: it takes observations in batches from the handlers,
keeps the registry, writes the change log, judges availability, and routes commands and fresh
reads to the handler that owns each device.

``/device/{id}`` serves a device's stored state while it is younger than ``cache_ttl`` (each
device's ``cached_at``) and reads the device afresh otherwise; there is no second copy."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from pydantic import ValidationError

from shared.errors import ReadError, ServiceError, UnknownDevice
from shared.instance import Instance
from shared.models import (
    AvailabilityChange,
    CommandChange,
    CommandRequest,
    CommandResult,
    DeviceChange,
    DeviceInfo,
    DeviceSnapshot,
    ErrorChange,
    ErrorObs,
    EventChange,
    EventObs,
    LinkObs,
    Observation,
    ReadingObs,
    ReadingsPage,
    RegisterDevice,
    Severity,
    Snapshot,
    StateChange,
    to_json,
    trusted,
)
from shared.processes import FRESH_READ_TIMEOUT_S, handler_wait_s
from shared.rest import RestClient
from shared.timeutil import iso

from .changes import ChangeLog
from .outbox.service import Outbox
from .persist import Registration, RegistryStore
from .registry import Device, InstanceRegistry, RegistryRefusal, refusal, shape

log = logging.getLogger(__name__)

SNAPSHOT_WARM_WAIT_S = 5.0
HANDLER_HEALTH_TIMEOUT_S = 1.0
BATCH_IDS_REMEMBERED = 10_000  # a handler resends its one unanswered batch, not thousands
WARM_UP_PAGE = 1_000  # sensors per page of a handler's last readings


def _updated(seq: int, *, device_id: str, ts: float, info: DeviceInfo) -> DeviceChange:
    return DeviceChange(seq=seq, device_id=device_id, ts=ts, action="updated", info=info)


class Aggregator:
    def __init__(
        self,
        instance: Instance | InstanceRegistry,
        *,
        handlers: Mapping[str, RestClient],
        cache_ttl: float,
        poll_interval: float,
        update_interval: float | None = None,
        clock: Callable[[], float] = time.time,
        changelog_capacity: int = 100_000,
        changelog_max_bytes: int = 16 * 2**20,
        store: RegistryStore | None = None,
        max_devices: int = 1000,
        outbox: Outbox | None = None,
    ) -> None:
        # The instance file's sensor models (about 2.3 KB a sensor) are turned into the
        # registry and left to the collector.
        registry = instance if isinstance(instance, InstanceRegistry) else InstanceRegistry.of(
            instance, poll_interval=poll_interval, update_interval=update_interval)
        self.instance_id = registry.instance_id
        self.handlers = dict(handlers)
        self.clock = clock
        self.started = clock()
        self.devices: dict[str, Device] = registry.devices
        self.groups: dict[str, list[str]] = registry.groups
        self.cache_ttl = cache_ttl
        self.cache_counters = {"hits": 0, "misses": 0, "expired": 0}
        self.outbox = outbox
        self.changes = ChangeLog(changelog_capacity, changelog_max_bytes, outbox=outbox)
        self.errors: deque[dict[str, Any]] = deque(maxlen=500)
        self.counters = {"readings": 0, "errors": 0, "events": 0, "rejected": 0, "stale": 0}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self.warmed = threading.Event()
        self.warmed.set()  # until start() begins a warm-up there is nothing to wait for
        self._registered: dict[str, Registration] = {}
        self.max_devices = max_devices  # MAX_DEVICES: run-time registrations from outside
        # The readings history's hook: every batch's accepted readings, older ones too (a
        # backfill after an offline period is history, not state); it never blocks.
        self.history_sink: Callable[[list[ReadingObs]], None] | None = None
        # Reload what was saved without writing it back once per device; save from now on.
        self._store: RegistryStore | None = None
        # Not announced: before a restart the bridge had them, and the log goes on (a durable
        # one keeps its epoch) or starts anew (the bridge then loads the snapshot, which holds
        # them). An "added" change made now, before the durable log's states are restored,
        # would say "offline" for a device that is online.
        for saved in store.load() if store else []:
            self.register(saved.device, handler=saved.handler, announce=False)
        self._store = store
        # Handler batches already applied (id -> accepted, rejected): one resent after it was
        # stored but before its answer arrived (a restart between the two) is not applied twice.
        self._batches: OrderedDict[str, tuple[int, int]] = OrderedDict()
        if outbox is not None:
            self._restore(outbox)

    def _restore(self, outbox: Outbox) -> None:
        """What the durable log kept: each device's last state (its per-device ``seq`` goes on
        from there, and a reading resent by its handler is recognised as held) and the newest
        handler batch ids."""
        for state in outbox.states():
            device = self.devices.get(state.device_id)
            if device is not None:
                device.keep(state)
        for batch_id, accepted, rejected in outbox.batch_answers(BATCH_IDS_REMEMBERED):
            self._batches[batch_id] = (accepted, rejected)

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
    def ingest(self, items: Iterable[Observation], *, source: str = "?",
               batch_id: str | None = None) -> dict[str, Any]:
        """Apply a batch of observations in order; unknown devices are counted and reported.

        With a durable log its changes are on disk when this returns (``durable``); a batch
        whose ``batch_id`` was applied before is answered as it was, and not applied again."""
        stored: list[ReadingObs] = []
        now = self.clock()
        with self._lock:
            if batch_id is not None and (known := self._batches.get(batch_id)) is not None:
                return {"accepted": known[0], "rejected": known[1], "duplicate": True,
                        "durable": self.changes.durable}
            with self.changes.batch() as batch:
                accepted, rejected = self._apply(items, source, now, stored)
                if batch_id is not None:
                    batch.key = (batch_id, accepted, rejected)
            if batch_id is not None:
                self._batches[batch_id] = (accepted, rejected)
                if len(self._batches) > BATCH_IDS_REMEMBERED:
                    self._batches.popitem(last=False)
        if stored and self.history_sink is not None:
            self.history_sink(stored)
        return {"accepted": accepted, "rejected": rejected, "durable": batch.durable}

    def _apply(self, items: Iterable[Observation], source: str, now: float,
               stored: list[ReadingObs]) -> tuple[int, int]:
        accepted = rejected = 0
        for item in items:
            device = self.devices.get(item.device_id)
            refused = refusal(device, item.device_id, source)
            if refused is not None or device is None:  # refusal() refuses an unknown one
                rejected += 1
                code, message = refused or ("UNKNOWN_DEVICE", item.device_id)
                self._record_error(item.device_id, code, message, "warning", now,
                                   publish=False)
                continue
            accepted += 1
            if isinstance(item, ReadingObs):
                self._apply_reading(device, item, now)
                stored.append(item)
            elif isinstance(item, ErrorObs):
                self._record_error(device.device_id, item.error_code, item.message,
                                   item.severity, item.ts)
            elif isinstance(item, EventObs):
                self._record_event(item)
            elif isinstance(item, LinkObs):
                device.link_down = None if item.up else (item.reason or "transport down")
            self._announce(device, now)
        self.counters["rejected"] += rejected
        return accepted, rejected

    def _apply_reading(self, device: Device, reading: ReadingObs, now: float) -> None:
        last_ts = device.state_ts
        if last_ts is not None and reading.ts <= last_ts:
            # Older than what we hold (or the same reading again): it must not roll the state
            # back.
            self.counters["stale"] += 1
            return
        self.counters["readings"] += 1
        values = reading.values
        sampled = tuple(values)
        names = device.names
        if sampled == names:  # every property again, the usual reading: nothing to merge
            sampled = names
        elif last_ts is None:
            sampled = names = shape(sampled)
        else:
            values = {**device.values, **values}
            sampled, names = shape(sampled), shape(tuple(values))
        device_seq = device.device_seq + 1
        # trusted: every part comes from a validated reading (one state per reading: measured)
        change = self.changes.append(lambda seq: trusted(
            StateChange, seq=seq, device_seq=device_seq, device_id=device.device_id,
            ts=reading.ts, values=values, sampled=list(sampled)))
        device.hold(change, names, sampled)  # as a few fields: the change log has its JSON
        device.cached_at = now
        device.last_seen = reading.ts if device.last_seen is None else max(device.last_seen, reading.ts)

    def _record_event(self, event: EventObs) -> None:
        self.counters["events"] += 1
        self.changes.append(lambda seq: EventChange(
            seq=seq, device_id=event.device_id, ts=event.ts, event=event.event, data=event.data))

    def _record_error(self, device_id: str, code: str, message: str, severity: Severity,
                      ts: float, *, publish: bool = True) -> None:
        self.counters["errors"] += 1
        self.errors.append({"device_id": device_id, "error_code": code, "message": message,
                            "severity": severity, "ts": ts, "timestamp": iso(ts)})
        if publish:
            self.changes.append(lambda seq: ErrorChange(
                seq=seq, device_id=device_id, ts=ts, error_code=code, message=message,
                severity=severity))

    def _announce(self, device: Device, now: float) -> None:
        online = device.online(now)
        if online != device.announced:
            device.announced = online
            self.changes.append(lambda seq: AvailabilityChange(
                seq=seq, device_id=device.device_id, ts=now, online=online))

    def _watch(self) -> None:
        """Devices go offline by the clock, not by an event: look once a second."""
        while not self._stop.wait(1.0):
            now = self.clock()
            with self._lock, self.changes.batch():
                for device in self.devices.values():
                    self._announce(device, now)

    # --- registration at run time ---------------------------------------------------------------
    def register(self, request: RegisterDevice, *, handler: str | None = None,
                 capped: bool = False, announce: bool = True) -> bool:
        """Add a device found at run time (a probe, ``hub_system``); ``False`` when it is known.
        ``RegistryRefusal`` when the id belongs to a device of another source, or, when
        ``capped`` (a registration from outside this process), past ``max_devices``.

        The ``device`` change carries the device, so the bridge publishes it (availability, and
        discovery later) without a restart and without republishing every other device."""
        with self._lock:
            known = self.devices.get(request.device_id)
            if known is not None:
                if known.source != request.source:
                    raise RegistryRefusal("device_conflict", (
                        f"{request.device_id!r} is a {known.source} device of this hub; a "
                        f"{request.source} device may not take its id"))
                return False
            if capped and len(self._registered) >= self.max_devices:
                raise RegistryRefusal("device_limit", (
                    f"this hub already has {len(self._registered)} devices registered at run time "
                    f"(MAX_DEVICES={self.max_devices}); remove stale probes "
                    f"(DELETE /api/probes/{{id}}) or raise MAX_DEVICES"))
            self.devices[request.device_id] = Device(
                device_id=request.device_id, name=request.name or request.device_id,
                model=request.model or request.source, sensor_type=request.sensor_type,
                source=request.source, handler=handler, enabled=True, writable=False,
                interval=request.interval, units=dict(request.units))
            now = self.clock()
            # The device travels with its change, so the bridge publishes it alone.
            info = self.devices[request.device_id].info(now)
            if announce:
                self.changes.append(lambda seq: DeviceChange(
                    seq=seq, device_id=request.device_id, ts=now, action="added", info=info))
            self._registered[request.device_id] = Registration(device=request, handler=handler)
            if self._store is not None:
                self._store.save(list(self._registered.values()))
        log.info("registered %s device %s", request.source, request.device_id)
        return True

    def update_devices(self, requests: list[RegisterDevice]) -> int:
        """What run-time devices say of themselves changed (a master-control sensor's config
        maps its readings to other units, sets another check-in interval): update those of the
        same source, each with an ``updated`` change that carries it, so the bridge republishes
        its discovery with the new units. Unknown devices and other sources' are left alone;
        returns how many changed. One save for all of them."""
        updated = 0
        with self._lock:
            now = self.clock()
            for request in requests:
                device = self.devices.get(request.device_id)
                if device is None or device.source != request.source:
                    continue
                fields = {"name": request.name or request.device_id,
                          "model": request.model or request.source,
                          "sensor_type": request.sensor_type, "interval": request.interval,
                          "units": dict(request.units)}
                if all(getattr(device, k) == v for k, v in fields.items()):
                    continue
                for key, value in fields.items():
                    setattr(device, key, value)
                registration = self._registered.get(request.device_id)
                if registration is not None:
                    self._registered[request.device_id] = registration.model_copy(
                        update={"device": request})
                self.changes.append(partial(_updated, device_id=request.device_id, ts=now,
                                            info=device.info(now)))
                updated += 1
            if updated and self._store is not None:
                self._store.save(list(self._registered.values()))
        if updated:
            log.info("%d run-time device(s) updated", updated)
        return updated

    def seen(self, device_id: str, ts: float) -> None:
        """A sign of life without a reading (a master-control heartbeat): the device stays
        available, and no state is published."""
        with self._lock:
            device = self.devices.get(device_id)
            if device is None:
                return
            device.last_seen = ts if device.last_seen is None else max(device.last_seen, ts)
            self._announce(device, self.clock())

    def unregister(self, device_id: str, *, source: str = "probe") -> None:
        """Remove a probe registered at run time (a stale auto-registered one); devices of the
        instance file and the hub's own stay. ``UnknownDevice``, or ``RegistryRefusal``."""
        with self._lock:
            device = self.device(device_id)
            # ``source="sensor"``: master control unregistering one of its sensors; the probe
            # API's removal can never take another kind of device.
            if device_id not in self._registered or device.source != source:
                where = "the instance file" if device_id not in self._registered else "the hub"
                raise RegistryRefusal("not_removable", (
                    f"{device_id!r} is a {device.source} device from {where}; only probes "
                    "registered at run time can be removed"))
            del self.devices[device_id]
            del self._registered[device_id]
            now = self.clock()
            self.changes.append(lambda seq: DeviceChange(
                seq=seq, device_id=device_id, ts=now, action="removed"))
            if self._store is not None:
                self._store.save(list(self._registered.values()))
        log.info("removed %s device %s", device.source, device_id)

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
        pending = {name: 0 for name in self.handlers}  # each handler's next page (its offset)
        while pending and not self._stop.is_set():
            for name in list(pending):
                client = self.handlers[name]
                try:
                    offset = self._warm_up_from(client, pending[name])
                except ServiceError:
                    continue  # still starting: again, from the page it stopped at
                if offset is None:
                    del pending[name]
                else:
                    pending[name] = offset
            if time.monotonic() > end:
                break
            self._stop.wait(0.5)

    def _warm_up_from(self, client: RestClient, offset: int) -> int | None:
        """Take a handler's last readings a page at a time from ``offset`` (``GET /readings``),
        each page applied before the next is asked for: ``/sensors`` of 10,000 sensors parsed
        at once was most of the aggregator's peak, which the process keeps. ``None`` when all
        were taken; the offset to go on from when a page could not be had (``ServiceError``)."""
        taken = 0
        while True:
            try:
                body = client.get_bytes("/readings", params={"offset": offset,
                                                             "limit": WARM_UP_PAGE}, timeout=2.0)
            except ServiceError as exc:
                if exc.status != 404 or offset:
                    raise
                self._warm_up_from_sensors(client)  # a handler older than the route
                return None
            try:
                page = ReadingsPage.model_validate_json(body)
            except ValidationError as exc:
                raise ServiceError(f"{client.name}'s /readings is not a page of readings: "
                                   f"{exc.errors()[0]['msg']}") from exc
            self.ingest(page.readings, source=f"{client.name} (warm-up)")
            taken += len(page.readings)
            if page.next is None or page.next <= offset:
                log.info("warm-up: %d last readings from %s", taken, client.name)
                return None
            offset = page.next

    def _warm_up_from_sensors(self, client: RestClient) -> None:
        """The warm-up from a handler without ``/readings``: every sensor's view at once."""
        try:
            sensors = client.get("/sensors", timeout=2.0)["sensors"]
        except (KeyError, TypeError) as exc:
            raise ServiceError(f"{client.name}'s /sensors has no sensors list") from exc
        readings = [ReadingObs.model_validate(s["reading"])
                    for s in sensors if isinstance(s, dict) and s.get("reading")]
        self.ingest(readings, source=f"{client.name} (warm-up)")
        log.info("warm-up: %d last readings from %s (/sensors)", len(readings), client.name)

    # --- queries ---------------------------------------------------------------------------------
    def device(self, device_id: str) -> Device:
        device = self.devices.get(device_id)
        if device is None:
            raise UnknownDevice(device_id)
        return device

    def source_of(self, device_id: str) -> str | None:
        """The source of a known device (``None`` when unknown): master control checks that a
        sensor's id is not another device's before it registers it."""
        device = self.devices.get(device_id)
        return device.source if device is not None else None

    def device_infos(self) -> list[DeviceInfo]:
        now = self.clock()
        with self._lock:
            return [d.info(now) for d in self.devices.values()]

    def snapshot(self) -> Snapshot:
        """Every device with its last state, and the change-log position they are valid at.

        Waits (a little) for the warm-up, so a bridge that resyncs right after a restart does
        not announce every device offline. ``asked_seq`` says where the log was when it was
        asked for, so what came in during the wait is not only folded into it."""
        asked = self.changes.seq
        self.warmed.wait(SNAPSHOT_WARM_WAIT_S)
        now = self.clock()
        with self._lock:
            devices = [DeviceSnapshot(info=d.info(now), state=d.state)
                       for d in self.devices.values()]
            return Snapshot(epoch=self.changes.epoch, seq=self.changes.seq, devices=devices,
                            groups=self.groups, asked_seq=asked)

    def snapshot_json(self, *, chunk: int = 500) -> bytes:
        """``snapshot()`` as its JSON (what ``/snapshot`` sends), the devices encoded ``chunk``
        at a time: the models of 10,000 devices at once were a peak of tens of MB, which a
        Python process keeps after it has passed."""
        asked = self.changes.seq
        self.warmed.wait(SNAPSHOT_WARM_WAIT_S)
        now = self.clock()
        parts: list[bytes] = []
        with self._lock:
            devices = list(self.devices.values())
            for i in range(0, len(devices), chunk):
                encoded = to_json([DeviceSnapshot(info=d.info(now), state=d.state)
                                   for d in devices[i:i + chunk]])
                parts.append(encoded[1:-1])  # without its brackets; a slice is a copy
            head = to_json({"epoch": self.changes.epoch, "seq": self.changes.seq,
                            "groups": self.groups, "asked_seq": asked})
        return b"".join((head[:-1], b',"devices":[', b",".join(parts), b"]}"))

    def cached_state(self, device_id: str) -> dict[str, Any]:
        """The device as ``/device/{id}`` shows it: its stored state while younger than
        ``cache_ttl``, else a fresh read."""
        device = self.device(device_id)
        now = self.clock()
        with self._lock:
            stored = device.cached_at if device.state_ts is not None else None
            age = None if stored is None else now - stored
            if age is not None and age < self.cache_ttl:
                self.cache_counters["hits"] += 1
                return self._device_view(device, now, cached=True, age=age)
            self.cache_counters["misses"] += 1
            if age is not None:
                self.cache_counters["expired"] += 1
        return self.refresh(device_id)

    def cache_stats(self) -> dict[str, float | int]:
        """``/cache/stats``: how often ``/device/{id}`` was served from the stored state."""
        now = self.clock()
        with self._lock:
            stored = [d.cached_at for d in self.devices.values()
                      if d.state_ts is not None and d.cached_at is not None]
            hits, misses = self.cache_counters["hits"], self.cache_counters["misses"]
            return {"ttl": self.cache_ttl, "size": len(stored),
                    "live": sum(1 for t in stored if now - t < self.cache_ttl),
                    **self.cache_counters,
                    "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else 0.0}

    def cache_clear(self) -> int:
        """Make every stored state stale, so the next ``/device/{id}`` reads the device."""
        with self._lock:
            stored = [d for d in self.devices.values() if d.cached_at is not None]
            for d in stored:
                d.cached_at = None
            return len(stored)

    def refresh(self, device_id: str, properties: list[str] | None = None) -> dict[str, Any]:
        """A fresh read through the owning handler. The handler answers with the reading and
        does not push it too, so it becomes state once, here, like any reading."""
        device = self.device(device_id)
        client = self._handler(device)
        params = {"properties": ",".join(properties)} if properties else None
        try:
            body = client.get(f"/sensor/{device_id}", params=params,
                              timeout=handler_wait_s(FRESH_READ_TIMEOUT_S))
        except ServiceError as exc:
            if isinstance(exc.body, dict) and exc.status == 503:
                raise ReadError(str(exc.body.get("error", "READ_FAILED")),
                                str(exc.body.get("message", exc))) from exc
            raise
        try:
            reading = ReadingObs.model_validate(body["reading"])
        except (ValidationError, KeyError, TypeError) as exc:
            raise ServiceError(f"{client.name} answered a fresh read of {device_id!r} with no "
                               f"valid reading: {exc}") from exc
        self.ingest([reading], source=client.name)
        return self._device_view(device, self.clock(), cached=False, age=0.0)

    def _device_view(self, device: Device, now: float, *, cached: bool,
                     age: float) -> dict[str, Any]:
        with self._lock:
            ts = device.state_ts
            return {**device.info(now).model_dump(),
                    "state": device.values,
                    "timestamp": None if ts is None else iso(ts),
                    "device_seq": None if ts is None else device.device_seq,
                    "cached": cached, "cache_age": round(age, 3)}

    def _handler(self, device: Device) -> RestClient:
        client = self.handlers.get(device.handler or "")
        if client is None:
            raise ServiceError(f"no handler serves device {device.device_id!r}")
        return client

    # --- commands --------------------------------------------------------------------------------
    def command(self, device_id: str, request: CommandRequest) -> CommandResult:
        """Run a command on the device's handler; its result goes into the change log too, so
        every watcher sees it, whichever client sent the command."""
        device = self.device(device_id)
        result = self._run_command(device, request)
        self.changes.append(lambda seq: CommandChange(
            seq=seq, device_id=device_id, ts=self.clock(), cmd_id=request.cmd_id,
            values=request.values, status=result.status, result=result.result,
            error=result.error))
        return result

    def _run_command(self, device: Device, request: CommandRequest) -> CommandResult:
        if not device.writable:
            return CommandResult(
                status="rejected",
                error=f"device {device.device_id!r} is read-only ({device.model}); it takes no "
                      "commands",
            )
        try:
            body = self._handler(device).post(
                f"/sensor/{device.device_id}/command", request.model_dump(),
                timeout=handler_wait_s(request.timeout_s),
            )
        except ServiceError as exc:
            if isinstance(exc.body, dict) and "status" in exc.body:
                return CommandResult.model_validate(exc.body)
            return CommandResult(status="error", error=str(exc))
        return CommandResult.model_validate(body)

    # --- health ----------------------------------------------------------------------------------
    def handler_health(self) -> dict[str, str]:
        """Each handler's ``/health``, asked at once: a handler that does not answer costs
        ``HANDLER_HEALTH_TIMEOUT_S``, not that times the handlers, and this ``/health`` answers
        within it (the programs that wait for the aggregator ask it with a longer timeout)."""
        def ask(client: RestClient) -> str:
            try:
                client.get("/health", timeout=HANDLER_HEALTH_TIMEOUT_S)
                return "running"
            except ServiceError:
                return "down"

        clients = list(self.handlers.values())
        if not clients:
            return {}
        with ThreadPoolExecutor(max_workers=len(clients), thread_name_prefix="health") as pool:
            return dict(zip((c.name for c in clients), pool.map(ask, clients), strict=True))

    def counts(self) -> dict[str, int]:
        now = self.clock()
        with self._lock:
            online = sum(1 for d in self.devices.values() if d.online(now))
        return {"online": online, "offline": len(self.devices) - online}
