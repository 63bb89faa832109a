"""Turns a sensor's JSON response into device state through the instance file's per-property
mapping (a JMESPath expression, a type and a unit), and finds the events a change implies."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jmespath
import orjson
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from shared.errors import ConfigError, ReadError
from shared.instance import PropertySpec
from shared.topics import ID_RE


@dataclass(frozen=True)
class _Field:
    name: str
    path: ParsedResult | None
    type: str | None
    events: dict[str, str]


def _to_float(value: Any) -> float:
    result = float(value)
    if not math.isfinite(result):
        raise ValueError("not finite")
    return result


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() in ("true", "on", "1", "yes"):
            return True
        if value.lower() in ("false", "off", "0", "no"):
            return False
        raise ValueError(f"{value!r} is not a boolean")
    return bool(value)


_CONVERT: dict[str, Callable[[Any], Any]] = {"float": _to_float, "int": int, "bool": _to_bool,
                                             "str": str}


def _coerce(name: str, value: Any, kind: str | None) -> Any:
    convert = _CONVERT.get(kind or "")
    if convert is None:
        return value
    try:
        return convert(value)
    except (TypeError, ValueError, OverflowError) as exc:  # int(inf) raises OverflowError
        raise ReadError("BAD_RESPONSE", f"property {name!r}: cannot read {value!r} as {kind} "
                                        f"({exc})") from exc


class Mapping:
    def __init__(self, sensor_id: str, properties: dict[str, PropertySpec]) -> None:
        self.sensor_id = sensor_id
        self.fields: list[_Field] = []
        for name, spec in properties.items():
            try:
                path = jmespath.compile(spec.path) if spec.path else None
            except JMESPathError as exc:
                raise ConfigError(f"sensor {sensor_id!r}: properties.{name}.path "
                                  f"{spec.path!r} is not valid JMESPath: {exc}") from exc
            self.fields.append(_Field(name, path, spec.type, spec.events or {}))
        self.explicit = any(f.path is not None for f in self.fields)

    def apply(self, doc: Any) -> dict[str, Any]:
        """The state values in ``doc``; ``ReadError('BAD_RESPONSE')`` when it does not match."""
        if not self.explicit:
            if not isinstance(doc, dict):
                raise ReadError("BAD_RESPONSE", f"expected a JSON object, got {type(doc).__name__}")
            values = {k: v for k, v in doc.items()
                      if ID_RE.fullmatch(k) and (v is None or isinstance(v, bool | int | float | str))}
            kinds = {f.name: f.type for f in self.fields}
            values = {k: _coerce(k, v, kinds.get(k)) for k, v in values.items()}
        else:
            values = {}
            for f in self.fields:
                if f.path is None:
                    continue
                found = f.path.search(doc)
                if found is None:
                    raise ReadError("BAD_RESPONSE", f"property {f.name!r}: nothing at "
                                                    f"{f.path.expression!r} in the response")
                values[f.name] = _coerce(f.name, found, f.type)
        if not values:
            raise ReadError("BAD_RESPONSE", "the response holds no usable values")
        return values

    def events(self, before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
        """Events whose trigger value a property has just changed to."""
        if before is None:
            return []
        found = []
        for f in self.fields:
            if f.events and f.name in after and before.get(f.name) != after[f.name]:
                event = f.events.get(orjson.dumps(after[f.name]).decode().strip('"'))
                if event:
                    found.append(event)
        return found
