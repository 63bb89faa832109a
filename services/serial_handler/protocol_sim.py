"""``sim://`` for pyserial: a simulated sensor board that speaks our line protocol, so a demo
runs with no hardware and through exactly the code path of a real port.

    sim://NAME?profile=climate&ids=temp_a,temp_b&fail=0.05&interval=0&seed=7

- ``profile``: ``climate`` (temperature 22 °C ± 3 °C over the day plus noise, humidity
  45 % ± 10 %) or ``relay`` (a writable on/off switch that acknowledges commands).
- ``ids``: the sensor ids on this board; it answers read requests for them.
- ``fail``: the share of read requests it leaves unanswered (the hub reports READ_TIMEOUT).
- ``interval``: when > 0, it also prints readings by itself every ``interval`` seconds.
"""

from __future__ import annotations

import math
import queue
import random
import threading
import time
import urllib.parse
from typing import Any

import orjson
from serial import PortNotOpenError, SerialBase, SerialException


def climate(now: float, rng: random.Random) -> dict[str, Any]:
    local = time.localtime(now)
    day = (local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec) / 86400
    # Warmest mid-afternoon, most humid before dawn.
    phase = math.sin(2 * math.pi * (day - 0.375))
    return {
        "temperature": round(22 + 3 * phase + rng.gauss(0, 0.15), 2),
        "humidity": round(45 - 10 * phase + rng.gauss(0, 0.8), 1),
    }


class Serial(SerialBase):  # type: ignore[misc]
    is_open: bool  # set by SerialBase

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._out: queue.Queue[bytes | None] = queue.Queue()
        self._pending = b""
        self._inbuf = b""
        self._ids: list[str] = []
        self._profile = "climate"
        self._fail = 0.0
        self._interval = 0.0
        self._rng = random.Random()
        self._switch: dict[str, str] = {}
        self._stop = threading.Event()
        super().__init__(*args, **kwargs)

    # --- SerialBase ------------------------------------------------------------------------------
    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        self.from_url(self.port)
        self.is_open = True
        self._stop.clear()
        if self._interval > 0:
            threading.Thread(target=self._stream, name=f"sim-{self.port}", daemon=True).start()

    def close(self) -> None:
        if self.is_open:
            self.is_open = False
            self._stop.set()
            self._out.put(None)
        super().close()

    def _reconfigure_port(self) -> None:
        pass

    def from_url(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "sim":
            raise SerialException(f"expected sim://NAME?..., got {url!r}")
        opts = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
        unknown = set(opts) - {"profile", "ids", "fail", "interval", "seed"}
        if unknown:
            raise SerialException(f"sim:// does not know the option(s) {sorted(unknown)}")
        self._profile = opts.get("profile", "climate")
        if self._profile not in ("climate", "relay"):
            raise SerialException(f"sim:// profile must be climate or relay, not {self._profile!r}")
        self._ids = [i for i in opts.get("ids", parts.netloc).split(",") if i]
        try:
            self._fail = float(opts.get("fail", "0"))
            self._interval = float(opts.get("interval", "0"))
            if "seed" in opts:
                self._rng.seed(int(opts["seed"]))
        except ValueError as exc:
            raise SerialException(f"bad sim:// option in {url!r}: {exc}") from exc
        self._switch = {i: "off" for i in self._ids}

    @property
    def in_waiting(self) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        return len(self._pending) + sum(len(b or b"") for b in list(self._out.queue))

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise PortNotOpenError()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while len(self._pending) < size:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining == 0.0 and self._pending:
                break
            try:
                chunk = self._out.get(timeout=remaining) if remaining != 0.0 else self._out.get_nowait()
            except queue.Empty:
                break
            if chunk is None:
                break
            self._pending += chunk
            if self._out.empty():
                break
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def write(self, data: bytes) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        self._inbuf += bytes(data)
        while b"\n" in self._inbuf:
            line, self._inbuf = self._inbuf.split(b"\n", 1)
            self._answer(line.strip())
        return len(data)

    def reset_input_buffer(self) -> None:
        self._pending = b""

    def reset_output_buffer(self) -> None:
        self._inbuf = b""

    # --- the simulated board ---------------------------------------------------------------------
    def _say(self, obj: dict[str, Any]) -> None:
        self._out.put(orjson.dumps(obj) + b"\n")

    def _reading(self, device_id: str) -> dict[str, Any]:
        if self._profile == "relay":
            return {"id": device_id, "state": self._switch[device_id]}
        return {"id": device_id, **climate(time.time(), self._rng)}

    def _answer(self, line: bytes) -> None:
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            return  # a real board ignores what it cannot parse
        device_id = msg.get("id") if isinstance(msg, dict) else None
        if device_id not in self._ids:
            return
        if msg.get("read"):
            if self._rng.random() >= self._fail:
                self._say(self._reading(device_id))
        elif "cmd_id" in msg:
            values = msg.get("values") or {}
            state = str(values.get("state", "")).lower()
            if self._profile != "relay" or state not in ("on", "off"):
                self._say({"id": device_id, "ack": msg["cmd_id"], "ok": False,
                           "error": "expected values.state = on|off"})
                return
            self._switch[device_id] = state
            self._say({"id": device_id, "ack": msg["cmd_id"], "ok": True,
                       "result": {"state": state}})
            self._say(self._reading(device_id))

    def _stream(self) -> None:
        while not self._stop.wait(self._interval):
            for device_id in self._ids:
                self._say(self._reading(device_id))
