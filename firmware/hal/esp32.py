"""The ESP32 HAL on MicroPython's own modules: Wi-Fi through ``network``, files on the LittleFS
flash under ``/data``, the 1-Wire bus through ``onewire``/``ds18x20``, the watchdog and reset
through ``machine``, firmware images through ``esp32.Partition`` (the OTA partitions, whose
bootloader rolls back an image that was never marked valid), and the mDNS service answered by
``firmware.mdns`` on a multicast UDP socket."""

import binascii
import gc
import os
import select
import socket
import time

import machine  # type: ignore[import-not-found]
import network  # type: ignore[import-not-found]

from ..mdns import GROUP, PORT, Responder, answer_pending
from . import Hal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

BLOCK = 4096  # flash erase block: esp32.Partition writes whole blocks
WATCHDOG_MS = 30000


class Esp32Hal(Hal):
    def __init__(self, root: str = "/data", led_pin: int = 2) -> None:
        self.root = root
        try:
            os.mkdir(root)
        except OSError:
            pass  # already there
        self.sta = network.WLAN(network.STA_IF)
        self.sta.active(True)
        self.ap: Any = None
        self.led = machine.Pin(led_pin, machine.Pin.OUT)
        self.wdt: Any = None
        self.mdns: Any = None
        self.mdns_sock: Any = None
        self.ports: dict[int, int] = {}
        self.image: Any = None
        self.pending = b""
        self.block = 0
        # Some MicroPython ports count from 2000-01-01; the hub wants Unix time.
        self.ntp_error: str | None = None
        self.epoch = 946684800 if time.gmtime(0)[0] == 2000 else 0

    def mac(self) -> str:
        raw = self.sta.config("mac")
        return ":".join("%02x" % b for b in raw)

    def hardware(self) -> str:
        return str(os.uname().machine)  # e.g. "Generic ESP32 module with ESP32"

    def ticks_ms(self) -> int:
        # The stubs type ticks as opaque (_TicksMs); on the device they are small ints, which the
        # HAL hands out: both ignores, one per type checker (CPython's time has no ticks).
        return int(time.ticks_ms())  # type: ignore[attr-defined, call-overload, no-any-return]

    def ticks_diff(self, a: int, b: int) -> int:
        return int(time.ticks_diff(a, b))  # type: ignore[attr-defined]

    def ticks_add(self, a: int, delta: int) -> int:
        return int(time.ticks_add(a, delta))  # type: ignore[attr-defined, type-var]

    def time_s(self) -> float:
        now = int(time.time()) + self.epoch
        return now if now > 1600000000 else 0  # before NTP the clock starts at its epoch

    def sleep_ms(self, ms: int) -> None:
        time.sleep_ms(ms)  # type: ignore[attr-defined]

    def random_hex(self, n: int) -> str:
        return binascii.hexlify(os.urandom((n + 1) // 2)).decode()[:n]

    # storage
    def _path(self, name: str) -> str:
        return self.root + "/" + name

    def read(self, name: str) -> bytes | None:
        try:
            with open(self._path(name), "rb") as f:
                data: bytes = f.read()
                return data
        except OSError:
            return None

    def write(self, name: str, data: bytes) -> None:
        tmp = self._path(name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, self._path(name))  # LittleFS replaces the target atomically

    def open(self, name: str, mode: str) -> "Any":
        return open(self._path(name), mode)

    def remove(self, name: str) -> None:
        try:
            os.remove(self._path(name))
        except OSError:
            pass

    def exists(self, name: str) -> bool:
        try:
            os.stat(self._path(name))
            return True
        except OSError:
            return False

    # network
    def connect_wifi(self, ssid: str, password: str, timeout_ms: int) -> bool:
        self.sta.connect(ssid, password)
        start = self.ticks_ms()
        while not self.sta.isconnected():
            if self.ticks_diff(self.ticks_ms(), start) > timeout_ms:
                self.sta.disconnect()
                return False
            self.sleep_ms(100)
        try:
            import ntptime  # type: ignore[import-not-found]
            ntptime.settime()
        except Exception as exc:  # no NTP: readings go out without a device timestamp
            self.ntp_error = str(exc)
        return True

    def start_access_point(self, ssid: str) -> str:
        self.ap = network.WLAN(network.AP_IF)
        self.ap.active(True)
        self.ap.config(essid=ssid, authmode=network.AUTH_OPEN)
        return str(self.ap.ifconfig()[0])

    def ip(self) -> str:
        if self.sta.isconnected():
            return str(self.sta.ifconfig()[0])
        return str(self.ap.ifconfig()[0]) if self.ap is not None else "0.0.0.0"

    def rssi(self) -> int | None:
        try:
            return int(self.sta.status("rssi"))
        except Exception:  # not connected
            return None

    def listen(self, port: int) -> "Any":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(socket.getaddrinfo("0.0.0.0", port or 80)[0][-1])
        sock.listen(4)
        self.ports[id(sock)] = port or 80  # MicroPython sockets have no getsockname
        return sock

    def bound_port(self, sock: "Any") -> int:
        return self.ports.get(id(sock), 80)

    def wait_readable(self, sock: "Any", timeout_ms: int) -> bool:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(timeout_ms))

    def connect(self, host: str, port: int, timeout_s: float) -> "Any":
        addr = socket.getaddrinfo(host, port)[0][-1]
        sock = socket.socket()
        sock.settimeout(timeout_s)
        try:
            sock.connect(addr)
        except OSError:
            sock.close()
            raise
        return sock

    def advertise(self, service: str, port: int, txt: "dict[str, Any]") -> None:
        label = str(txt.get("id", "probe"))
        self.mdns = Responder(service, label, port, self.ip(), txt)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(socket.getaddrinfo("0.0.0.0", PORT)[0][-1])
        group = bytes(int(p) for p in GROUP.split(".")) + bytes(int(p) for p in self.ip().split("."))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
        sock.setblocking(False)
        self.mdns_sock = sock
        self._announce()

    def _announce(self) -> None:
        try:
            self.mdns_sock.sendto(self.mdns.answer(), (GROUP, PORT))
        except OSError:
            pass  # Wi-Fi is not up yet: the next query gets an answer

    def poll_background(self) -> None:
        if self.mdns_sock is not None:
            answer_pending(self.mdns_sock, self.mdns)

    # pins
    def onewire_bus(self, pin: int) -> "Any | None":
        import ds18x20  # type: ignore[import-not-found]
        import onewire  # type: ignore[import-not-found]
        return ds18x20.DS18X20(onewire.OneWire(machine.Pin(pin)))

    def set_led(self, on: bool) -> None:
        self.led.value(1 if on else 0)

    # system
    def free_memory(self) -> int:
        return int(gc.mem_free())  # type: ignore[attr-defined]

    def collect(self) -> None:
        gc.collect()

    def feed_watchdog(self) -> None:
        if self.wdt is None:
            self.wdt = machine.WDT(timeout=WATCHDOG_MS)  # started by the first feed: boot is done
        self.wdt.feed()

    def reset(self) -> None:
        machine.reset()

    # firmware images: the next OTA partition
    def image_begin(self) -> None:
        import esp32  # type: ignore[import-not-found]
        # Partition(RUNNING) is MicroPython's documented call; the stubs take only a label (str)
        self.image = esp32.Partition(esp32.Partition.RUNNING).get_next_update()  # type: ignore[arg-type]
        self.pending = b""
        self.block = 0

    def image_write(self, chunk: bytes) -> None:
        self.pending += chunk
        while len(self.pending) >= BLOCK:
            self.image.writeblocks(self.block, self.pending[:BLOCK])
            self.pending = self.pending[BLOCK:]
            self.block += 1

    def image_switch(self) -> None:
        if self.pending:
            self.image.writeblocks(self.block, self.pending + b"\xff" * (BLOCK - len(self.pending)))
            self.pending = b""
        self.image.set_boot()

    def image_rollback(self) -> None:
        import esp32
        esp32.Partition(esp32.Partition.RUNNING).get_next_update().set_boot()  # type: ignore[arg-type]

    def image_mark_good(self) -> None:
        import esp32
        esp32.Partition.mark_app_valid_cancel_rollback()
