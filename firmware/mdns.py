"""A minimal mDNS responder for one service instance, as packets in and packets out.

MicroPython's ESP32 port answers for its own host name but cannot advertise a service, so the
probe answers the hub's ``_temps-probe._tcp.local.`` browse itself: PTR → instance, SRV → host and
port, TXT → ``id``, ``name``, ``fw``, ``mac``, A → address. The socket work is the HAL's; this module
only builds and reads DNS messages (RFC 1035 / 6762), so it is tested on the host against the same
zeroconf browser the hub uses.
"""

TYPE_A = 1
TYPE_PTR = 12
TYPE_TXT = 16
TYPE_SRV = 33
TYPE_ANY = 255
CLASS_IN = 1
CACHE_FLUSH = 0x8000
GROUP = "224.0.0.251"
PORT = 5353

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode()
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def read_name(packet: bytes, offset: int) -> "tuple[str, int]":
    """``(name, offset after it)``; follows compression pointers (bounded, so a loop cannot
    hang the probe)."""
    labels: list[str] = []
    end = -1
    for _ in range(64):
        length = packet[offset]
        if length & 0xC0 == 0xC0:
            if end < 0:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | packet[offset + 1]
            continue
        if length == 0:
            return ".".join(labels), (end if end >= 0 else offset + 1)
        labels.append(packet[offset + 1:offset + 1 + length].decode())
        offset += 1 + length
    raise ValueError("name too long or a pointer loop")


def questions(packet: bytes) -> "list[tuple[str, int]]":
    """The ``(name, type)`` questions of a query; nothing for a response or a short packet."""
    if len(packet) < 12 or packet[2] & 0x80:
        return []
    count = (packet[4] << 8) | packet[5]
    out = []
    offset = 12
    for _ in range(min(count, 16)):
        name, offset = read_name(packet, offset)
        qtype = (packet[offset] << 8) | packet[offset + 1]
        offset += 4
        out.append((name.lower(), qtype))
    return out


def _u16(n: int) -> bytes:
    return bytes([(n >> 8) & 0xFF, n & 0xFF])


def _u32(n: int) -> bytes:
    return _u16(n >> 16) + _u16(n & 0xFFFF)


def _record(name: str, rtype: int, rclass: int, ttl: int, rdata: bytes) -> bytes:
    return encode_name(name) + _u16(rtype) + _u16(rclass) + _u32(ttl) + _u16(len(rdata)) + rdata


class Responder:
    """Answers for one instance ``<label>.<service>.local`` on ``<label>.local``."""

    def __init__(self, service: str, label: str, port: int, ip: str,
                 txt: "dict[str, Any]") -> None:
        self.service = service.rstrip(".") + ".local" if not service.endswith(".local") else service
        self.instance = label + "." + self.service
        self.host = label + ".local"
        self.port = port
        self.ip = ip
        self.txt = txt

    def wants(self, packet: bytes) -> bool:
        """Whether a query asks for something this responder owns."""
        try:
            asked = questions(packet)
        except (IndexError, ValueError, UnicodeError):
            return False  # garbage on the multicast group: not ours to answer
        mine = (self.service.lower(), self.instance.lower(), self.host.lower())
        return any(name in mine and qtype in (TYPE_PTR, TYPE_SRV, TYPE_TXT, TYPE_A, TYPE_ANY)
                   for name, qtype in asked)

    def answer(self, ttl: int = 120) -> bytes:
        """The whole advertisement; ``ttl=0`` says goodbye."""
        txt = b""
        for key, value in self.txt.items():
            raw = ("%s=%s" % (key, value)).encode()[:255]
            txt += bytes([len(raw)]) + raw
        srv = _u16(0) + _u16(0) + _u16(self.port) + encode_name(self.host)
        addr = bytes(int(part) for part in self.ip.split("."))
        records = [
            _record(self.service, TYPE_PTR, CLASS_IN, ttl * 37, encode_name(self.instance)),
            _record(self.instance, TYPE_SRV, CLASS_IN | CACHE_FLUSH, ttl, srv),
            _record(self.instance, TYPE_TXT, CLASS_IN | CACHE_FLUSH, ttl * 37, txt),
            _record(self.host, TYPE_A, CLASS_IN | CACHE_FLUSH, ttl, addr),
        ]
        header = _u16(0) + _u16(0x8400) + _u16(0) + _u16(len(records)) + _u16(0) + _u16(0)
        return header + b"".join(records)


def answer_pending(sock: "Any", responder: Responder, limit: int = 4) -> int:
    """Answer the queries waiting on the non-blocking multicast socket ``sock`` (at most
    ``limit``, so one step of the probe loop stays short); how many were answered."""
    answered = 0
    for _ in range(limit):
        try:
            packet, sender = sock.recvfrom(1500)
        except OSError:
            return answered  # nothing waiting (EAGAIN)
        if responder.wants(packet):
            sock.sendto(responder.answer(), (GROUP, PORT))
            if sender[1] != PORT:  # a one-shot querier listens on its own port
                sock.sendto(responder.answer(), sender)
            answered += 1
    return answered
