"""Where readings come from: DS18B20s on a 1-Wire pin, or a simulated sensor when no hardware
answers (virtual probes, a board without a probe attached). A sample is ``{name: value}`` with
``temperature_c`` always present, so the hub's ingest accepts it."""

import math

from .hal import Hal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class SensorError(Exception):
    """Raised by ``read()`` when no usable value could be had this time."""


class SimulatedSensor:
    """A slow temperature wave plus the sample number, so tests can count every reading."""

    kind = "simulated"

    def __init__(self, base_c: float = 21.0) -> None:
        self.base_c = base_c
        self.n = 0

    def read(self) -> "dict[str, Any]":
        self.n += 1
        value = self.base_c + 1.5 * math.sin(self.n / 10.0)
        return {"temperature_c": round(value, 2), "sample": self.n}


class Ds18b20Sensor:
    """Every DS18B20 on the bus: the first is ``temperature_c``, the others ``temperature_c_2``...
    Conversion takes up to 750 ms at 12 bits; the probe waits for it inside ``read()``."""

    kind = "ds18b20"

    def __init__(self, hal: Hal, bus: "Any") -> None:
        self.hal = hal
        self.bus = bus
        self.roms = bus.scan()

    def read(self) -> "dict[str, Any]":
        if not self.roms:
            self.roms = self.bus.scan()
            if not self.roms:
                raise SensorError("no DS18B20 answers on the bus")
        self.bus.convert_temp()
        self.hal.sleep_ms(750)
        out = {}
        for i, rom in enumerate(self.roms):
            try:
                value = self.bus.read_temp(rom)
            except Exception as exc:  # a CRC error on a long cable: report, keep the others
                raise SensorError("DS18B20 #%d: %s" % (i + 1, exc)) from exc
            if value is None or value == 85.0:  # 85 °C is the power-on value: no conversion
                raise SensorError("DS18B20 #%d returned no conversion" % (i + 1))
            out["temperature_c" if i == 0 else "temperature_c_%d" % (i + 1)] = round(value, 2)
        return out


def make_sensor(hal: Hal, pin: int | None) -> "Any":
    """A DS18B20 sensor when ``pin`` is set and a device answers there, else the simulation."""
    if pin is not None:
        bus = hal.onewire_bus(pin)
        if bus is not None:
            sensor = Ds18b20Sensor(hal, bus)
            if sensor.roms:
                return sensor
    return SimulatedSensor()
