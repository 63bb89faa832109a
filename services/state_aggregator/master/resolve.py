"""Master control's pure logic, free of storage and HTTP: which template wins for a sensor, what
the sensor receives and its hash, a sensor's status from its last check-in, and how a sensor's
readings become device properties through ``sensor_mappings``."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from shared.master_models import SensorStatus

Scope = Literal["sensor", "group", "type"]
# Sensor-specific before group before type: the seed's order, with groups between.
SCOPE_RANK: dict[Scope, int] = {"sensor": 0, "group": 1, "type": 2}
STALE_FACTOR = 1.5
OFFLINE_FACTOR = 3.0


@dataclass(frozen=True, slots=True)
class Template:
    id: int
    config_name: str
    config_data: dict[str, Any]
    priority: int
    is_active: bool
    sensor_id: str | None = None
    group: str | None = None
    sensor_type: str | None = None
    master_id: int | None = None

    @property
    def scope(self) -> Scope:
        if self.sensor_id is not None:
            return "sensor"
        return "group" if self.group is not None else "type"

    @property
    def target(self) -> str:
        return self.sensor_id or self.group or self.sensor_type or ""

    def matches(self, sensor_id: str, sensor_type: str, groups: frozenset[str]) -> bool:
        if self.sensor_id is not None:
            return self.sensor_id == sensor_id
        if self.group is not None:
            return self.group in groups
        return self.sensor_type == sensor_type

    def rank(self) -> tuple[int, int, int]:
        # The oldest template (lowest id) breaks a tie, so the choice never flips between reads.
        return (SCOPE_RANK[self.scope], self.priority, self.id)


@dataclass(frozen=True, slots=True)
class Candidate:
    template: Template
    outcome: str  # "won", or why it did not


@dataclass(frozen=True, slots=True)
class Resolution:
    winner: Template | None
    candidates: tuple[Candidate, ...]

    @property
    def reason(self) -> str:
        if self.winner is None:
            return ("no active template matches this sensor: it keeps its own fallback config"
                    if not self.candidates else
                    "templates match but none is active: the sensor keeps its own fallback config")
        w = self.winner
        return (f"template {w.id} ({w.config_name!r}) applies to {w.scope} {w.target!r}; it is the "
                f"active {w.scope} template with the lowest priority number ({w.priority}), and "
                f"{w.scope} templates come before "
                + {"sensor": "group and type ones", "group": "type ones", "type": "none"}[w.scope])


def resolve(sensor_id: str, sensor_type: str, groups: frozenset[str],
            templates: list[Template]) -> Resolution:
    """The effective template of a sensor, and what every matching template lost to."""
    matching = sorted((t for t in templates if t.matches(sensor_id, sensor_type, groups)),
                      key=Template.rank)
    active = [t for t in matching if t.is_active]
    winner = active[0] if active else None
    candidates = []
    for t in matching:
        if t is winner:
            outcome = "won"
        elif not t.is_active:
            outcome = "inactive"
        else:
            assert winner is not None
            outcome = (f"outranked by template {winner.id}: "
                       + (f"{winner.scope} templates come before {t.scope} templates"
                          if winner.scope != t.scope else
                          f"priority {winner.priority} beats {t.priority}" if winner.priority != t.priority
                          else f"same priority, template {winner.id} is older"))
        candidates.append(Candidate(t, outcome))
    return Resolution(winner, tuple(candidates))


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces: the same value always gives the same text, hence the same hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def config_hash(document: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


def check_in_interval(override: float | None, config: dict[str, Any] | None,
                      default: float) -> float:
    """The sensor's own setting (management) first, then the config's, then the default."""
    if override is not None:
        return override
    value = (config or {}).get("check_in_interval")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 86400:
        return float(value)
    return default


def document(winner: Template | None, *, interval: float,
             masters: list[dict[str, Any]]) -> dict[str, Any]:
    """What the sensor receives (and what ``config_hash`` covers): everything it acts on, so a
    new master list or check-in interval reaches it like a template edit does."""
    return {
        "config_available": winner is not None,
        "config_name": winner.config_name if winner else None,
        "config": winner.config_data if winner else None,
        "check_in_interval": interval,
        "masters": masters,
    }


def status(last_check_in: float | None, interval: float, now: float) -> SensorStatus:
    """``pending`` until the first check-in, then ``stale`` past 1.5 intervals and ``offline``
    past three (the point where the device's availability turns offline too)."""
    if last_check_in is None:
        return "pending"
    age = now - last_check_in
    if age > OFFLINE_FACTOR * interval:
        return "offline"
    if age > STALE_FACTOR * interval:
        return "stale"
    return "online"


# --- readings ----------------------------------------------------------------------------------

_NOT_ID = re.compile(r"[^A-Za-z0-9_-]+")


def property_name(name: str) -> str:
    """A device property name the contract accepts: ``Target Temperature`` → ``target_temperature``,
    ``sensor.temperature`` → ``sensor_temperature``."""
    slug = _NOT_ID.sub("_", name.strip()).strip("_").lower()[:64]
    return slug or "value"


class BadValue(ValueError):
    """A reading that its mapping's ``data_type`` cannot hold."""


def _number(value: Any, *, integer: bool) -> Any:
    what = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadValue(f"{value!r} is not {what}")
    try:
        number = float(value)
    except ValueError as exc:
        raise BadValue(f"{value!r} is not {what}") from exc
    if not math.isfinite(number):
        raise BadValue(f"{value!r} is not a finite number")
    return int(number) if integer else number


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise BadValue(f"{value!r} is not a boolean")


def convert(value: Any, data_type: str) -> Any:
    """``value`` as the mapping's ``data_type`` says; an unknown type passes it as it came."""
    kind = data_type.lower()
    if kind in ("float", "number", "double"):
        return _number(value, integer=False)
    if kind in ("int", "integer"):
        return _number(value, integer=True)
    if kind in ("bool", "boolean"):
        return _boolean(value)
    if kind in ("text", "string", "str"):
        return value if isinstance(value, str) else canonical_json(value)
    return value


def units(mappings: Any) -> dict[str, str]:
    """The unit of each mapped property, as the device registry keeps them."""
    found: dict[str, str] = {}
    for m in mappings if isinstance(mappings, list) else []:
        if isinstance(m, dict) and m.get("unit") and (m.get("entry_field") or m.get("sensor_name")):
            found[property_name(str(m.get("entry_field") or m["sensor_name"]))] = str(m["unit"])
    return found


@dataclass(frozen=True, slots=True)
class Mapped:
    values: dict[str, Any]
    units: dict[str, str]
    errors: list[str]


def map_readings(readings: dict[str, Any], mappings: Any) -> Mapped:
    """Readings keyed by the sensor's names → device properties. A mapped reading takes the
    mapping's name (as a property id), unit and type; an unmapped one passes through unchanged
    but for its name, which must be a valid property id."""
    table: dict[str, dict[str, Any]] = {}
    if isinstance(mappings, list):
        for m in mappings:
            if isinstance(m, dict) and isinstance(m.get("sensor_name"), str):
                table[m["sensor_name"]] = m
    values: dict[str, Any] = {}
    units: dict[str, str] = {}
    errors: list[str] = []
    for name, value in readings.items():
        m = table.get(name)
        if m is None:
            values[property_name(name)] = value
            continue
        prop = property_name(str(m.get("entry_field") or name))
        try:
            values[prop] = convert(value, str(m.get("data_type") or "any"))
        except BadValue as exc:
            errors.append(f"{name} ({m.get('data_type')}): {exc}")
            continue
        if m.get("unit"):
            units[prop] = str(m["unit"])
    return Mapped(values, units, errors)
