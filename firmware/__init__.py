"""The probe firmware: one code base for an ESP32 under MicroPython and for virtual probes on the
host. Everything in this package except ``firmware/hal/host.py`` and ``firmware/host.py`` goes on
the device; it imports neither MicroPython's modules nor CPython-only ones, only the HAL it is
handed (see ``firmware/hal/__init__.py``)."""

VERSION = "1.0.0"
