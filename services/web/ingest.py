"""Readings that probes push to the hub (``/api/ingest``), free of Flask: the
payload's readings, registering a new probe in the aggregator, the reading (through the pusher)
and the CSV row. Nothing here keeps device state: the aggregator owns the registry and decides
who may write a device (a probe may only write devices of source ``probe``).

A payload is ``{temperature_c, probe_id?, token?, <other numeric readings>...}``, taken as
sampled when it arrives, or a batch of them after an outage, ``{probe_id?, token?, batch:
[{timestamp?, temperature_c, ...}, ...]}``, each reading with the time it was sampled (ISO 8601
or epoch seconds; without one, the time it arrives). Without a ``probe_id`` the reading
belongs to the known probe at the sender's IP, else to ``probe_<ip>``. Fields that are not
finite numbers (firmware version strings, flags) are ignored and listed in the answer, so a
newer firmware does not lose its readings to one new field.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from shared.models import ReadingObs, RegisterDevice
from shared.timeutil import in_range, obs_time_problem, parse_iso
from shared.topics import ID_RE

from .csvlog import CsvLog
from .errors import LanError
from .upstream import Upstream

log = logging.getLogger(__name__)

NOT_READINGS = frozenset({"probe_id", "token", "name", "id"})
MAX_BATCH = 500  # readings per batch (a probe's buffer goes up in slices of 20)
# 2020-01-01: anything earlier is an uptime or an unset clock. A probe's reading is held to this
# as well as to every observation's limits (shared.models.ObsTime: from 2000, at most
# FUTURE_SKEW_S ahead), so what this program takes the aggregator takes too.
EARLIEST_TS = 1_577_836_800.0
UNITS = {"temperature_c": "°C", "humidity": "%", "rssi": "dBm", "uptime_s": "s"}
# How long a registration the aggregator accepted is taken as still good before it is asked again
# (it is asked at once after a removal through this program). Saves a call per reading without
# making this program the keeper of the registry.
REGISTERED_MEMO_S = 60.0


def _number(value: Any, *, text_ok: bool) -> float | int | None:
    if isinstance(value, bool):
        return None
    if text_ok and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value):
        return value
    return None


def parse_readings(payload: Mapping[str, Any], *, text_ok: bool) -> tuple[dict[str, Any], list[str]]:
    """``(readings, ignored field names)``; ``LanError(422)`` without a usable temperature.
    ``text_ok``: values are query-string text to be read as numbers."""
    if "temperature_c" not in payload:
        raise LanError(422, "invalid_body", "temperature_c is required (a number in °C)")
    readings: dict[str, Any] = {}
    ignored: list[str] = []
    for key, raw in payload.items():
        if key in NOT_READINGS:
            continue
        value = _number(raw, text_ok=text_ok)
        if value is None or not ID_RE.fullmatch(key):
            if key == "temperature_c":
                raise LanError(422, "invalid_body",
                               f"temperature_c must be a finite number, got {raw!r}")
            ignored.append(key)
            continue
        readings[key] = value
    return readings, ignored


def reading_time(value: Any, now: float, where: str) -> float:
    """When a reading was sampled: its ``timestamp`` (ISO 8601 or epoch seconds), else ``now``;
    ``LanError(422)`` naming ``where`` for one that is not a time or lies in the future."""
    if value is None:
        return now
    if isinstance(value, str):
        try:
            ts = parse_iso(value)
        except (ValueError, OverflowError):
            raise LanError(422, "invalid_body",
                           f"{where}timestamp: {value[:40]!r} is not ISO 8601") from None
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        ts = float(value)
    else:
        raise LanError(422, "invalid_body",
                       f"{where}timestamp must be ISO 8601 or epoch seconds, got {value!r}")
    if not in_range(ts):  # 1e300 would break every rendering of it, this answer's too
        raise LanError(422, "invalid_body", f"{where}timestamp: {value!r:.40} is not a time "
                                            "between 1970 and 9999")
    if ts < EARLIEST_TS:
        raise LanError(422, "invalid_body", f"{where}timestamp: {value!r} is before 2020: an "
                                            "uptime or a clock not set yet, not a time; leave it "
                                            "out and the reading is stamped when it arrives")
    problem = obs_time_problem(ts, now)
    if problem is not None:
        raise LanError(422, "invalid_body", f"{where}timestamp: {problem}")
    return ts


class Ingest:
    def __init__(self, *, emit: Callable[[ReadingObs], None], upstream: Upstream, csv: CsvLog,
                 interval_s: float, clock: Callable[[], float]) -> None:
        self._emit = emit
        self._upstream = upstream
        self.csv = csv
        self._interval = interval_s
        self._clock = clock
        self._registered: dict[str, float] = {}  # probe id -> monotonic time the aggregator said yes
        self._lock = threading.Lock()
        self.accepted = 0

    def probe_id_for(self, payload: Mapping[str, Any], remote_ip: str | None) -> str:
        given = payload.get("probe_id")
        if given is not None:
            if not isinstance(given, str) or not ID_RE.fullmatch(given):
                raise LanError(422, "invalid_body",
                               f"probe_id must match [A-Za-z0-9_-]{{1,64}}, got {given!r}")
            return given
        known = self._upstream.probe_at(remote_ip) if remote_ip else None
        if known is not None:
            return known
        return "probe_" + "".join(c if c.isalnum() else "_" for c in (remote_ip or "unknown"))

    def accept(self, payload: Mapping[str, Any], *, remote_ip: str | None,
               text_ok: bool = False) -> dict[str, Any]:
        """Take one reading, or a ``batch``: device state, CSV rows; the answer names what was
        stored. A batch is checked whole before any of it is taken (a 422 names the reading and
        the field, and nothing is stored), then taken oldest first."""
        if "batch" in payload and not text_ok:
            return self._accept_batch(payload, remote_ip=remote_ip)
        probe_id = self.probe_id_for(payload, remote_ip)
        readings, ignored = parse_readings(payload, text_ok=text_ok)
        self._ensure_registered(probe_id)
        written = self._take(probe_id, [(self._clock(), readings)])
        return {"ok": True, "probe_id": probe_id, "stored": sorted(readings), "ignored": ignored,
                "csv": written}

    def _accept_batch(self, payload: Mapping[str, Any], *, remote_ip: str | None) -> dict[str, Any]:
        batch = payload["batch"]
        if not isinstance(batch, list) or not 1 <= len(batch) <= MAX_BATCH:
            raise LanError(422, "invalid_body",
                           f"batch must be a list of 1 to {MAX_BATCH} readings")
        probe_id = self.probe_id_for(payload, remote_ip)
        now = self._clock()
        taken: list[tuple[float, dict[str, Any]]] = []
        names: set[str] = set()
        ignored: set[str] = set()
        for i, item in enumerate(batch):
            if not isinstance(item, dict):
                raise LanError(422, "invalid_body", f"batch.{i} must be a JSON object")
            ts = reading_time(item.get("timestamp"), now, f"batch.{i}.")
            try:
                readings, skipped = parse_readings(
                    {k: v for k, v in item.items() if k != "timestamp"}, text_ok=False)
            except LanError as exc:
                raise LanError(exc.status, exc.error, f"batch.{i}: {exc.message}") from None
            taken.append((ts, readings))
            names.update(readings)
            ignored.update(skipped)
        self._ensure_registered(probe_id)
        taken.sort(key=lambda t: t[0])  # stable: readings of one instant keep their order
        written = self._take(probe_id, taken)
        return {"ok": True, "probe_id": probe_id, "accepted": len(taken), "csv": written,
                "stored": sorted(names),
                "ignored": sorted(ignored)}

    def _take(self, probe_id: str, readings: list[tuple[float, dict[str, Any]]]) -> bool:
        """Pass the readings on, then their CSV rows; ``False`` when the disk refused a row
        (the readings went on all the same: the answer must not make the probe send them
        again)."""
        written = True
        for ts, values in readings:
            self._emit(ReadingObs(device_id=probe_id, ts=ts, values=values))
            written = self.csv.append(ts, probe_id, values) and written
        with self._lock:
            self.accepted += len(readings)
        return written

    def forget(self, probe_id: str) -> None:
        """The probe's device was removed: its next reading registers it again."""
        with self._lock:
            self._registered.pop(probe_id, None)

    def _ensure_registered(self, probe_id: str) -> None:
        """A probe becomes a device before its first reading reaches the aggregator (the pusher
        sends after this returns, so the order holds). The aggregator refuses an id that is not
        a probe's (409) and new devices past ``MAX_DEVICES``; the refusal reaches the client."""
        now = time.monotonic()
        with self._lock:
            said_yes = self._registered.get(probe_id)
        if said_yes is not None and now - said_yes < REGISTERED_MEMO_S:
            return
        try:  # a discovered probe brings its mDNS name; without the poller, its id will do
            known = self._upstream.probe(probe_id)
        except LanError:
            known = None
        name = str(known.get("name") or probe_id) if known else probe_id
        if self._upstream.register(RegisterDevice(
                device_id=probe_id, name=name, model="ESP32 probe", sensor_type="temperature",
                source="probe", interval=self._interval, units=UNITS)):
            log.info("registered probe %s", probe_id)
        with self._lock:
            self._registered[probe_id] = now
