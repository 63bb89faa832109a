"""Serial test support: a fake sensor board on the far end of a real pseudo-terminal, reached
through a symlink the way udev's /dev/serial/by-id names a USB-serial adapter, and a recorder
standing in for the pusher."""

from __future__ import annotations

import os
import select
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.serial_handler.core import SerialHandler
from shared.instance import Instance, parse_instance
from tests.helpers import Recorder, wait_for


class FakeBoard:
    """The sensor's side of a pty. ``unplug`` closes it and removes the symlink (the USB cable
    pulled); ``plug`` makes a new pty behind the same symlink (plugged back in)."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = -1
        self._slave = -1
        self._buf = b""
        self.plug()

    @property
    def path(self) -> str:
        return str(self.link)

    def plug(self) -> None:
        self.master, self._slave = os.openpty()
        # Raw before the hub opens it, so a line sent early is neither echoed nor mangled.
        tty.setraw(self._slave)
        os.symlink(os.ttyname(self._slave), self.link)
        self._buf = b""

    def unplug(self) -> None:
        self.link.unlink()
        os.close(self.master)
        os.close(self._slave)
        self.master = self._slave = -1

    @property
    def slave_fd(self) -> int:
        return self._slave

    def send(self, text: str | bytes, end: bytes = b"\n") -> None:
        data = text.encode() if isinstance(text, str) else text
        os.write(self.master, data + end)

    def read_line(self, timeout: float = 3.0) -> bytes:
        """The next line the hub wrote, with its line ending."""
        return wait_for(self._take_line, timeout=timeout, interval=0,
                        what=f"a line from the hub on {self.link}")

    def _take_line(self) -> bytes | None:
        if b"\n" not in self._buf and b"\r" not in self._buf:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                self._buf += os.read(self.master, 4096)
        for i, ch in enumerate(self._buf):
            if ch in b"\r\n":
                end = i + 2 if self._buf[i:i + 2] == b"\r\n" else i + 1
                line, self._buf = self._buf[:end], self._buf[end:]
                return line
        return None

    def pending(self) -> bytes:
        """Whatever the hub has written and no one has read yet (without waiting)."""
        ready, _, _ = select.select([self.master], [], [], 0)
        if ready:
            self._buf += os.read(self.master, 4096)
        data, self._buf = self._buf, b""
        return data

    def close(self) -> None:
        if self.master >= 0:
            self.unplug()


BoardFactory = Callable[..., FakeBoard]  # the ``board`` fixture
HandlerFactory = Callable[..., SerialHandler]  # the ``start_handler`` fixture


def serial_sensor(sensor_id: str, port: str, **source: Any) -> dict[str, Any]:
    interval = source.pop("interval", None)
    entry: dict[str, Any] = {"sensor_id": sensor_id, "sensor_type": "climate",
                             "source": {"type": "serial", "port": port, **source}}
    if interval is not None:
        entry["interval"] = interval
    return entry


def make_instance(*sensors: dict[str, Any]) -> Instance:
    return parse_instance({"instance_id": "serial_test", "friendly_name": "serial test",
                           "config": {"sensors": list(sensors)}})


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Callable[[str], FakeBoard]]:
    """``board(name)``: a fake board on a pty behind ``tmp_path/name``."""
    made: list[FakeBoard] = []

    def make(name: str = "ttyUSB-sensor") -> FakeBoard:
        b = FakeBoard(tmp_path / name)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def start_handler(recorder: Recorder) -> Iterator[Callable[..., SerialHandler]]:
    """``start_handler(*sensors)``: a started SerialHandler with a fast retry, stopped after."""
    started: list[SerialHandler] = []

    def start(*sensors: dict[str, Any], bad_line_report_every: float = 0.0) -> SerialHandler:
        handler = SerialHandler(make_instance(*sensors), recorder, backoff=(0.05, 0.2),
                                bad_line_report_every=bad_line_report_every)
        handler.start()
        started.append(handler)
        # pyserial flushes the input when it opens a port: a board's line sent earlier is lost,
        # as with real hardware. Tests send once every port has been tried.
        wait_for(lambda: all(w.opens + w.open_failures for w in handler.ports.values()),
                 what="every port to be tried once")
        return handler

    yield start
    for h in started:
        h.stop()
