"""A HAL in memory, for the logic checks that run under CPython and under a real MicroPython
alike: files are bytearrays, the clock moves when told, sockets replay canned bytes. Written in
the subset both interpreters share (no typing at run time, no dataclasses, no pathlib)."""

from firmware.hal import Hal, Reboot

TYPE_CHECKING = False  # typing is not on MicroPython; mypy reads this branch by its name
if TYPE_CHECKING:
    from typing import Any


class MemFile:
    def __init__(self, files: "dict[str, bytearray]", name: str, mode: str) -> None:
        self.files = files
        self.name = name
        if "w" in mode:
            files[name] = bytearray()
        elif name not in files:
            raise OSError(2, "no such file: " + name)
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        data = self.files[self.name]
        end = len(data) if n < 0 else min(len(data), self.pos + n)
        out = bytes(data[self.pos:end])
        self.pos = end
        return out

    def write(self, chunk: bytes) -> int:
        data = self.files[self.name]
        end = self.pos + len(chunk)
        if end > len(data):
            data.extend(b"\x00" * (end - len(data)))
        data[self.pos:end] = chunk
        self.pos = end
        return len(chunk)

    def seek(self, pos: int) -> None:
        self.pos = pos

    def close(self) -> None:
        pass


class CannedSocket:
    """A connected socket whose peer answers ``reply`` and records what was sent."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.sent = b""

    def send(self, data: bytes) -> int:
        self.sent += bytes(data)
        return len(data)

    def recv(self, n: int) -> bytes:
        out, self.reply = self.reply[:n], self.reply[n:]
        return out

    def settimeout(self, t: "float | None") -> None:
        pass

    def close(self) -> None:
        pass


class MemHal(Hal):
    def __init__(self) -> None:
        self.files: dict[str, bytearray] = {}
        self.now = 1000
        # canned answers for the next connect() calls, in order (None: unreachable)
        self.replies: list[bytes | None] = []
        self.sockets: list[CannedSocket] = []  # what was sent, request by request
        self.connects: list[tuple[str, int]] = []
        self.resets = 0
        self.led = False
        self.image = bytearray()
        self.slots: dict[str, Any] = {"active": "a", "previous": None, "good": False}

    def mac(self) -> str:
        return "02:00:00:00:00:01"

    def ticks_ms(self) -> int:
        return self.now

    def time_s(self) -> float:
        return 1767225600.25  # 2026-01-01T00:00:00.250Z

    def sleep_ms(self, ms: int) -> None:
        self.now += ms

    def random_hex(self, n: int) -> str:
        return "ab" * (n // 2)

    def read(self, name: str) -> "bytes | None":
        data = self.files.get(name)
        return None if data is None else bytes(data)

    def write(self, name: str, data: bytes) -> None:
        self.files[name] = bytearray(data)

    def open(self, name: str, mode: str) -> "Any":
        return MemFile(self.files, name, mode)

    def remove(self, name: str) -> None:
        self.files.pop(name, None)

    def exists(self, name: str) -> bool:
        return name in self.files

    def ip(self) -> str:
        return "10.0.0.9"

    def rssi(self) -> "int | None":
        return -55

    def connect(self, host: str, port: int, timeout_s: float) -> "Any":
        self.connects.append((host, port))
        if not self.replies:
            raise OSError(111, "connection refused")
        reply = self.replies.pop(0)
        if reply is None:
            raise OSError(113, "host unreachable")
        sock = CannedSocket(reply)
        self.sockets.append(sock)
        return sock

    def advertise(self, service: str, port: int, txt: "dict[str, Any]") -> None:
        pass

    def free_memory(self) -> int:
        return 100000

    def set_led(self, on: bool) -> None:
        self.led = on

    def reset(self) -> None:
        self.resets += 1
        raise Reboot("reset")

    def image_begin(self) -> None:
        self.image = bytearray()

    def image_write(self, chunk: bytes) -> None:
        self.image.extend(chunk)

    def image_switch(self) -> None:
        self.slots = {"active": "b" if self.slots["active"] == "a" else "a",
                      "previous": self.slots["active"], "good": False}

    def image_rollback(self) -> None:
        self.slots = {"active": self.slots["previous"], "previous": None, "good": True}

    def image_mark_good(self) -> None:
        self.slots["good"] = True


def http_reply(status: int, body: "bytes | str" = b"", headers: str = "") -> bytes:
    if isinstance(body, str):
        body = body.encode()
    return ("HTTP/1.0 %d X\r\nContent-Length: %d\r\n%s\r\n" % (status, len(body), headers)).encode() + body
