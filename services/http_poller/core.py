"""The HTTP poller's logic, free of Flask: a scheduler that keeps every sensor on its interval,
a bounded pool of workers that do the requests, per-sensor health statistics, and exponential
backoff while a sensor fails."""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from shared.errors import ReadError, UnknownDevice
from shared.instance import HttpSource, Instance, SensorConfig
from shared.jsonutil import JSONDecodeError, dumps, loads
from shared.models import CommandRequest, CommandResult, ErrorObs, EventObs, ReadingObs
from shared.processes import FRESH_READ_TIMEOUT_S
from shared.timeutil import iso

from .mapping import Mapping

log = logging.getLogger(__name__)

MAX_BACKOFF = 300.0
# Per-thread keep-alive pools: each worker thread keeps a connection to up to this many hosts, so
# 1,000 sensors on many hosts do not reconnect on every poll.
HOST_POOLS = 256
Emit = Callable[[ReadingObs | ErrorObs | EventObs], None]


@dataclass
class Polled:
    sensor: SensorConfig
    source: HttpSource
    mapping: Mapping
    interval: float
    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_latency_ms: float | None = None
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    last_values: dict[str, Any] | None = None
    last_ts: float | None = None
    last_error: str | None = None
    late: int = 0
    polls: int = 0
    busy: bool = False
    next_due: float | None = None  # monotonic time the scheduler will poll next
    last_step: float | None = None  # the gap it chose: the interval, or the backoff while failing

    def step(self) -> float:
        """Seconds to the next poll: the interval, doubled per consecutive failure up to
        ``MAX_BACKOFF`` (never shorter than the interval)."""
        if not self.consecutive_failures:
            return self.interval
        # Cap the exponent: 2 ** 1100 does not fit in a float and would kill the scheduler.
        exponent = min(self.consecutive_failures, 30)
        return max(self.interval, min(self.interval * 2.0 ** exponent, MAX_BACKOFF))

    def health(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)] if ordered else None
        return {
            "sensor_id": self.sensor.sensor_id, "url": self.source.url,
            "interval": self.interval, "successes": self.successes, "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "last_latency_ms": self.last_latency_ms,
            "p95_latency_ms": None if p95 is None else round(p95, 2),
            "last_error": self.last_error, "late_polls": self.late, "polls": self.polls,
            "last_success": iso(self.last_ts) if self.last_ts else None,
            "backoff_s": None if self.last_step is None else round(self.last_step, 3),
        }


