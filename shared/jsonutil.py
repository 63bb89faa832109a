"""JSON encoding in one place: orjson is about 10x faster than the stdlib on our payloads."""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def dumps_str(obj: Any) -> str:
    return dumps(obj).decode()


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    return orjson.loads(data)


class NotAJsonObject(ValueError):
    """Raised by ``loads_object``; ``reason`` is ``empty``, ``invalid_json`` or ``not_object``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def loads_object(raw: bytes, *, what: str) -> dict[str, Any]:
    """``raw`` as a JSON object (a REST body, an MQTT payload: ``what`` names it in messages)."""
    if not raw.strip():
        raise NotAJsonObject("empty", f"empty {what}: a JSON object is required")
    try:
        data = loads(raw)
    except JSONDecodeError as exc:
        raise NotAJsonObject("invalid_json", f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise NotAJsonObject("not_object",
                             f"{what} must be a JSON object, not {type(data).__name__}")
    return data
