"""Readings into the hub: pseudo-terminals that the serial handler opens as its ports (the
harness writes the sensor side), and POSTs to the LAN ingest API when the instance has one.

Every reading carries its sequence number as the property ``n`` (not ``seq``: that is the
contract's per-device counter in every state payload); the harness keeps each one's send time
(``time.time_ns()``) so the subscriber's arrival times give end-to-end latency, and the
numbers that never arrive are the losses.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import tty
from array import array
from collections.abc import Callable

import requests

LINE = b'{"id":"%s","temperature":%.1f,"n":%d}\n'


def _foreign_ptys() -> set[str]:
    """/dev/pts paths named in the instance files of serial handlers running on this machine."""
    import json
    from pathlib import Path
    found: set[str] = set()
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or b"services.serial_handler" not in (
                    proc / "cmdline").read_bytes():
                continue
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_bytes().decode(
                errors="replace").split("\0") if "=" in kv)
            path = Path(env.get("INSTANCES_DIR", "instances"))
            if not path.is_absolute():
                path = Path(os.readlink(proc / "cwd")) / path
            doc = json.loads((path / f"{env.get('INSTANCE_NAME', 'demo')}.json").read_text())
            for sensor in doc.get("config", {}).get("sensors", []):
                port = str(sensor.get("source", {}).get("port", ""))
                if port.startswith("/dev/pts/"):
                    found.add(port)
        except (OSError, ValueError, AttributeError):
            continue
    return found


def _lockable(path: str) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class Ptys:
    """``n`` pseudo-terminals; ``paths`` go into the instance file as serial ports."""

    def __init__(self, n: int) -> None:
        self.masters: list[int] = []
        self._slaves: list[int] = []
        self.paths: list[str] = []
        refused: list[int] = []
        taken = _foreign_ptys()
        while len(self.masters) < n:
            master, slave = os.openpty()
            if os.ttyname(slave) in taken or not _lockable(os.ttyname(slave)):
                # The serial handler opens ttys with an exclusive flock; another instance on
                # this machine (a test's, left running) may keep retrying a /dev/pts/N of its
                # own that no longer exists, and it would grab ours: skip those numbers.
                refused += [master, slave]
                if len(refused) > 40:
                    raise RuntimeError("no lockable pseudo-terminal found")
                continue
            tty.setraw(slave)  # no echo, no line editing: the handler sees bytes as written
            os.set_blocking(master, False)  # a full port must not hold up the others
            self.masters.append(master)
            self._slaves.append(slave)  # kept open so the pty lives while the handler reopens
            self.paths.append(os.ttyname(slave))
        for fd in refused:
            os.close(fd)

    def close(self) -> None:
        for fd in self.masters + self._slaves:
            with contextlib.suppress(OSError):
                os.close(fd)


def write_all(fd: int, body: bytes) -> None:
    view = memoryview(body)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            time.sleep(0.0002)


class Feeder:
    """Writes readings to the ptys (``ports``: each master fd with the device ids on it) and
    remembers every reading's send time by its ``seq``.

    ``blast`` is closed-loop: at most ``window`` readings sent and not yet seen by the
    subscriber (``received()``), so the hub's queues stay short and the figure is the rate the
    hub sustains, not how fast a backlog can grow.
    """

    def __init__(self, ports: list[tuple[int, list[str]]], *, capacity: int,
                 received: Callable[[], int]) -> None:
        self.ports = [(fd, [d.encode() for d in ids]) for fd, ids in ports]
        self.sent_ns = array("q", bytes(8 * capacity))
        self.sent = 0
        self._received = received
        self._lock = threading.Lock()

    def take_seq(self, now: int) -> int:
        """A seq for a reading sent by another path (the ingest API); -1 when full."""
        with self._lock:
            seq = self.sent
            if seq >= len(self.sent_ns):
                return -1
            self.sent_ns[seq] = now
            self.sent += 1
            return seq

    def blast(self, seconds: float, *, window: int, chunk: int = 20) -> tuple[int, int]:
        """As fast as the hub takes them for ``seconds``; returns (start_ns, end_ns)."""
        start = time.time_ns()
        end = start + int(seconds * 1e9)
        turn = 0
        base = self.sent  # received() counts from the start of this run
        while True:
            now = time.time_ns()
            if now >= end or self.sent + chunk > len(self.sent_ns):
                break
            if self.sent - base - self._received() > window:
                time.sleep(0.0005)
                continue
            # several lines per write, like a busy bus; the ports take turns
            fd, ids = self.ports[turn % len(self.ports)]
            with self._lock:
                first = self.sent
                self.sent += chunk
                for seq in range(first, first + chunk):
                    self.sent_ns[seq] = now
            body = b"".join(LINE % (ids[seq % len(ids)], 20.0 + (seq % 100) / 10, seq)
                            for seq in range(first, first + chunk))
            write_all(fd, body)
            turn += 1
        return start, time.time_ns()

    def paced(self, rate: float, seconds: float) -> tuple[int, int]:
        """``rate`` readings/s spread evenly over the ports, each written and timed alone."""
        lanes = [(fd, d) for fd, ids in self.ports for d in ids]
        period = 1e9 / rate
        start = time.time_ns()
        n = min(int(rate * seconds), len(self.sent_ns) - self.sent)
        for k in range(n):
            due = start + int(k * period)
            wait = due - time.time_ns()
            if wait > 300_000:
                time.sleep((wait - 200_000) / 1e9)
            fd, dev = lanes[k % len(lanes)]
            now = time.time_ns()
            seq = self.take_seq(now)
            write_all(fd, LINE % (dev, 20.0 + (seq % 100) / 10, seq))
        return start, time.time_ns()

    def cycle(self, value: float) -> int:
        """One reading for every device, all ports in turn, as fast as the ptys take them
        (the ``seq`` of a cycle is its first one); returns the start time."""
        start = time.time_ns()
        bodies = []
        for fd, ids in self.ports:
            lines = []
            for dev in ids:
                seq = self.take_seq(start)
                lines.append(LINE % (dev, value, seq))
            bodies.append((fd, b"".join(lines)))
        pending = [(fd, memoryview(body)) for fd, body in bodies]
        while pending:  # interleaved: every port's handler thread gets work at once
            moved = False
            rest = []
            for fd, view in pending:
                left = view
                try:
                    n = os.write(fd, view)
                    left = view[n:]
                    moved = moved or n > 0
                except BlockingIOError:
                    pass
                if left:
                    rest.append((fd, left))
            pending = rest
            if pending and not moved:
                time.sleep(0.0002)
        return start


class IngestPoster:
    """POSTs readings to ``/api/ingest`` (the LAN API), one reading per request, in a thread
    of its own; used only when the instance answers there."""

    def __init__(self, url: str, probe_id: str, token: str) -> None:
        self.url = url
        self.probe_id = probe_id
        self.session = requests.Session()
        self.session.trust_env = False
        self.headers = {"X-Token": token}

    def available(self) -> bool:
        try:
            resp = self.session.post(self.url, json={"probe_id": self.probe_id,
                                                     "temperature_c": 21.0, "n": -1},
                                     headers=self.headers, timeout=2)
        except requests.RequestException:
            return False
        return resp.status_code < 300

    def run(self, feeder: Feeder, stop: threading.Event) -> int:
        """POST readings one after the other until ``stop``; returns how many."""
        n = 0
        while not stop.is_set():
            seq = feeder.take_seq(time.time_ns())
            if seq < 0:
                break
            try:
                self.session.post(self.url, json={"probe_id": self.probe_id,
                                                  "temperature_c": 21.5, "n": seq},
                                  headers=self.headers, timeout=2)
                n += 1
            except requests.RequestException:
                pass
        return n
