"""The serial line protocol, sensor to hub and hub to sensor. One line, one message.

Sensor to hub, either a JSON object or ``key=value`` pairs (values may be quoted):

    {"id": "temp_living_room", "temperature": 22.5, "humidity": 41}   a reading
    id=temp_living_room temperature=22.5 humidity=41                   the same reading
    {"id": "t1", "error": "READ_TIMEOUT", "message": "DHT22 silent"}   a failed read
    {"id": "m1", "event": "motion_started"}                            an event
    {"id": "relay1", "ack": "cmd-42", "ok": true}                      a command acknowledged
    id=relay1 ack=cmd-42 ok=false error="relay stuck"                  a command failed

Hub to sensor, always JSON (ArduinoJson parses it in a few lines):

    {"id": "t1", "read": true}                                         read now, please
    {"id": "relay1", "cmd_id": "cmd-42", "values": {"state": "on"}}     a command
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from typing import Any

import orjson

from shared.topics import ID_RE

MAX_TEXT = 120  # how much of an offending line an error message quotes
_RESERVED = {"id", "error", "message", "severity", "event", "data", "ack", "ok", "result"}


class LineError(ValueError):
    """A line that is not a message of the protocol; ``device_id`` when it could be told."""

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


def _scalar(raw: str) -> Any:
    low = raw.lower()
    if low in ("true", "on"):
        return True
    if low in ("false", "off"):
        return False
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
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
        obj[key] = value if key in ("id", "ack", "message", "error", "event") else _scalar(value)
    return obj


def parse_line(line: str) -> Message:
    """The message a line carries; ``LineError`` says what is wrong with it."""
    text = line.strip()
    if text.startswith("{"):
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise LineError(f"invalid JSON ({exc})", text) from exc
        if not isinstance(obj, dict):
            raise LineError("JSON line is not an object", text)
    elif "=" in text:
        obj = _parse_kv(text)
    else:
        raise LineError("neither JSON nor key=value", text)

    device_id = obj.get("id")
    if not isinstance(device_id, str) or ID_RE.fullmatch(device_id) is None:
        raise LineError("missing or invalid 'id'", text)
    if "ack" in obj:
        result = obj.get("result")
        return Ack(device_id, str(obj["ack"]), bool(obj.get("ok", True)),
                   result if isinstance(result, dict) else None,
                   str(obj["error"]) if obj.get("error") is not None else None)
    if "error" in obj:
        return Failure(device_id, str(obj["error"]), str(obj.get("message", "")))
    if "event" in obj:
        data = obj.get("data")
        return Event(device_id, str(obj["event"]), data if isinstance(data, dict) else None)

    values: dict[str, Any] = {}
    for key, value in obj.items():
        if key in _RESERVED:
            continue
        if ID_RE.fullmatch(key) is None:
            raise LineError(f"invalid property name {truncate(key, 40)!r}", text, device_id)
        if isinstance(value, float) and not math.isfinite(value):
            raise LineError(f"non-finite value for {key!r}", text, device_id)
        if isinstance(value, dict | list):
            raise LineError(f"property {key!r} is not a scalar", text, device_id)
        values[key] = value
    if not values:
        raise LineError("a reading without values", text, device_id)
    return Reading(device_id, values)


def guess_id(line: str) -> str | None:
    """The id a garbled line was probably about, to attribute its error."""
    for marker in ('"id":', "id="):
        at = line.find(marker)
        if at >= 0:
            rest = line[at + len(marker):].lstrip(' "')
            candidate = ""
            for ch in rest:
                if ch.isalnum() or ch in "_-":
                    candidate += ch
                else:
                    break
            if candidate and ID_RE.fullmatch(candidate):
                return candidate
    return None


def read_request(device_id: str, line_ending: str) -> bytes:
    return orjson.dumps({"id": device_id, "read": True}) + line_ending.encode()


def command_line(device_id: str, cmd_id: str, values: dict[str, Any], line_ending: str) -> bytes:
    return orjson.dumps({"id": device_id, "cmd_id": cmd_id, "values": values}) + line_ending.encode()
