"""A small MQTT 3.1.1 client over the HAL's sockets, with umqtt.simple's shape (connect, publish,
subscribe, check_msg), written here so that it runs the same on the board and on the host and
is covered by the same tests. QoS 0 and 1; a QoS 1 publish waits for its PUBACK, so the caller
knows the broker has the message before it forgets it (the offline buffer depends on that)."""

from .hal import Hal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = (
    1, 2, 3, 4, 8, 9, 12, 13, 14)
MAX_PACKET = 16384  # a config document is at most a few KiB; anything larger is dropped


class MqttError(OSError):
    """The broker refused us, went away, or said something this client cannot read."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: "Any") -> bytes:
    raw = s if isinstance(s, bytes) else s.encode()
    return bytes([len(raw) >> 8, len(raw) & 0xFF]) + raw


class MqttClient:
    def __init__(self, hal: Hal, client_id: str, host: str, port: int = 1883, *,
                 keepalive: int = 60, timeout_s: float = 3.0) -> None:
        self.hal = hal
        self.client_id = client_id
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.timeout_s = timeout_s
        self.sock: Any = None
        self.pid = 0
        self.callback: Any = None
        self.last_io = 0

    def connected(self) -> bool:
        return self.sock is not None

    def _send(self, ptype: int, flags: int, body: bytes) -> None:
        data = bytes([(ptype << 4) | flags]) + _varint(len(body)) + body
        view = memoryview(data)
        sent = 0
        try:
            while sent < len(data):
                sent += self.sock.send(view[sent:])
        except OSError as exc:
            self.close()
            raise MqttError("send: %s" % exc) from exc
        self.last_io = self.hal.ticks_ms()

    def _read_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise MqttError("the broker closed the connection")
            buf += chunk
        return buf

    def _read_packet(self) -> "tuple[int, int, bytes]":
        try:
            first = self._read_exact(1)[0]
            length = 0
            shift = 0
            for _ in range(4):
                byte = self._read_exact(1)[0]
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            if length > MAX_PACKET:
                raise MqttError("a packet of %d bytes" % length)
            body = self._read_exact(length) if length else b""
        except OSError as exc:
            self.close()
            raise MqttError("receive: %s" % exc) from exc
        return first >> 4, first & 0x0F, body

    def connect(self) -> None:
        self.sock = self.hal.connect(self.host, self.port, self.timeout_s)
        self.sock.settimeout(self.timeout_s)
        body = _str("MQTT") + bytes([4, 0x02, self.keepalive >> 8, self.keepalive & 0xFF])
        self._send(CONNECT, 0, body + _str(self.client_id))
        ptype, _flags, resp = self._read_packet()
        if ptype != CONNACK or len(resp) < 2 or resp[1] != 0:
            code = resp[1] if len(resp) > 1 else -1
            self.close()
            raise MqttError("the broker refused the connection (CONNACK %d)" % code)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def disconnect(self) -> None:
        if self.sock is not None:
            try:
                self._send(DISCONNECT, 0, b"")
            except MqttError:
                pass
            self.close()

    def _next_pid(self) -> int:
        self.pid = self.pid % 65535 + 1
        return self.pid

    def publish(self, topic: str, msg: bytes, *, retain: bool = False, qos: int = 0) -> None:
        flags = (qos << 1) | (1 if retain else 0)
        body = _str(topic)
        pid = 0
        if qos:
            pid = self._next_pid()
            body += bytes([pid >> 8, pid & 0xFF])
        self._send(PUBLISH, flags, body + msg)
        while qos:
            ptype, _f, resp = self._read_packet()
            if ptype == PUBACK and len(resp) >= 2 and (resp[0] << 8 | resp[1]) == pid:
                return
            self._dispatch(ptype, _f, resp)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        pid = self._next_pid()
        self._send(SUBSCRIBE, 0x02, bytes([pid >> 8, pid & 0xFF]) + _str(topic) + bytes([qos]))
        while True:
            ptype, _f, resp = self._read_packet()
            if ptype == SUBACK:
                if len(resp) < 3 or resp[2] == 0x80:
                    raise MqttError("the broker refused the subscription to %s" % topic)
                return
            self._dispatch(ptype, _f, resp)

    def _dispatch(self, ptype: int, flags: int, body: bytes) -> None:
        if ptype != PUBLISH:
            return  # PINGRESP and stray acks
        tlen = (body[0] << 8) | body[1]
        topic = body[2:2 + tlen].decode()
        rest = body[2 + tlen:]
        qos = (flags >> 1) & 3
        if qos:
            pid = rest[:2]
            rest = rest[2:]
            self._send(PUBACK, 0, pid)
        if self.callback is not None:
            self.callback(topic, rest)

    def check_msg(self, wait_ms: int = 0) -> bool:
        """Handle one incoming packet if one arrives within ``wait_ms``; keeps the link alive."""
        if self.sock is None:
            raise MqttError("not connected")
        if self.hal.ticks_diff(self.hal.ticks_ms(), self.last_io) > self.keepalive * 500:
            self._send(PINGREQ, 0, b"")
        if not self.hal.wait_readable(self.sock, wait_ms):
            return False
        ptype, flags, body = self._read_packet()
        self._dispatch(ptype, flags, body)
        return True
