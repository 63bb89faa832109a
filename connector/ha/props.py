"""What Home Assistant needs to know of a device's properties, from what the hub knows of them:
the instance file's declarations (type, unit, device class, events) and the values seen in the
device's state. Pure: no MQTT, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shared.instance import PropertySpec
from shared.topics import ID_RE

Kind = Literal["number", "integer", "bool", "onoff", "text"]

# Keys of the state payload that are not properties (the contract's envelope).
RESERVED = frozenset({"device_id", "timestamp", "seq"})
ON_OFF = frozenset({"on", "off"})


@dataclass(frozen=True, slots=True)
class Prop:
    name: str
    kind: Kind
    unit: str | None = None
    device_class: str | None = None  # as declared in the instance file
    events: tuple[str, ...] = ()


_DECLARED: dict[str, Kind] = {"bool": "bool", "int": "integer", "float": "number"}


def kind_of(value: Any, declared: str | None = None) -> Kind | None:
    """The kind of a property from its declared type, else from a value; ``None`` when Home
    Assistant has no entity for it (objects, lists, nulls)."""
    kind: Kind | None = _DECLARED.get(declared or "")
    if kind is not None:
        pass
    elif isinstance(value, bool):  # before int: a bool is an int in Python
        kind = "bool"
    elif isinstance(value, int):
        kind = "integer"
    elif isinstance(value, float):
        kind = "number"
    elif isinstance(value, str):
        kind = "onoff" if value.lower() in ON_OFF else "text"
    elif declared == "str":
        kind = "text"
    return kind


def infer(values: Mapping[str, Any], specs: Mapping[str, PropertySpec],
          units: Mapping[str, str]) -> tuple[Prop, ...]:
    """Every property Home Assistant can show, declared or seen, sorted by name. A declared
    property that has not reported yet counts when its type or unit says what it will be."""
    props: list[Prop] = []
    for name in sorted(set(values) | set(specs)):
        if name in RESERVED or ID_RE.fullmatch(name) is None:
            continue
        spec = specs.get(name)
        declared_type = spec.type if spec else None
        kind = kind_of(values.get(name), declared_type)
        if kind is None and name not in values and spec is not None and spec.unit:
            kind = "number"
        if kind is None:
            continue
        unit = (spec.unit if spec and spec.unit else None) or units.get(name)
        events = tuple(sorted(set(spec.events.values()))) if spec and spec.events else ()
        props.append(Prop(name, kind, unit if kind in ("number", "integer") else None,
                          spec.device_class if spec else None, events))
    return tuple(props)
