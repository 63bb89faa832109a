"""One worker per serial port: its own reader thread (so one stuck port never delays another),
reconnects with backoff when the port goes away, the poll schedule for sensors that answer only
when asked, fresh reads and commands written back in the line protocol."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import serial

from shared.errors import ReadError
from shared.instance import SerialSource
from shared.models import CommandRequest, CommandResult, ErrorObs, EventObs, LinkObs, ReadingObs

from . import protocol

log = logging.getLogger(__name__)

# pyserial looks for ``<package>.protocol_<scheme>`` modules: this makes sim:// a URL like loop://.
if "services.serial_handler" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("services.serial_handler")

MAX_LINE = 4096
Emit = Callable[[ReadingObs | ErrorObs | EventObs | LinkObs], None]


@dataclass
class SensorSlot:
    sensor_id: str
    interval: float
    writable: bool
    last: ReadingObs | None = None
    next_poll: float = 0.0
    waiting_reads: list[Future[ReadingObs]] = field(default_factory=list)


class PortWorker:
    def __init__(self, url: str, config: SerialSource, slots: list[SensorSlot], emit: Emit,
                 *, on_garbage: Callable[[str, str, str | None], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.config = config
        self.slots = {s.sensor_id: s for s in slots}
        self._emit = emit
        self._on_garbage = on_garbage
        self._clock = clock
        self._port: serial.SerialBase | None = None
        self._lock = threading.Lock()  # guards _port, slot futures and _acks
        self._write_lock = threading.Lock()
        self._acks: dict[tuple[str, str], Future[CommandResult]] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()  # wakes the poll loop early (port just came up, stop)
        self._threads: list[threading.Thread] = []
        self.down_reason: str | None = "not opened yet"
        self.lines = 0
        self.garbage = 0
        self.opens = 0

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        reader = threading.Thread(target=self._read_loop, name=f"serial-{self.url}", daemon=True)
        self._threads.append(reader)
        if self.config.mode == "poll":
            poller = threading.Thread(target=self._poll_loop, name=f"poll-{self.url}", daemon=True)
            self._threads.append(poller)
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._lock:
            port, self._port = self._port, None
        if port is not None:
            port.close()

    @property
    def is_up(self) -> bool:
        return self._port is not None

    # --- reading ---------------------------------------------------------------------------------
    def _open(self) -> serial.SerialBase:
        c = self.config
        return serial.serial_for_url(
            self.url, baudrate=c.baudrate, bytesize=c.bytesize, parity=c.parity,
            stopbits=c.stopbits, timeout=0.2, write_timeout=2.0,
        )

    def _read_loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                port = self._open()
            except (serial.SerialException, OSError, ValueError) as exc:
                self._went_down(f"cannot open {self.url}: {exc}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            with self._lock:
                self._port = port
            self.opens += 1
            backoff = 0.5
            self._came_up()
            try:
                self._pump(port)
            except (serial.SerialException, OSError) as exc:
                if not self._stop.is_set():
                    self._went_down(f"port {self.url} lost: {exc}")
            finally:
                with self._lock:
                    if self._port is port:
                        self._port = None
                try:
                    port.close()
                except (serial.SerialException, OSError):
                    pass
            self._stop.wait(backoff)

    def _pump(self, port: serial.SerialBase) -> None:
        sep = b"\r" if self.config.line_ending == "\r" else b"\n"
        buf = b""
        while not self._stop.is_set():
            chunk = port.read(max(1, port.in_waiting))
            if not chunk:
                continue
            buf += chunk
            *lines, buf = buf.split(sep)
            for raw in lines:
                self._handle(raw.decode("utf-8", errors="replace").strip("\r\n\t "))
            if len(buf) > MAX_LINE:
                self._garbage(buf[:200].decode("utf-8", errors="replace"), "line too long", None)
                buf = b""

    def _handle(self, line: str) -> None:
        if not line:
            return
        self.lines += 1
        try:
            msg = protocol.parse_line(line)
        except protocol.LineError as exc:
            self._garbage(line, exc.reason, exc.device_id or protocol.guess_id(line))
            return
        slot = self.slots.get(msg.device_id)
        if slot is None:
            self._garbage(line, f"unknown sensor id {msg.device_id!r} on this port", None)
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
                                message=msg.message or f"sensor reported {msg.code}"))
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
                ack.set_result(CommandResult(status="error", error=msg.error or "sensor refused"))

    def _garbage(self, line: str, reason: str, device_id: str | None) -> None:
        self.garbage += 1
        targets = [device_id] if device_id in self.slots else list(self.slots)
        message = f"unparseable line on {self.url} ({reason}): {protocol.truncate(line)!r}"
        self._on_garbage(self.url, message, device_id)
        now = self._clock()
        for sensor_id in targets:
            self._emit(ErrorObs(device_id=sensor_id, ts=now, error_code="BAD_LINE",
                                message=message, severity="warning"))

    # --- transport up and down -------------------------------------------------------------------
    def _came_up(self) -> None:
        log.info("opened %s (%d sensor(s))", self.url, len(self.slots))
        was_down = self.down_reason
        self.down_reason = None
        now = self._clock()
        for slot in self.slots.values():
            slot.next_poll = 0.0  # read at once after (re)connecting, not one interval later
            self._emit(LinkObs(device_id=slot.sensor_id, ts=now, up=True))
        self._wake.set()
        if was_down and was_down != "not opened yet":
            log.info("%s is back", self.url)

    def _went_down(self, reason: str) -> None:
        first = self.down_reason != reason
        self.down_reason = reason
        if not first:
            return  # say it once per outage, not once per retry
        log.warning("%s", reason)
        now = self._clock()
        for sensor_id in self.slots:
            self._emit(LinkObs(device_id=sensor_id, ts=now, up=False, reason=reason))
            self._emit(ErrorObs(device_id=sensor_id, ts=now, error_code="PORT_UNAVAILABLE",
                                message=reason, severity="error"))
        with self._lock:
            waiting = [f for s in self.slots.values() for f in s.waiting_reads]
            for s in self.slots.values():
                s.waiting_reads = []
            acks, self._acks = self._acks, {}
        for fut in waiting:
            fut.set_exception(ReadError("PORT_UNAVAILABLE", reason))
        for ack in acks.values():
            ack.set_result(CommandResult(status="error", error=reason))

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
        limit = timeout or self.config.read_timeout
        if self.config.mode == "stream":
            limit = max(limit, slot.interval + self.config.read_timeout)
        with self._lock:
            slot.waiting_reads.append(fut)
        try:
            self._write(protocol.read_request(sensor_id, self.config.line_ending))
            return fut.result(timeout=limit)
        except FutureTimeout:
            err = ReadError("READ_TIMEOUT", f"{sensor_id} on {self.url} did not answer within "
                                            f"{limit:g} s")
        except ReadError as exc:
            err = exc
        finally:
            with self._lock:
                if fut in slot.waiting_reads:
                    slot.waiting_reads.remove(fut)
        if err.code == "READ_TIMEOUT":  # other failures were emitted where they were seen
            self._emit(ErrorObs(device_id=sensor_id, ts=self._clock(), error_code=err.code,
                                message=err.message))
        raise err

    def command(self, sensor_id: str, request: CommandRequest) -> CommandResult:
        key = (sensor_id, request.cmd_id)
        fut: Future[CommandResult] = Future()
        with self._lock:
            self._acks[key] = fut
        try:
            self._write(protocol.command_line(sensor_id, request.cmd_id, request.values,
                                              self.config.line_ending))
            return fut.result(timeout=request.timeout_s)
        except FutureTimeout:
            return CommandResult(status="timeout", error=f"{sensor_id} did not acknowledge "
                                                         f"within {request.timeout_s:g} s")
        except ReadError as exc:
            return CommandResult(status="error", error=exc.message)
        finally:
            with self._lock:
                self._acks.pop(key, None)

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            due = [s for s in self.slots.values() if s.next_poll <= now]
            for slot in due:
                slot.next_poll = now + slot.interval
                if self.is_up:
                    try:
                        self.read(slot.sensor_id)
                    except ReadError:
                        pass  # already emitted as a device error
            upcoming = min(s.next_poll for s in self.slots.values())
            self._wake.wait(max(0.05, upcoming - time.monotonic()))
            self._wake.clear()

    def status(self) -> dict[str, Any]:
        return {"port": self.url, "up": self.is_up, "down_reason": self.down_reason,
                "mode": self.config.mode, "lines": self.lines, "garbage": self.garbage,
                "opens": self.opens, "sensors": sorted(self.slots)}
