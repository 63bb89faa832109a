"""The hardware abstraction layer: everything the probe logic needs from the world it runs in.

Two implementations: ``esp32.py`` on MicroPython's modules (``network``, ``machine``, ``esp32``,
``onewire``/``ds18x20``) and ``host.py`` on CPython (sockets, a state directory, zeroconf). The
logic above only calls the methods below and uses the socket and file objects they return through
the subset both worlds share (``recv``, ``send``, ``close``, ``settimeout``, ``accept``; ``read``,
``write``, ``seek``, ``close``). This module is itself MicroPython code: no typing import at run
time, annotations are never evaluated there.
"""

TYPE_CHECKING = False  # typing is not on the device; mypy reads this branch by its name
if TYPE_CHECKING:
    from typing import Any


class Hal:
    """The interface; every method of a HAL is listed here with what it promises."""

    # identity
    def mac(self) -> str:
        """The station MAC as ``aa:bb:cc:dd:ee:ff``: stable across reboots."""
        raise NotImplementedError

    def hardware(self) -> str:
        """What the probe says it runs on (``hardware_info`` when it registers)."""
        return "unknown"

    # time
    def ticks_ms(self) -> int:
        """A monotonic millisecond counter (may wrap on the device: compare with ``ticks_diff``)."""
        raise NotImplementedError

    def ticks_diff(self, a: int, b: int) -> int:
        """``a - b`` in ms, correct across a wrap of the counter."""
        return a - b

    def ticks_add(self, a: int, delta: int) -> int:
        """``a + delta`` on the (possibly wrapping) counter."""
        return a + delta

    def time_s(self) -> float:
        """Seconds since 1970-01-01 UTC (with a fraction where the clock has one); 0 while the
        clock is not set (no NTP yet)."""
        raise NotImplementedError

    def sleep_ms(self, ms: int) -> None:
        raise NotImplementedError

    def random_hex(self, n: int) -> str:
        """``n`` random hex digits (boot ids)."""
        raise NotImplementedError

    # storage: small files under one directory (the device's flash, the host's state dir)
    def read(self, name: str) -> bytes | None:
        """The whole file, ``None`` when it does not exist."""
        raise NotImplementedError

    def write(self, name: str, data: bytes) -> None:
        """Replace the file atomically (write a temporary file, then rename over it)."""
        raise NotImplementedError

    def open(self, name: str, mode: str) -> "Any":
        """A binary file object (``rb``, ``wb``, ``r+b``) for files written piecewise."""
        raise NotImplementedError

    def remove(self, name: str) -> None:
        """Delete the file; nothing when it does not exist."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    # network
    def connect_wifi(self, ssid: str, password: str, timeout_ms: int) -> bool:
        """Join a network; False when it did not within the timeout."""
        raise NotImplementedError

    def start_access_point(self, ssid: str) -> str:
        """Open the setup access point; returns the address the setup page is served on."""
        raise NotImplementedError

    def ip(self) -> str:
        raise NotImplementedError

    def rssi(self) -> int | None:
        """Signal strength in dBm, ``None`` when not on Wi-Fi."""
        raise NotImplementedError

    def listen(self, port: int) -> "Any":
        """A listening TCP socket on ``port`` (0: any free port; see ``bound_port``)."""
        raise NotImplementedError

    def bound_port(self, sock: "Any") -> int:
        raise NotImplementedError

    def wait_readable(self, sock: "Any", timeout_ms: int) -> bool:
        """True when ``sock`` has something to read (a connection to accept) within the timeout."""
        raise NotImplementedError

    def connect(self, host: str, port: int, timeout_s: float) -> "Any":
        """A connected TCP socket; ``OSError`` when the peer cannot be reached."""
        raise NotImplementedError

    def advertise(self, service: str, port: int, txt: "dict[str, Any]") -> None:
        """Advertise ``service`` (``_temps-probe._tcp``) on mDNS with the TXT records."""
        raise NotImplementedError

    def poll_background(self) -> None:
        """Give background duties (the ESP32's own mDNS responder) a turn; host: nothing."""

    # pins and sensors
    def onewire_bus(self, pin: int) -> "Any | None":
        """A DS18X20 driver on ``pin`` (``scan()``, ``convert_temp()``, ``read_temp(rom)``), or
        ``None`` when this world has no such hardware."""
        return None

    def set_led(self, on: bool) -> None:
        """The status LED (``identify`` blinks it)."""

    # system
    def free_memory(self) -> int:
        raise NotImplementedError

    def collect(self) -> None:
        """Collect garbage (around network work, where MicroPython's heap fragments)."""

    def feed_watchdog(self) -> None:
        """Tell the watchdog the main loop is alive."""

    def reset(self) -> None:
        """Reboot. On the host this raises ``Reboot`` so the runner starts the probe afresh."""
        raise NotImplementedError

    # firmware images (OTA): two slots, one running, the other written by an update
    def image_begin(self) -> None:
        """Start writing the inactive slot."""
        raise NotImplementedError

    def image_write(self, chunk: bytes) -> None:
        raise NotImplementedError

    def image_switch(self) -> None:
        """Boot the written slot on the next reset (the slot that ran stays for a rollback)."""
        raise NotImplementedError

    def image_rollback(self) -> None:
        """Boot the previous slot on the next reset."""
        raise NotImplementedError

    def image_mark_good(self) -> None:
        """The running image works: keep it (cancels the bootloader's own rollback)."""


class Reboot(Exception):
    """Raised by the host HAL's ``reset()``: the runner catches it and boots the probe again."""