class HttpPoller:
    def __init__(self, instance: Instance, emit: Emit, *, poll_interval: float, workers: int = 32,
                 clock: Callable[[], float] = time.time) -> None:
        self._emit = emit
        self._clock = clock
        self.errors: deque[dict[str, Any]] = deque(maxlen=500)
        self.sensors: dict[str, Polled] = {}
        for sensor in instance.sensors_of("http"):
            src = sensor.source
            assert isinstance(src, HttpSource)
            self.sensors[sensor.sensor_id] = Polled(
                sensor, src, Mapping(sensor.sensor_id, sensor.properties),
                instance.interval_of(sensor, poll_interval))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="poll")
        self._local = threading.local()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._schedule, name="poll-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _schedule(self) -> None:
        """Keep every sensor on its own grid: due times advance by the interval (or the backoff),
        not by when the last poll happened to finish, so polls do not drift. Start times are
        spread over the first interval so 1,000 sensors do not all fire in the same instant."""
        start = time.monotonic()
        count = max(len(self.sensors), 1)
        heap = [(start + p.interval * i / count, sid)
                for i, (sid, p) in enumerate(self.sensors.items())]
        heapq.heapify(heap)
        while heap and not self._stop.is_set():
            due, sid = heap[0]
            now = time.monotonic()
            if due > now:
                self._stop.wait(min(due - now, 1.0))
                continue
            heapq.heappop(heap)
            polled = self.sensors[sid]
            try:
                self._dispatch(polled, lateness=now - due)
            except Exception:  # the scheduler must outlive any one sensor
                log.exception("scheduling %s failed", sid)
                polled.busy = False
            heapq.heappush(heap, (self.next_due(polled, due, time.monotonic()), sid))

    def _dispatch(self, polled: Polled, *, lateness: float) -> None:
        if polled.busy:
            polled.late += 1  # the previous poll is still running: skip, do not pile up
            return
        polled.busy = True
        if lateness > max(0.5, 0.1 * polled.interval):
            polled.late += 1
        self._pool.submit(self._poll_quietly, polled)

    @staticmethod
    def next_due(polled: Polled, due: float, now: float) -> float:
        """The next due time after a slot at ``due``: on the grid, backed off while failing,
        and never in the past (a scheduler that fell far behind skips the missed slots)."""
        step = polled.step()
        nxt = due + step
        if nxt < now:
            nxt = now + step
        polled.last_step = step
        polled.next_due = nxt
        return nxt

    def _poll_quietly(self, polled: Polled) -> None:
        try:
            self.poll(polled)
        except ReadError:
            pass  # emitted as a device error
        except Exception:
            log.exception("polling %s failed unexpectedly", polled.sensor.sensor_id)
        finally:
            polled.busy = False

    # --- one poll ----------------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            adapter = HTTPAdapter(pool_connections=HOST_POOLS, pool_maxsize=2)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def _fetch(self, src: HttpSource, timeout: float) -> Any:
        try:
            resp = self._session().request(src.method, src.url, headers=src.headers,
                                           timeout=timeout)
        except requests.Timeout as exc:
            raise ReadError("READ_TIMEOUT", f"{src.url} did not answer within {timeout:g} s") from exc
        except requests.RequestException as exc:
            raise ReadError("UNREACHABLE", f"{src.url} is unreachable: {exc}") from exc
        if resp.status_code >= 400:
            raise ReadError("HTTP_ERROR", f"{src.url} answered {resp.status_code} {resp.reason}")
        try:
            return loads(resp.content)
        except JSONDecodeError as exc:
            text = resp.text[:80]
            raise ReadError("BAD_RESPONSE", f"{src.url} answered with non-JSON: {text!r}") from exc

    @staticmethod
    def _map(polled: Polled, doc: Any) -> dict[str, Any]:
        """The mapped values; anything the mapping trips over is the response's fault."""
        try:
            return polled.mapping.apply(doc)
        except ReadError:
            raise
        except Exception as exc:
            raise ReadError("BAD_RESPONSE", f"the response does not fit the mapping: "
                                            f"{type(exc).__name__}: {exc}") from exc

    def poll(self, polled: Polled, *, push: bool = True) -> ReadingObs:
        """One request to the sensor. The reading is pushed unless ``push`` is false (a fresh
        read: its caller delivers it); errors and events are always pushed."""
        sid = polled.sensor.sensor_id
        polled.polls += 1
        started = time.perf_counter()
        # A fresh read never outlasts what the aggregator waits for it.
        timeout = polled.source.timeout if push else min(polled.source.timeout,
                                                         FRESH_READ_TIMEOUT_S)
        try:
            values = self._map(polled, self._fetch(polled.source, timeout))
        except ReadError as exc:
            with self._lock:
                polled.failures += 1
                polled.consecutive_failures += 1
                polled.last_error = f"{exc.code}: {exc.message}"
            now = self._clock()
            self.errors.append({"device_id": sid, "error_code": exc.code,
                                "message": exc.message, "timestamp": iso(now)})
            self._emit(ErrorObs(device_id=sid, ts=now, error_code=exc.code, message=exc.message))
            raise
        latency = (time.perf_counter() - started) * 1000
        now = self._clock()
        with self._lock:
            polled.successes += 1
            polled.consecutive_failures = 0
            polled.last_latency_ms = round(latency, 2)
            polled.latencies.append(latency)
            before, polled.last_values = polled.last_values, values
            polled.last_ts = now
        reading = ReadingObs(device_id=sid, ts=now, values=values)
        if push:
            self._emit(reading)
        for event in polled.mapping.events(before, values):
            self._emit(EventObs(device_id=sid, ts=now, event=event))
        return reading

    # --- API -------------------------------------------------------------------------------------
    def _polled(self, sensor_id: str) -> Polled:
        polled = self.sensors.get(sensor_id)
        if polled is None:
            raise UnknownDevice(sensor_id)
        return polled

    def read(self, sensor_id: str) -> ReadingObs:
        """A fresh read for a REST caller, who delivers the reading: it is not pushed too."""
        return self.poll(self._polled(sensor_id), push=False)

    def health_of(self, sensor_id: str) -> dict[str, Any]:
        return self._polled(sensor_id).health()

    def last_readings(self, offset: int, limit: int) -> tuple[list[ReadingObs], int]:
        """The last reading of the sensors ``offset`` to ``offset + limit`` (those that have one)
        and how many sensors there are: a page of ``GET /readings``."""
        page = islice(self.sensors.values(), offset, offset + limit)
        readings = [ReadingObs(device_id=p.sensor.sensor_id, ts=p.last_ts, values=p.last_values)
                    for p in page if p.last_ts is not None and p.last_values]
        return readings, len(self.sensors)

    def list(self) -> list[dict[str, Any]]:
        return [{"sensor_id": p.sensor.sensor_id, "sensor_type": p.sensor.sensor_type,
                 "url": p.source.url, "interval": p.interval, "values": p.last_values,
                 "timestamp": iso(p.last_ts) if p.last_ts else None,
                 "reading": ReadingObs(device_id=p.sensor.sensor_id, ts=p.last_ts,
                                       values=p.last_values).model_dump()
                 if p.last_ts is not None and p.last_values else None,
                 "consecutive_failures": p.consecutive_failures}
                for p in self.sensors.values()]

    def command(self, sensor_id: str, request: CommandRequest) -> CommandResult:
        polled = self._polled(sensor_id)
        if not polled.source.writable:
            return CommandResult(status="rejected", error=f"{sensor_id} is read-only")
        try:
            resp = self._session().post(polled.source.url, data=dumps(request.values),
                                        headers={"Content-Type": "application/json",
                                                 **polled.source.headers},
                                        timeout=min(request.timeout_s, polled.source.timeout))
        except requests.Timeout:
            return CommandResult(status="timeout", error=f"{polled.source.url} did not answer")
        except requests.RequestException as exc:
            return CommandResult(status="error", error=str(exc))
        if resp.status_code >= 400:
            return CommandResult(status="error", error=f"sensor answered {resp.status_code}")
        return CommandResult(status="success")

    def totals(self) -> dict[str, int]:
        return {"sensors": len(self.sensors),
                "polls": sum(p.polls for p in self.sensors.values()),
                "late": sum(p.late for p in self.sensors.values()),
                "failing": sum(1 for p in self.sensors.values() if p.consecutive_failures)}
