"""The serial line protocol, sensor to hub and hub to sensor. One line, one message; the full
description for sketch authors is ``docs/serial-protocol.md``.

Sensor to hub, either a JSON object or ``key=value`` pairs (values may be quoted):

    {"id": "temp_living_room", "temperature": 22.5, "humidity": 41}   a reading
    id=temp_living_room temperature=22.5 humidity=41                   the same reading
    {"id": "t1", "error": "READ_TIMEOUT", "message": "DHT22 silent"}   a failed read
    {"id": "m1", "event": "motion_started"}                            an event
    {"id": "relay1", "ack": "cmd-42", "ok": true}                      a command acknowledged
    id=relay1 ack=cmd-42 ok=false error="relay stuck"                  a command failed
    # anything                                                         a comment: ignored

Hub to sensor, always JSON (ArduinoJson parses it in a few lines):

    {"id": "t1", "read": true}                                         read now, please
    {"id": "relay1", "cmd_id": "cmd-42", "values": {"state": "on"}}     a command
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from shared.topics import ID_RE

MAX_LINE = 4096  # bytes; a longer line is dropped whole and reported once
MAX_TEXT = 120  # how much of an offending line an error message quotes
MAX_CODE = 64  # a sensor's error code, as published
MAX_MESSAGE = 240  # a sensor's error message, as published
_RESERVED = {"id", "error", "message", "severity", "event", "data", "ack", "ok", "result"}
_TEXT_KEYS = {"id", "ack", "message", "error", "event", "severity"}  # never read as numbers
_SEVERITIES = ("info", "warning", "error", "critical")
# The number syntax of JSON, so ``1_000``, ``0x1F`` or ``١٢`` stay text as a sketch author expects.
_INT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")

Severity = Literal["info", "warning", "error", "critical"]


class LineError(ValueError):
    """Raised by ``parse_line`` for a line that is not a message of the protocol; ``reason``
    says why and ``device_id`` names the sensor when the line still told it."""

    def __init__(self, reason: str, line: str, device_id: str | None = None) -> None:
        super().__init__(f"{reason}: {truncate(line)!r}")
        self.reason = reason
        self.device_id = device_id


@dataclass(frozen=True, slots=True)
class Reading:
    device_id: str
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Failure:
    device_id: str
    code: str
    message: str
    severity: Severity = "error"


@dataclass(frozen=True, slots=True)
class Event:
    device_id: str
    event: str
    data: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Ack:
    device_id: str
    cmd_id: str
    ok: bool
    result: dict[str, Any] | None
    error: str | None


Message = Reading | Failure | Event | Ack


def truncate(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def is_comment(line: str) -> bool:
    """A ``#`` line is a sketch's debug output: neither a message nor garbage."""
    return line.lstrip().startswith("#")


