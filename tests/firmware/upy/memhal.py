"""A HAL in memory, for the logic checks that run under CPython and under a real MicroPython
alike: files are bytearrays, the clock moves when told, sockets replay canned bytes. Written in
the subset both interpreters share (no typing at run time, no dataclasses, no pathlib)."""

from firmware.hal import Hal, Reboot


class MemFile:
    def __init__(self, files, name, mode):
        self.files = files
        self.name = name
        if "w" in mode:
            files[name] = bytearray()
        elif name not in files:
            raise OSError(2, "no such file: " + name)
        self.pos = 0

    def read(self, n=-1):
        data = self.files[self.name]
        end = len(data) if n < 0 else min(len(data), self.pos + n)
        out = bytes(data[self.pos:end])
        self.pos = end
        return out

    def write(self, chunk):
        data = self.files[self.name]
        end = self.pos + len(chunk)
        if end > len(data):
            data.extend(b"\x00" * (end - len(data)))
        data[self.pos:end] = chunk
        self.pos = end
        return len(chunk)

    def seek(self, pos):
        self.pos = pos

    def close(self):
        pass


class CannedSocket:
    """A connected socket whose peer answers ``reply`` and records what was sent."""

    def __init__(self, reply):
        self.reply = reply
        self.sent = b""

    def send(self, data):
        self.sent += bytes(data)
        return len(data)

    def recv(self, n):
        out, self.reply = self.reply[:n], self.reply[n:]
        return out

    def settimeout(self, t):
        pass

    def close(self):
        pass


class MemHal(Hal):
    def __init__(self):
        self.files = {}
        self.now = 1000
        self.replies = []  # canned answers for the next connect() calls, in order
        self.connects = []
        self.resets = 0
        self.led = False
        self.image = bytearray()
        self.slots = {"active": "a", "previous": None, "good": False}

    def mac(self):
        return "02:00:00:00:00:01"

    def ticks_ms(self):
        return self.now

    def time_s(self):
        return 1767225600.25  # 2026-01-01T00:00:00.250Z

    def sleep_ms(self, ms):
        self.now += ms

    def random_hex(self, n):
        return "ab" * (n // 2)

    def read(self, name):
        data = self.files.get(name)
        return None if data is None else bytes(data)

    def write(self, name, data):
        self.files[name] = bytearray(data)

    def open(self, name, mode):
        return MemFile(self.files, name, mode)

    def remove(self, name):
        self.files.pop(name, None)

    def exists(self, name):
        return name in self.files

    def ip(self):
        return "10.0.0.9"

    def rssi(self):
        return -55

    def connect(self, host, port, timeout_s):
        self.connects.append((host, port))
        if not self.replies:
            raise OSError(111, "connection refused")
        reply = self.replies.pop(0)
        if reply is None:
            raise OSError(113, "host unreachable")
        return CannedSocket(reply)

    def advertise(self, service, port, txt):
        pass

    def free_memory(self):
        return 100000

    def set_led(self, on):
        self.led = on

    def reset(self):
        self.resets += 1
        raise Reboot("reset")

    def image_begin(self):
        self.image = bytearray()

    def image_write(self, chunk):
        self.image.extend(chunk)

    def image_switch(self):
        self.slots = {"active": "b" if self.slots["active"] == "a" else "a",
                      "previous": self.slots["active"], "good": False}

    def image_rollback(self):
        self.slots = {"active": self.slots["previous"], "previous": None, "good": True}

    def image_mark_good(self):
        self.slots["good"] = True


def http_reply(status, body=b"", headers=""):
    if isinstance(body, str):
        body = body.encode()
    return ("HTTP/1.0 %d X\r\nContent-Length: %d\r\n%s\r\n" % (status, len(body), headers)).encode() + body
