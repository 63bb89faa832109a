"""One worker per serial port: its own reader thread (so one stuck port never delays another),
reconnects with backoff when the port goes away, a poll thread that asks sensors that answer
only when asked on the port's schedule (``schedule.py``), fresh reads and commands written back
in the line protocol."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import serial

from shared.errors import ReadError
from shared.instance import SerialSource
from shared.models import CommandRequest, CommandResult, ErrorObs, EventObs, LinkObs, ReadingObs
from shared.processes import FRESH_READ_TIMEOUT_S

from . import protocol
from .schedule import PortSchedule

log = logging.getLogger(__name__)

# pyserial looks for ``<package>.protocol_<scheme>`` modules: this makes sim:// a URL like loop://.
if "services.serial_handler" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("services.serial_handler")

Emit = Callable[[ReadingObs | ErrorObs | EventObs | LinkObs], None]
# (port, error_code, message, device_id): every bad line, for ``/errors``; not rate-limited.
OnBadLine = Callable[[str, str, str, str | None], None]

READ_GRANULARITY = 0.2  # s; how often a blocked reader looks up to see whether it should stop
STABLE_AFTER = 10.0  # s a port must stay open before the retry delay starts again from the least
# A fresh read of a streaming sensor waits for its next line, but never past the aggregator's
# wait for the answer (the command timeout chain in shared/processes.py).
FRESH_READ_CAP = FRESH_READ_TIMEOUT_S


@dataclass(slots=True)
class SensorSlot:
    sensor_id: str
    interval: float
    writable: bool
    read_timeout: float | None = None  # this sensor's own; None: the port's
    last: ReadingObs | None = None
    waiting_reads: list[Future[ReadingObs]] = field(default_factory=list)
    bad_lines: int = 0
    bad_reported_at: float = -math.inf
    bad_suppressed: int = 0


def is_device_path(url: str) -> bool:
    """A filesystem path (``/dev/ttyUSB0``, a udev symlink), not a pyserial URL."""
    return "://" not in url


class PortWorker:
    def __init__(self, url: str, config: SerialSource, slots: list[SensorSlot], emit: Emit,
                 *, on_bad_line: OnBadLine, clock: Callable[[], float] = time.time,
                 backoff: tuple[float, float] = (0.5, 10.0),
                 bad_line_report_every: float = 1.0) -> None:
        self.url = url
        self.config = config
        self.slots = {s.sensor_id: s for s in slots}
        self._emit = emit
        self._on_bad_line = on_bad_line
        self._clock = clock
        self._backoff = backoff
        self._bad_every = bad_line_report_every
        # A port with one sensor takes lines without an id (``temperature=21.5``) as its own.
        self._default_id = next(iter(self.slots)) if len(self.slots) == 1 else None
        self._port: serial.SerialBase | None = None
        self._lock = threading.Lock()  # guards _port, slot futures and _acks
        self._write_lock = threading.Lock()
        self._acks: dict[tuple[str, str], Future[CommandResult]] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()  # wakes the poll loop early (port just came up, stop)
        self._threads: list[threading.Thread] = []
        self._down_announced = False
        self._unknown_ids: set[str] = set()
        self.down_reason: str | None = "not opened yet"
        self.lines = 0
        self.garbage = 0
        self.unknown = 0
        self.opens = 0
        self.open_failures = 0
        self.schedule = PortSchedule(url, [(s.sensor_id, s.interval, self.read_timeout_of(s))
                                           for s in slots])

    def read_timeout_of(self, slot: SensorSlot) -> float:
        """The sensor's own read_timeout, else the port's."""
        return slot.read_timeout or self.config.read_timeout

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        reader = threading.Thread(target=self._read_loop, name=f"serial-{self.url}", daemon=True)
        self._threads.append(reader)
        if self.config.mode == "poll":
            poller = threading.Thread(target=self._poll_loop, name=f"poll-{self.url}", daemon=True)
            self._threads.append(poller)
        for t in self._threads:
            t.start()

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop both threads; the reader closes the port itself (closing it under a blocked
        read from another thread is a race pyserial does not promise to survive)."""
        self._stop.set()
        self._wake.set()
        self._fail_waiters(ReadError("PORT_UNAVAILABLE", f"{self.url}: the handler is stopping"))
        for t in self._threads:
            t.join(timeout)
        self.down_reason = "stopped"

    @property
    def is_up(self) -> bool:
        return self._port is not None

    # --- the reader thread -----------------------------------------------------------------------
    def _open(self) -> serial.SerialBase:
        c = self.config
        extra: dict[str, Any] = {}
        if is_device_path(self.url):
            extra["exclusive"] = True  # two readers on one tty would each get half the lines
        return serial.serial_for_url(
            self.url, baudrate=c.baudrate, bytesize=c.bytesize, parity=c.parity,
            stopbits=c.stopbits, timeout=READ_GRANULARITY, write_timeout=2.0, **extra,
        )

    def _read_loop(self) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            try:
                port = self._open()
            except (serial.SerialException, OSError, ValueError) as exc:
                self.open_failures += 1
                self._went_down(f"cannot open {self.url}: {exc}")
                self._wait_retry(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            if self._stop.is_set():
                port.close()
                return
            opened = time.monotonic()
            self._serve(port)
            # A port that drops soon after opening (a board in a reset loop) backs off as well.
            stable = time.monotonic() - opened >= STABLE_AFTER
            delay = self._backoff[0] if stable else min(delay * 2, self._backoff[1])
            self._wait_retry(delay)

    def _wait_retry(self, delay: float) -> None:
        """Wait ``delay`` before the next open; a device path that was missing is tried again
        as soon as it is back (udev creates /dev/serial/by-id/... when the plug goes in)."""
        if not is_device_path(self.url):
            self._stop.wait(delay)
            return
        missing = not os.path.exists(self.url)
        deadline = time.monotonic() + delay
        while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
            self._stop.wait(min(left, 0.05))
            if missing and os.path.exists(self.url):
                return

    def _serve(self, port: serial.SerialBase) -> None:
        with self._lock:
            self._port = port
        self.opens += 1
        self._came_up()
        try:
            self._pump(port)
        except (serial.SerialException, OSError) as exc:
            if not self._stop.is_set():
                self._went_down(f"{self.url} lost: {exc}")
        except Exception as exc:
            # A bug must not leave the port unread for the rest of the process's life.
            log.exception("reader of %s failed; reopening the port", self.url)
            self._went_down(f"{self.url}: reader failed: {exc}")
        finally:
            with self._lock:
                if self._port is port:
                    self._port = None
            with suppress(Exception):
                port.close()

    def _pump(self, port: serial.SerialBase) -> None:
        framer = protocol.LineFramer()
        while not self._stop.is_set():
            chunk = port.read(max(1, port.in_waiting))
            for raw in framer.feed(chunk) if chunk else ():
                if isinstance(raw, protocol.Overlong):
                    text = raw.head.decode("utf-8", errors="replace")
                    self._garbage(text, f"line longer than {protocol.MAX_LINE} bytes",
                                  protocol.guess_id(text))
                else:
                    self._handle_raw(raw)

    def _handle_raw(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").strip()
        if not line:
            return
        if protocol.is_comment(line):
            log.debug("%s: %s", self.url, line)
            return
        self.lines += 1
        try:
            self._handle(line)
        except Exception:
            log.exception("%s: failed to handle line %r", self.url, protocol.truncate(line))

    def _handle(self, line: str) -> None:
        try:
            msg = protocol.parse_line(line, default_id=self._default_id)
        except protocol.LineError as exc:
            self._garbage(line, exc.reason, exc.device_id or protocol.guess_id(line))
            return
        slot = self.slots.get(msg.device_id)
        if slot is None:
            self._unknown_sensor(msg.device_id, line)
            return
        now = self._clock()
        if isinstance(msg, protocol.Reading):
            reading = ReadingObs(device_id=slot.sensor_id, ts=now, values=msg.values)
            with self._lock:
                slot.last = reading
                waiting, slot.waiting_reads = slot.waiting_reads, []
            self._emit(reading)
            for fut in waiting:
                fut.set_result(reading)
        elif isinstance(msg, protocol.Failure):
            self._emit(ErrorObs(device_id=slot.sensor_id, ts=now, error_code=msg.code,
                                message=msg.message or f"sensor reported {msg.code}",
                                severity=msg.severity))
            with self._lock:
                waiting, slot.waiting_reads = slot.waiting_reads, []
            for fut in waiting:
                fut.set_exception(ReadError(msg.code, msg.message or msg.code))
        elif isinstance(msg, protocol.Event):
            self._emit(EventObs(device_id=slot.sensor_id, ts=now, event=msg.event, data=msg.data))
        else:
            with self._lock:
                ack = self._acks.pop((slot.sensor_id, msg.cmd_id), None)
            if ack is None:
                log.info("%s: acknowledgement for unknown command %s", slot.sensor_id, msg.cmd_id)
            elif msg.ok:
                ack.set_result(CommandResult(status="success", result=msg.result))
            else:
                ack.set_result(CommandResult(status="error", error=msg.error or "sensor refused",
                                             result=msg.result))

    def _garbage(self, line: str, reason: str, device_id: str | None) -> None:
        """Count a bad line, put it on /errors, and make it a device ``error`` of the sensor it
        names (every sensor of the port when it names none), at most once per
        ``bad_line_report_every`` per sensor: a board at the wrong baud rate sends nothing else."""
        self.garbage += 1
        message = f"unparseable line on {self.url} ({reason}): {protocol.truncate(line)!r}"
        known = device_id if device_id in self.slots else None
        self._on_bad_line(self.url, "BAD_LINE", message, known)
        now = self._clock()
        reported = False
        for sensor_id in [known] if known else list(self.slots):
            slot = self.slots[sensor_id]
            slot.bad_lines += 1
            if now - slot.bad_reported_at < self._bad_every:
                slot.bad_suppressed += 1
                continue
            more = slot.bad_suppressed
            slot.bad_reported_at, slot.bad_suppressed = now, 0
            self._emit(ErrorObs(
                device_id=sensor_id, ts=now, error_code="BAD_LINE", severity="warning",
                message=message + (f" ({more} more since the last report)" if more else "")))
            reported = True
        log.log(logging.WARNING if reported else logging.DEBUG, "%s", message)

    def _unknown_sensor(self, device_id: str, line: str) -> None:
        """A good line for a sensor the instance file does not list on this port: on /errors and
        in the log (once per id), but no device's error: it is about none of them."""
        self.unknown += 1
        message = (f"line for sensor {device_id!r}, which the instance file does not list on "
                   f"{self.url}: {protocol.truncate(line)!r}")
        self._on_bad_line(self.url, "UNKNOWN_SENSOR", message, None)
        if device_id not in self._unknown_ids:
            self._unknown_ids.add(device_id)
            log.warning("%s", message)

    # --- transport up and down -------------------------------------------------------------------
    def _came_up(self) -> None:
        log.info("opened %s (%d sensor(s))", self.url, len(self.slots))
        self.down_reason = None
        self._down_announced = False
        now = self._clock()
        self.schedule.restart()  # a new round at once, not one interval later
        for slot in self.slots.values():
            self._emit(LinkObs(device_id=slot.sensor_id, ts=now, up=True))
        self._wake.set()

    def _went_down(self, reason: str) -> None:
        self.down_reason = reason
        if self._down_announced:
            log.debug("%s", reason)  # said once per outage, not once per retry
            return
        self._down_announced = True
        log.warning("%s", reason)
        now = self._clock()
        for sensor_id in self.slots:
            self._emit(LinkObs(device_id=sensor_id, ts=now, up=False, reason=reason))
            self._emit(ErrorObs(device_id=sensor_id, ts=now, error_code="PORT_UNAVAILABLE",
                                message=reason, severity="error"))
        self._fail_waiters(ReadError("PORT_UNAVAILABLE", reason))

    def _fail_waiters(self, err: ReadError) -> None:
        with self._lock:
            waiting = [f for s in self.slots.values() for f in s.waiting_reads]
            for s in self.slots.values():
                s.waiting_reads = []
            acks, self._acks = self._acks, {}
        for fut in waiting:
            fut.set_exception(err)
        for ack in acks.values():
            ack.set_result(CommandResult(status="error", error=err.message))

    # --- writing ---------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        with self._lock:
            port = self._port
        if port is None:
            raise ReadError("PORT_UNAVAILABLE", self.down_reason or f"{self.url} is not open")
        try:
            with self._write_lock:
                port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise ReadError("PORT_UNAVAILABLE", f"writing to {self.url} failed: {exc}") from exc

    def read(self, sensor_id: str, *, timeout: float | None = None) -> ReadingObs:
        """Ask the sensor for a reading now and wait for it; failures are also emitted."""
        slot = self.slots[sensor_id]
        fut: Future[ReadingObs] = Future()
        own = self.read_timeout_of(slot)
        limit = timeout or own
        if self.config.mode == "stream":
            # A streaming sketch may ignore read requests: its next line is the answer then.
            limit = min(max(limit, slot.interval + own), FRESH_READ_CAP)
        with self._lock:
            slot.waiting_reads.append(fut)
        started = time.monotonic()
        try:
            self._write(protocol.read_request(sensor_id, self.config.line_ending))
            reading = fut.result(timeout=limit)
            self._answered(sensor_id, time.monotonic() - started)
            return reading
        except FutureTimeout:
            err = ReadError("READ_TIMEOUT", f"{sensor_id} on {self.url} did not answer within "
                                            f"{limit:g} s")
        except ReadError as exc:
            err = exc
        finally:
            with self._lock:
                if fut in slot.waiting_reads:
                    slot.waiting_reads.remove(fut)
        if err.code == "READ_TIMEOUT":
            self._unanswered(sensor_id, err)
        elif err.code != "PORT_UNAVAILABLE":  # the sensor said it failed: it did answer
            self._answered(sensor_id, time.monotonic() - started)
        raise err

    def _answered(self, sensor_id: str, duration: float) -> None:
        missed = self.schedule.answered(sensor_id, duration)
        if missed:
            log.info("%s on %s answers again after %d unanswered read request(s)", sensor_id,
                     self.url, missed)

    def _unanswered(self, sensor_id: str, err: ReadError) -> None:
        """A device error at the first unanswered request of an outage, not at every round:
        the sensor is then asked less often (see schedule.py) until it answers."""
        if not self.schedule.unanswered(sensor_id):
            log.debug("%s", err.message)
            return
        message = err.message
        if self.config.mode == "poll":
            message += "; asked less often (after the healthy sensors) until it answers"
        self._emit(ErrorObs(device_id=sensor_id, ts=self._clock(), error_code=err.code,
                            message=message))

    def command(self, sensor_id: str, request: CommandRequest) -> CommandResult:
        """Write the command line and wait for the sensor's ack line: ``success`` (ok), ``error``
        (refused, or the port is gone) or ``timeout`` after ``request.timeout_s``."""
        try:
            line = protocol.command_line(sensor_id, request.cmd_id, request.values,
                                         self.config.line_ending)
        except TypeError as exc:  # orjson.JSONEncodeError: a lone surrogate, say
            return CommandResult(status="error", error=f"cannot encode the command: {exc}")
        key = (sensor_id, request.cmd_id)
        fut: Future[CommandResult] = Future()
        with self._lock:
            self._acks[key] = fut
        try:
            self._write(line)
            return fut.result(timeout=request.timeout_s)
        except FutureTimeout:
            return CommandResult(status="timeout", error=f"{sensor_id} did not acknowledge "
                                                         f"within {request.timeout_s:g} s")
        except ReadError as exc:
            return CommandResult(status="error", error=exc.message)
        finally:
            with self._lock:
                if self._acks.get(key) is fut:
                    del self._acks[key]

    # --- the poll thread -------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        """Ask one sensor at a time, as the schedule says; while the port is down nothing is
        due (the schedule restarts when it comes back)."""
        while not self._stop.is_set():
            if not self.is_up:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            sensor_id, wait = self.schedule.next_poll()
            if sensor_id is None:
                # At most 1 s, so a clock that jumped or a lost wake-up costs little.
                self._wake.wait(min(wait, 1.0))
                self._wake.clear()
                continue
            try:
                self.read(sensor_id)
            except ReadError:
                pass  # already emitted as a device error
            except Exception:
                log.exception("polling %s on %s failed", sensor_id, self.url)

    def sensor_status(self, sensor_id: str) -> dict[str, Any]:
        """Its part of ``/sensors``: read_timeout, polls, late polls and backoff state."""
        return self.schedule.view(sensor_id)

    def status(self) -> dict[str, Any]:
        return {"port": self.url, "up": self.is_up, "down_reason": self.down_reason,
                "mode": self.config.mode, "lines": self.lines, "garbage": self.garbage,
                "unknown_sensor_lines": self.unknown, "opens": self.opens,
                "open_failures": self.open_failures,
                "sensors": sorted(self.slots),
                "bad_lines": {s.sensor_id: s.bad_lines for s in self.slots.values()},
                **self.schedule.status()}