def _is_false(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("false", "no", "off", "0")
    return value is False or (isinstance(value, int | float) and value == 0)


# Words with a fixed meaning in key=value; Serial.print(NAN) from a failed read prints "nan" (not
# sampled, as JSON null) and an overflow "inf" or "ovf" (refused as non-finite).
_WORDS: dict[str, Any] = {"true": True, "on": True, "false": False, "off": False, "nan": None,
                          "null": None, "inf": math.inf, "-inf": -math.inf, "ovf": math.inf}


def _scalar(raw: str) -> Any:
    low = raw.lower()
    if low in _WORDS:
        return _WORDS[low]
    if _INT_RE.fullmatch(raw):
        return int(raw)
    if _FLOAT_RE.fullmatch(raw):
        return float(raw)  # may be inf (1e999): refused with the other non-finite values
    return raw


def _parse_kv(line: str) -> dict[str, Any]:
    try:
        tokens = shlex.split(line)
    except ValueError as exc:
        raise LineError(f"unbalanced quotes ({exc})", line) from exc
    obj: dict[str, Any] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise LineError(f"expected key=value, got {truncate(token, 40)!r}", line)
        obj[key] = value if key in _TEXT_KEYS else _scalar(value)
    return obj


def _parse_json(text: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise LineError(f"invalid JSON ({exc})", text) from exc
    if not isinstance(obj, dict):
        raise LineError("JSON line is not an object", text)
    return obj


def _device_id(obj: dict[str, Any], default_id: str | None, text: str) -> str:
    raw = obj.get("id", default_id)
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        raw = str(raw)  # {"id": 3} from a sketch that numbers its sensors
    if not isinstance(raw, str) or ID_RE.fullmatch(raw) is None:
        raise LineError("missing or invalid 'id'", text)
    return raw


def parse_line(line: str, *, default_id: str | None = None) -> Message:
    """The message a line carries, or ``LineError`` saying what is wrong with it.

    ``default_id`` is the sensor a line without ``id`` belongs to (a port with one sensor).
    """
    text = line.strip()
    if text.startswith("{"):
        obj = _parse_json(text)
    elif "=" in text:
        obj = _parse_kv(text)
    else:
        raise LineError("neither JSON nor key=value", text)

    device_id = _device_id(obj, default_id, text)
    if obj.get("ack") is not None:
        result, error = obj.get("result"), obj.get("error")
        return Ack(device_id, str(obj["ack"]), not _is_false(obj.get("ok", True)),
                   result if isinstance(result, dict) else None,
                   truncate(str(error), MAX_MESSAGE) if error is not None else None)
    if obj.get("error") is not None:
        severity = obj.get("severity")
        return Failure(device_id, truncate(str(obj["error"]), MAX_CODE),
                       truncate(str(obj.get("message") or ""), MAX_MESSAGE),
                       severity if severity in _SEVERITIES else "error")
    if obj.get("event") is not None:
        data = obj.get("data")
        return Event(device_id, truncate(str(obj["event"]), MAX_CODE),
                     data if isinstance(data, dict) else None)

    values: dict[str, Any] = {}
    for key, value in obj.items():
        if key in _RESERVED or value is None:
            continue  # ArduinoJson writes NaN (a failed DHT read) as null: not sampled
        if ID_RE.fullmatch(key) is None:
            raise LineError(f"invalid property name {truncate(key, 40)!r}", text, device_id)
        if isinstance(value, float) and not math.isfinite(value):
            raise LineError(f"non-finite value for {key!r}", text, device_id)
        if isinstance(value, dict | list):
            raise LineError(f"property {key!r} is not a scalar", text, device_id)
        values[key] = value
    if not values:
        raise LineError("a reading without values (all null or nan?)", text, device_id)
    return Reading(device_id, values)


def guess_id(line: str) -> str | None:
    """The id a garbled line was probably about, to attribute its error."""
    for marker in ('"id":', "id="):
        at = line.find(marker)
        if at >= 0:
            rest = line[at + len(marker):].lstrip(' "')
            candidate = ""
            for ch in rest:
                if ch.isascii() and (ch.isalnum() or ch in "_-"):
                    candidate += ch
                else:
                    break
            if candidate and ID_RE.fullmatch(candidate):
                return candidate
    return None


# Whatever a port's configured line ending, a line may end in \n, \r\n or \r: Serial.println
# sends \r\n, some terminals send \r. ``line_ending`` only decides what the hub writes.
_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Overlong:
    """A line longer than ``MAX_LINE``: its first bytes, for the error message."""

    head: bytes


class LineFramer:
    """Cuts a byte stream into lines, wherever the reads happened to split it. A line longer than
    ``max_line`` is reported once as ``Overlong`` and the rest of it is dropped, so a board at
    the wrong baud rate (no line endings at all) cannot grow the buffer without bound."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._max = max_line
        self._buf = b""
        self._discarding = False  # inside a line already reported as overlong

    def feed(self, chunk: bytes) -> list[bytes | Overlong]:
        *lines, self._buf = _EOL.split(self._buf + chunk)
        out: list[bytes | Overlong] = []
        for line in lines:
            if self._discarding:
                self._discarding = False  # the overlong line's tail
            elif len(line) > self._max:
                out.append(Overlong(line[:200]))
            else:
                out.append(line)
        if len(self._buf) > self._max:
            if not self._discarding:
                out.append(Overlong(self._buf[:200]))
            self._discarding, self._buf = True, b""
        return out


def read_request(device_id: str, line_ending: str) -> bytes:
    return orjson.dumps({"id": device_id, "read": True}) + line_ending.encode()


def command_line(device_id: str, cmd_id: str, values: dict[str, Any], line_ending: str) -> bytes:
    return orjson.dumps({"id": device_id, "cmd_id": cmd_id, "values": values}) + line_ending.encode()
