"""Master control, sensor side (no Flask, no MQTT): register, config, heartbeat, command acks and
data uploads, the same for both transports. A sensor is a device of the aggregator (source
``sensor``, ``device_id = sensor_id``): its data becomes device state through the aggregator's
normal ingest, its check-ins keep the device available, and its status transitions become events.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from shared.master_models import CommandAck, DataUpload, Heartbeat, SensorRegister, SensorStatus
from shared.models import ErrorObs, EventObs, LinkObs, Observation, ReadingObs, RegisterDevice
from shared.timeutil import in_range, obs_time_problem, parse_iso

from . import resolve
from .commands import CommandQueue
from .configs import ConfigEngine, Version
from .db import Database
from .errors import Conflict, Invalid, unknown_sensor
from .feed import Feed

log = logging.getLogger(__name__)

SEEN_KEYS_KEEP_S = 7 * 86400  # how long a replayed reading is recognised


class DeviceSink(Protocol):
    """What master control needs of the aggregator (``core.Aggregator`` is one)."""

    def register(self, request: RegisterDevice, *, handler: str | None = None) -> bool: ...

    def ingest(self, items: Iterable[Observation], *, source: str = "?") -> dict[str, int]: ...

    def seen(self, device_id: str, ts: float) -> None: ...

    def unregister(self, device_id: str, *, source: str = "probe") -> None: ...

    def source_of(self, device_id: str) -> str | None: ...

    def update_devices(self, requests: list[RegisterDevice]) -> int: ...


@dataclass(frozen=True, slots=True)
class MasterOptions:
    default_interval: float = 60.0  # check-in interval when no config or sensor says otherwise
    max_open_commands: int = 100
    command_ttl: float = 3600.0
    api_base: str = "/api/sensor-master"


@dataclass(frozen=True, slots=True)
class ConfigAnswer:
    not_modified: bool
    body: dict[str, Any]


ConfigListener = Callable[[list[Version]], None]


class MasterService:
    def __init__(self, db: Database, *, sink: DeviceSink | None = None,
                 clock: Callable[[], float] = time.time,
                 options: MasterOptions | None = None) -> None:
        self.db = db
        self.sink = sink
        self.clock = clock
        self.options = options or MasterOptions()
        self.configs = ConfigEngine(default_interval=self.options.default_interval)
        self.queue = CommandQueue(max_open=self.options.max_open_commands,
                                  default_ttl=self.options.command_ttl)
        self.listeners: list[ConfigListener] = []
        self.feed = Feed()
        self._announced: dict[str, SensorStatus] = {}
        self._announce_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned = 0.0

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self, *, tick_s: float = 1.0) -> None:
        """Expire what passed while the hub was down, make every sensor a device again, and
        judge statuses from now on."""
        self.tick()
        with self.db.read() as conn:
            rows = conn.execute("SELECT * FROM sensors").fetchall()
            docs = {r["sensor_id"]: latest.document for r in rows
                    if (latest := self.configs.latest(conn, r["sensor_id"])) is not None}
        for row in rows:
            self._register_device(row, docs.get(row["sensor_id"]))
            if row["last_check_in"] is not None and self.sink is not None:
                self.sink.seen(row["sensor_id"], row["last_check_in"])
        self._thread = threading.Thread(target=self._run, args=(tick_s,), name="master-control",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.feed.wake_all()

    def _run(self, tick_s: float) -> None:
        while not self._stop.wait(tick_s):
            try:
                self.tick()
            except Exception:  # a bad tick must not end status tracking for good
                log.exception("master control tick failed")

    def tick(self) -> dict[str, int]:
        """Expire commands and announce status transitions; called every second."""
        now = self.clock()
        with self.db.tx() as conn:
            expired = self.queue.expire(conn, now)
            if now - self._pruned > 3600:
                conn.execute("DELETE FROM readings_seen WHERE seen_at < ?", (now - SEEN_KEYS_KEEP_S,))
                self._pruned = now
            rows = conn.execute("SELECT sensor_id, last_check_in, effective_interval "
                                "FROM sensors").fetchall()
        if expired:
            log.info("%d master control command(s) expired", expired)
        for row in rows:
            interval = row["effective_interval"] or self.options.default_interval
            status = resolve.status(row["last_check_in"], interval, now)
            if status == "offline" and self._announced.get(row["sensor_id"]) == "online":
                # A late tick (a busy machine, a short interval) must not skip a step: a sensor
                # that fell silent was stale before it was offline.
                self._announce(row["sensor_id"], "stale", now)
            self._announce(row["sensor_id"], status, now)
        return {"expired": expired, "sensors": len(rows)}

    def _announce(self, sensor_id: str, status: SensorStatus, now: float) -> None:
        with self._announce_lock:
            previous = self._announced.get(sensor_id)
            self._announced[sensor_id] = status
        # The first look after a start only learns the status: a restart is not a transition.
        if previous is None or previous == status or self.sink is None:
            return
        log.info("sensor %s: %s -> %s", sensor_id, previous, status)
        items: list[Observation] = [EventObs(device_id=sensor_id, ts=now, event="status_changed",
                                             data={"status": status, "previous": previous})]
        # Master control's status decides availability: offline at 3 intervals, without the
        # aggregator's 30 s floor for devices in general, and back online at the next check-in.
        if status == "offline":
            items.append(LinkObs(device_id=sensor_id, ts=now, up=False,
                                 reason="no check-in for 3 check-in intervals"))
        elif previous == "offline":
            items.append(LinkObs(device_id=sensor_id, ts=now, up=True))
        self.sink.ingest(items, source="master-control")

    def forget(self, sensor_id: str) -> None:
        with self._announce_lock:
            self._announced.pop(sensor_id, None)

    def notify(self, changed: list[Version]) -> None:
        """Tell the feed and the listeners (the MQTT side) which sensors have a new config, and
        the registry what their devices now say of themselves (a mapping's unit, the check-in
        interval)."""
        for version in changed:
            self.feed.append("config", version.sensor_id, config_version=version.version,
                             config_hash=version.config_hash)
        self._refresh_devices(changed)
        for listener in self.listeners:
            try:
                listener(changed)
            except Exception:
                log.exception("config change listener failed")

    # --- helpers ---------------------------------------------------------------------------------
    def config_endpoint(self, sensor_id: str) -> str:
        return f"{self.options.api_base}/config/{sensor_id}"

    @staticmethod
    def sensor_row(conn: sqlite3.Connection, sensor_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute("SELECT * FROM sensors WHERE sensor_id = ?",
                                               (sensor_id,)).fetchone()
        if row is None:
            raise unknown_sensor(sensor_id)
        return row

    def _check_in(self, conn: sqlite3.Connection, sensor_id: str, now: float) -> None:
        conn.execute("UPDATE sensors SET last_check_in = ?, first_check_in = "
                     "COALESCE(first_check_in, ?) WHERE sensor_id = ?", (now, now, sensor_id))

    def _after_check_in(self, sensor_id: str, now: float) -> None:
        if self.sink is not None:
            self.sink.seen(sensor_id, now)
        self._announce(sensor_id, "online", now)

    def _current(self, conn: sqlite3.Connection, sensor_id: str, now: float) -> Version:
        latest = self.configs.latest(conn, sensor_id)
        if latest is None:  # a sensor stored before it was ever resolved
            self.configs.recompute(conn, "first look", now, [sensor_id])
            latest = self.configs.latest(conn, sensor_id)
        assert latest is not None
        return latest

    def _device(self, row: sqlite3.Row, doc: dict[str, Any] | None) -> RegisterDevice:
        """The sensor as a device of the registry: its units come from its config's mappings."""
        return RegisterDevice(
            device_id=row["sensor_id"], name=row["sensor_name"] or row["sensor_id"],
            model=row["hardware_info"] or "master-controlled sensor",
            sensor_type=row["sensor_type"], source="sensor",
            interval=row["effective_interval"] or self.options.default_interval,
            units=resolve.units(((doc or {}).get("config") or {}).get("sensor_mappings")))

    def _register_device(self, row: sqlite3.Row, doc: dict[str, Any] | None = None) -> None:
        if self.sink is None or self.sink.source_of(row["sensor_id"]) == "probe":
            return  # a probe that phones home is already a device: its probe device serves
        self.sink.register(self._device(row, doc))

    def _refresh_devices(self, changed: list[Version]) -> None:
        """One registry update for every sensor whose new config changes its device (a template
        edit for a type of 1,000 sensors is one call, one save)."""
        if self.sink is None or not changed:
            return
        docs = {v.sensor_id: v.document for v in changed}
        with self.db.read() as conn:
            rows = []
            ids = list(docs)
            for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters
                chunk = ids[start:start + 500]
                rows += conn.execute(
                    f"SELECT * FROM sensors WHERE sensor_id IN "  # noqa: S608
                    f"({','.join('?' * len(chunk))})", chunk).fetchall()
        self.sink.update_devices([self._device(row, docs[row["sensor_id"]]) for row in rows])

    @staticmethod
    def assigned_master(conn: sqlite3.Connection, latest: Version) -> tuple[str | None, int | None]:
        """The winning template's master when it is enabled, else the primary enabled master."""
        rows = conn.execute("SELECT m.id, m.name FROM masters m LEFT JOIN templates t "
                            "ON t.master_id = m.id AND t.id = ? WHERE m.enabled "
                            "ORDER BY t.id IS NULL, m.priority, m.id LIMIT 1",
                            (latest.template_id,)).fetchone()
        return (rows["name"], rows["id"]) if rows else (None, None)

    # --- sensor side -----------------------------------------------------------------------------
    def register(self, body: SensorRegister) -> dict[str, Any]:
        """Idempotent: registering again updates what the sensor says of itself and keeps its
        history, check-ins, overrides and commands."""
        now = self.clock()
        taken = self.sink.source_of(body.sensor_id) if self.sink is not None else None
        # A probe is the same board phoning home (issue 10's firmware speaks both): master
        # control manages it and its probe device stays. Any other device's id is not free.
        if taken not in (None, "sensor", "probe"):
            raise Conflict("device_conflict", f"sensor_id: {body.sensor_id!r} is a {taken} device "
                                              "of this hub; a sensor may not take its id")
        fields = (body.sensor_name, body.sensor_type, body.hardware_info, body.firmware_version,
                  body.ip_address, body.mac_address, resolve.canonical_json(body.capabilities))
        with self.db.tx() as conn:
            conn.execute(
                "INSERT INTO sensors (sensor_id, sensor_name, sensor_type, hardware_info, "
                "firmware_version, ip_address, mac_address, capabilities, registered_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(sensor_id) DO UPDATE SET "
                "sensor_name = excluded.sensor_name, sensor_type = excluded.sensor_type, "
                "hardware_info = excluded.hardware_info, firmware_version = "
                "excluded.firmware_version, ip_address = excluded.ip_address, mac_address = "
                "excluded.mac_address, capabilities = excluded.capabilities",
                (body.sensor_id, *fields, now))
            changed = self.configs.recompute(conn, "registered", now, [body.sensor_id])
            latest = self._current(conn, body.sensor_id, now)
            name, master_id = self.assigned_master(conn, latest)
            commands = self.queue.deliver(conn, body.sensor_id, now)
            row = self.sensor_row(conn, body.sensor_id)
        self._register_device(row, latest.document)
        self.notify(changed)
        doc = latest.document
        return {"status": "registered", "sensor_id": body.sensor_id, "assigned_master": name,
                "master_id": master_id, "has_config": doc["config_available"],
                "check_in_interval": doc["check_in_interval"],
                "config_endpoint": self.config_endpoint(body.sensor_id),
                "config_hash": latest.config_hash, "config_version": latest.version,
                "masters": doc["masters"], "commands": commands}

    def config(self, sensor_id: str, *, version: int | None = None,
               if_none_match: str | None = None) -> ConfigAnswer:
        """The sensor's config (latest, or ``version``); ``not_modified`` when it already has it."""
        now = self.clock()
        with self.db.tx() as conn:
            row = self.sensor_row(conn, sensor_id)
            self._check_in(conn, sensor_id, now)
            wanted = (self.configs.version(conn, sensor_id, version) if version is not None
                      else self._current(conn, sensor_id, now))
            if if_none_match is not None and wanted.config_hash in _etags(if_none_match):
                if version is None:
                    conn.execute("UPDATE sensors SET applied_hash = ? WHERE sensor_id = ?",
                                 (wanted.config_hash, sensor_id))
                answer = ConfigAnswer(True, {"config_hash": wanted.config_hash,
                                             "config_version": wanted.version})
            else:
                commands = self.queue.deliver(conn, sensor_id, now)
                body = {"config_changed": wanted.config_hash != row["applied_hash"],
                        "config_hash": wanted.config_hash, "config_version": wanted.version,
                        **wanted.document, "commands": commands}
                if version is None:  # what it fetched is what it runs from now on
                    conn.execute("UPDATE sensors SET applied_hash = ? WHERE sensor_id = ?",
                                 (wanted.config_hash, sensor_id))
                answer = ConfigAnswer(False, body)
        self._after_check_in(sensor_id, now)
        return answer

    def heartbeat(self, body: Heartbeat, *, include_config: bool = False) -> dict[str, Any]:
        """``include_config``: an out-of-sync answer carries the config message too (the MQTT
        side republishes it without a second request)."""
        now = self.clock()
        with self.db.tx() as conn:
            row = self.sensor_row(conn, body.sensor_id)
            self._check_in(conn, body.sensor_id, now)
            applied = body.config_hash or row["applied_hash"]
            conn.execute("UPDATE sensors SET metrics = ?, applied_hash = ? WHERE sensor_id = ?",
                         (resolve.canonical_json({**body.metrics, "status": body.status}),
                          applied, body.sensor_id))
            latest = self._current(conn, body.sensor_id, now)
            commands = self.queue.deliver(conn, body.sensor_id, now)
        self._after_check_in(body.sensor_id, now)
        in_sync = applied == latest.config_hash
        answer = {"status": "ok", "sensor_id": body.sensor_id, "sensor_status": "online",
                  "in_sync": in_sync, "config_changed": not in_sync,
                  "config_hash": latest.config_hash, "config_version": latest.version,
                  "config_endpoint": self.config_endpoint(body.sensor_id),
                  "check_in_interval": latest.document["check_in_interval"], "commands": commands}
        if include_config and not in_sync:
            answer["config_message"] = config_message(latest)
        return answer

    def current_configs(self, sensor_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """The current config of every sensor (a resync) or of ``sensor_ids`` (those the feed
        named), as ``sensors/{s}/config`` carries it; unknown ids are left out."""
        with self.db.read() as conn:
            known = [r[0] for r in conn.execute("SELECT sensor_id FROM sensors ORDER BY sensor_id")]
            ids = known if sensor_ids is None else sorted(set(sensor_ids) & set(known))
            versions = [v for s in ids if (v := self.configs.latest(conn, s)) is not None]
        return [config_message(v) for v in versions]

    def pending_commands(self, sensor_id: str) -> list[dict[str, Any]]:
        """Open commands handed out now (marked sent): what the MQTT side publishes."""
        now = self.clock()
        with self.db.tx() as conn:
            self.sensor_row(conn, sensor_id)
            return self.queue.deliver(conn, sensor_id, now)

    def ack(self, command_id: str, body: CommandAck) -> dict[str, Any]:
        now = self.clock()
        with self.db.tx() as conn:
            cmd = self.queue.ack(conn, command_id, body, now)
            self._check_in(conn, cmd["sensor_id"], now)
        self._after_check_in(cmd["sensor_id"], now)
        return cmd

    def data(self, body: DataUpload) -> dict[str, Any]:
        """Readings become device state; a reading already seen (same id, or same timestamp
        when it has no id) is skipped, so a replayed batch is harmless."""
        now = self.clock()
        readings: list[ReadingObs] = []
        problems: list[ErrorObs] = []
        duplicates = 0
        with self.db.tx() as conn:
            self.sensor_row(conn, body.sensor_id)
            self._check_in(conn, body.sensor_id, now)
            doc = self._current(conn, body.sensor_id, now).document
            mappings = (doc["config"] or {}).get("sensor_mappings")
            for i, item in enumerate(body.items()):
                where = f"batch.{i}" if body.batch is not None else "body"
                ts = _timestamp(item.timestamp, now, where)
                key = item.id or (f"ts:{ts!r}" if item.timestamp is not None else None)
                if key is not None:
                    cur = conn.execute("INSERT OR IGNORE INTO readings_seen VALUES (?, ?, ?)",
                                       (body.sensor_id, key, now))
                    if cur.rowcount == 0:
                        duplicates += 1
                        continue
                mapped = resolve.map_readings(item.readings, mappings)
                if mapped.values:
                    readings.append(ReadingObs(device_id=body.sensor_id, ts=ts, values=mapped.values))
                problems += [ErrorObs(device_id=body.sensor_id, ts=ts, error_code="BAD_VALUE",
                                      message=m, severity="warning") for m in mapped.errors]
        readings.sort(key=lambda r: r.ts)  # a batch from an offline period, oldest first
        if self.sink is not None:
            self.sink.ingest([*readings, *problems], source="master-control")
        self._after_check_in(body.sensor_id, now)
        return {"status": "ok", "sensor_id": body.sensor_id, "accepted": len(readings),
                "duplicates": duplicates, "errors": [p.message for p in problems]}


def _etags(header: str) -> set[str]:
    """``If-None-Match`` values, with quotes and weak markers removed."""
    return {t.strip().removeprefix("W/").strip('"') for t in header.split(",") if t.strip()}


def _timestamp(value: str | float | None, now: float, where: str) -> float:
    if value is None:
        return now
    if isinstance(value, str):
        try:
            ts = parse_iso(value)
        except (ValueError, OverflowError) as exc:
            raise Invalid("invalid_body", f"{where}.timestamp: {value!r:.100} is not ISO 8601") \
                from exc
    else:
        ts = float(value)
    if not in_range(ts):
        raise Invalid("invalid_body", f"{where}.timestamp: {value!r:.100} is not a time between "
                                      "1970 and 9999")
    # The limits of every observation's time (shared.models.ObsTime), said here with the field.
    problem = obs_time_problem(ts, now)
    if problem is not None:
        raise Invalid("invalid_body", f"{where}.timestamp: {problem}")
    return ts


def config_message(version: Version) -> dict[str, Any]:
    """The retained ``sensors/{s}/config`` payload of the contract."""
    return {"sensor_id": version.sensor_id, "config_hash": version.config_hash,
            "config_version": version.version, **version.document}
