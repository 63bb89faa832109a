"""Home Assistant's device classes, the units each accepts and the state classes it allows, and
how a property's name and unit pick one.

The unit sets follow ``DEVICE_CLASS_UNITS`` and ``DEVICE_CLASS_STATE_CLASSES`` of Home Assistant's
``homeassistant/components/sensor/const.py``, cut to the units Home Assistant 2024.3 already knew
(later releases only add units), so a config valid here is valid there and in every later
release. A device class is only given when the unit is one it accepts: Home Assistant warns
about (and a later release may reject) a device class whose unit it does not know.
"""

from __future__ import annotations

import re

PERCENT = "%"

# sensor device class -> the units Home Assistant accepts for it (None: no unit at all)
SENSOR_UNITS: dict[str, frozenset[str | None]] = {
    "apparent_power": frozenset({"VA"}),
    "atmospheric_pressure": frozenset({"Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg",
                                       "psi"}),
    "battery": frozenset({PERCENT}),
    "carbon_dioxide": frozenset({"ppm"}),
    "carbon_monoxide": frozenset({"ppm"}),
    "current": frozenset({"A", "mA"}),
    "data_size": frozenset({"bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "PB",
                            "EB", "ZB", "YB", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB",
                            "YiB"}),
    "distance": frozenset({"km", "m", "cm", "mm", "mi", "yd", "ft", "in"}),
    "duration": frozenset({"d", "h", "min", "s", "ms"}),
    "energy": frozenset({"Wh", "kWh", "MWh", "MJ", "GJ"}),
    "frequency": frozenset({"Hz", "kHz", "MHz", "GHz"}),
    "humidity": frozenset({PERCENT}),
    "illuminance": frozenset({"lx"}),
    "irradiance": frozenset({"W/m²", "BTU/(h⋅ft²)"}),
    "moisture": frozenset({PERCENT}),
    "pm1": frozenset({"µg/m³"}),
    "pm10": frozenset({"µg/m³"}),
    "pm25": frozenset({"µg/m³"}),
    "power": frozenset({"W", "kW"}),
    "power_factor": frozenset({PERCENT, None}),
    "pressure": frozenset({"Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"}),
    "signal_strength": frozenset({"dB", "dBm"}),
    "sound_pressure": frozenset({"dB", "dBA"}),
    "temperature": frozenset({"°C", "°F", "K"}),
    "volatile_organic_compounds": frozenset({"µg/m³"}),
    "volatile_organic_compounds_parts": frozenset({"ppm", "ppb"}),
    "voltage": frozenset({"V", "mV"}),
    "volume": frozenset({"L", "mL", "gal", "fl. oz.", "m³", "ft³", "CCF"}),
    "weight": frozenset({"kg", "g", "mg", "µg", "oz", "lb", "st"}),
    "wind_speed": frozenset({"ft/s", "km/h", "kn", "m/s", "mph"}),
}

# The state classes a device class allows where ``measurement`` is not among them: Home
# Assistant warns about a counter (energy, volume) reported as a measurement.
TOTAL_CLASSES = frozenset({"energy", "volume"})

# binary_sensor device classes (homeassistant/components/binary_sensor/__init__.py)
BINARY_CLASSES = frozenset({
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
    "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy",
    "opening", "plug", "power", "presence", "problem", "running", "safety", "smoke", "sound",
    "tamper", "update", "vibration", "window",
})

