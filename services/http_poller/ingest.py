"""Readings that probes push to the hub (``/api/ingest``), free of Flask: the token check, the
payload's readings, registering a new probe in the aggregator, the device state (through the
pusher) and the CSV row.

A payload is ``{temperature_c, probe_id?, token?, <other numeric readings>...}``. Without a
``probe_id`` the reading belongs to the known probe at the sender's IP, else to
``probe_<ip>``. Fields that are not finite numbers (firmware version strings, flags) are ignored
and listed in the answer, so a newer firmware does not lose its readings to one new field.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

from shared.errors import HubError, ServiceError
from shared.models import ReadingObs, RegisterDevice
from shared.topics import ID_RE

from .csvlog import CsvLog
from .probes import ProbeDirectory

log = logging.getLogger(__name__)

NOT_READINGS = frozenset({"probe_id", "token", "name", "id"})
UNITS = {"temperature_c": "°C", "humidity": "%", "rssi": "dBm", "uptime_s": "s"}
Register = Callable[[RegisterDevice], None]


class IngestError(HubError):
    """Raised for a request the ingest API refuses: ``status`` 401 (token), 422 (payload),
    503 (the aggregator cannot register the probe yet; the probe should retry)."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


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
    """``(readings, ignored field names)``; ``IngestError(422)`` without a usable temperature.
    ``text_ok``: values are query-string text to be read as numbers."""
    if "temperature_c" not in payload:
        raise IngestError(422, "invalid_body", "temperature_c is required (a number in °C)")
    readings: dict[str, Any] = {}
    ignored: list[str] = []
    for key, raw in payload.items():
        if key in NOT_READINGS:
            continue
        value = _number(raw, text_ok=text_ok)
        if value is None or not ID_RE.fullmatch(key):
            if key == "temperature_c":
                raise IngestError(422, "invalid_body",
                                  f"temperature_c must be a finite number, got {raw!r}")
            ignored.append(key)
            continue
        readings[key] = value
    return readings, ignored


class Ingest:
    def __init__(self, *, emit: Callable[[ReadingObs], None], register: Register | None,
                 csv: CsvLog, directory: ProbeDirectory, token: str | None,
                 interval_s: float, clock: Callable[[], float]) -> None:
        self._emit = emit
        self._register = register
        self.csv = csv
        self._directory = directory
        self._token = token.encode() if token else None
        self._interval = interval_s
        self._clock = clock
        self._registered: set[str] = set()
        self._lock = threading.Lock()
        self.accepted = 0

    @property
    def token_required(self) -> bool:
        return self._token is not None

    def knows(self, probe_id: str) -> bool:
        """Whether this probe has been registered in the aggregator during this run."""
        with self._lock:
            return probe_id in self._registered

    def check_token(self, given: str | None) -> None:
        """``IngestError(401)`` unless ``given`` is the token (compared in constant time)."""
        if self._token is None:
            return
        if not given:
            raise IngestError(401, "unauthorized", "this hub requires a token: send it as the "
                              "X-Token header, the ?token= parameter or a JSON 'token' field")
        if not hmac.compare_digest(given.encode(), self._token):
            raise IngestError(401, "unauthorized", "the token is wrong")

    def probe_id_for(self, payload: Mapping[str, Any], remote_ip: str | None) -> str:
        given = payload.get("probe_id")
        if given is not None:
            if not isinstance(given, str) or not ID_RE.fullmatch(given):
                raise IngestError(422, "invalid_body",
                                  f"probe_id must match [A-Za-z0-9_-]{{1,64}}, got {given!r}")
            return given
        known = self._directory.by_ip(remote_ip) if remote_ip else None
        if known is not None:
            return known.probe_id
        return "probe_" + "".join(c if c.isalnum() else "_" for c in (remote_ip or "unknown"))

    def accept(self, payload: Mapping[str, Any], *, remote_ip: str | None,
               text_ok: bool = False) -> dict[str, Any]:
        """Take one reading: device state, CSV row; the answer names what was stored."""
        probe_id = self.probe_id_for(payload, remote_ip)
        readings, ignored = parse_readings(payload, text_ok=text_ok)
        self._ensure_registered(probe_id)
        ts = self._clock()
        self._emit(ReadingObs(device_id=probe_id, ts=ts, values=readings))
        self.csv.append(ts, probe_id, readings)
        self._directory.seen(probe_id)
        self.accepted += 1
        return {"ok": True, "probe_id": probe_id, "stored": sorted(readings), "ignored": ignored}

    def _ensure_registered(self, probe_id: str) -> None:
        """A probe the aggregator has not seen becomes a device before its first reading
        arrives there (the pusher sends after this returns, so the order holds)."""
        if self._register is None or probe_id in self._registered:
            return
        probe = self._directory.get(probe_id)
        request = RegisterDevice(
            device_id=probe_id, name=probe.name if probe else probe_id, model="ESP32 probe",
            sensor_type="temperature", source="probe", interval=self._interval, units=UNITS)
        try:
            self._register(request)
        except ServiceError as exc:
            log.warning("cannot register probe %s yet: %s", probe_id, exc)
            raise IngestError(503, "not_ready", "the hub cannot register this probe right now; "
                              "send the reading again") from exc
        with self._lock:
            self._registered.add(probe_id)