# Names first (they say what a value is), then units that mean one thing only. Each pattern is
# searched in the property name split on "_" and "-", so "cpu_temperature" and "temp-2" match.
_NAME_HINTS: tuple[tuple[str, str], ...] = (
    (r"temp|temperature", "temperature"),
    (r"hum|humidity|rh", "humidity"),
    (r"pressure|baro|press", "pressure"),
    (r"illuminance|lux|light|brightness", "illuminance"),
    (r"battery|batt", "battery"),
    (r"voltage|volt|vbat|vcc", "voltage"),
    (r"current|amps?", "current"),
    (r"power|watts?", "power"),
    (r"energy|consumption", "energy"),
    (r"co2", "carbon_dioxide"),
    (r"co", "carbon_monoxide"),
    (r"pm25|pm2_5", "pm25"),
    (r"pm10", "pm10"),
    (r"pm1", "pm1"),
    (r"voc|tvoc", "volatile_organic_compounds_parts"),
    (r"rssi|signal", "signal_strength"),
    (r"moisture|soil", "moisture"),
    (r"frequency|freq", "frequency"),
    (r"disk|memory|mem|bytes", "data_size"),
    (r"uptime|duration", "duration"),
    (r"distance|level", "distance"),
)
_UNIT_ONLY: dict[str, str] = {
    "°C": "temperature", "°F": "temperature", "K": "temperature", "lx": "illuminance",
    "V": "voltage", "mV": "voltage", "A": "current", "mA": "current", "W": "power", "kW": "power",
    "Wh": "energy", "kWh": "energy", "MWh": "energy", "hPa": "pressure", "kPa": "pressure",
    "mbar": "pressure", "Pa": "pressure", "dBm": "signal_strength", "Hz": "frequency",
    "µg/m³": "pm25", "B": "data_size", "kB": "data_size", "MB": "data_size", "GB": "data_size",
}
_BINARY_HINTS: tuple[tuple[str, str], ...] = (
    (r"motion|pir", "motion"), (r"occupancy|occupied", "occupancy"),
    (r"presence|present", "presence"), (r"door", "door"), (r"window", "window"),
    (r"contact|open|opening", "opening"), (r"smoke", "smoke"), (r"leak|water|moisture", "moisture"),
    (r"vibration", "vibration"), (r"tamper", "tamper"), (r"connected|online|link", "connectivity"),
    (r"problem|fault|alarm", "problem"), (r"charging", "battery_charging"), (r"lock", "lock"),
)

_WORDS = re.compile(r"[_\-]+")


def _matches(pattern: str, name: str) -> bool:
    words = [w for w in _WORDS.split(name.lower()) if w]
    alternatives = pattern.split("|")
    return any(w == alt for w in words for alt in alternatives) or any(
        alt == name.lower() for alt in alternatives)


def sensor_class(name: str, unit: str | None, declared: str | None = None) -> str | None:
    """The sensor device class of a number, or ``None``: the declared class when its unit fits,
    else the first name hint whose units accept ``unit``, else a unit that means one thing."""
    if declared is not None:
        return declared if unit in SENSOR_UNITS.get(declared, ()) else None
    for pattern, cls in _NAME_HINTS:
        if _matches(pattern, name) and unit in SENSOR_UNITS[cls]:
            return cls
    by_unit = _UNIT_ONLY.get(unit or "")
    return by_unit if by_unit is not None and unit in SENSOR_UNITS[by_unit] else None


def binary_class(name: str, declared: str | None = None) -> str | None:
    if declared is not None:
        return declared if declared in BINARY_CLASSES else None
    return next((cls for pattern, cls in _BINARY_HINTS if _matches(pattern, name)), None)


def state_class(device_class: str | None) -> str:
    """``measurement`` for numbers, except counters, which only allow totals."""
    return "total_increasing" if device_class in TOTAL_CLASSES else "measurement"


# How many decimals Home Assistant shows by default, where a class has a natural precision.
_PRECISION: dict[str, int] = {
    "temperature": 1, "humidity": 0, "battery": 0, "illuminance": 0, "pressure": 1,
    "atmospheric_pressure": 1, "voltage": 2, "current": 2, "power": 1, "energy": 2,
    "data_size": 0, "signal_strength": 0, "carbon_dioxide": 0,
}


def display_precision(device_class: str | None, *, integer: bool) -> int:
    if integer:
        return 0
    return _PRECISION.get(device_class or "", 2)
