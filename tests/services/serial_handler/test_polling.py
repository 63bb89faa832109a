"""Poll mode over real pseudo-terminals: a board thread answers the hub's read requests (or
leaves some unanswered) and notes when each request reached it, so on-time figures come from
the board's side of the wire."""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from services.serial_handler.app import create_app
from shared.errors import ConfigError, ReadError
from shared.models import ErrorObs, ReadingObs
from tests.helpers import Recorder, wait_for

from .conftest import BoardFactory, FakeBoard, HandlerFactory, make_instance, serial_sensor


class AnsweringBoard:
    """Answers read requests for the ids in ``answering`` (after ``delay`` s: a slow sensor);
    ``asked[id]`` holds the monotonic times the requests for ``id`` arrived."""

    def __init__(self, board: FakeBoard, answering: set[str], *, delay: float = 0.0) -> None:
        self.board = board
        self.answering = answering
        self.delay = delay
        self.asked: dict[str, list[float]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self.board.master], [], [], 0.05)
            if not ready:
                continue
            now = time.monotonic()
            buf += os.read(self.board.master, 4096)
            *lines, buf = buf.split(b"\n")
            for line in lines:
                sid = orjson.loads(line)["id"]
                self.asked[sid].append(now)
                if sid in self.answering:
                    threading.Timer(self.delay, self._answer, (sid,)).start()

    def _answer(self, sid: str) -> None:
        if not self._stop.is_set():
            self.board.send(f'{{"id": "{sid}", "temperature": 21.5}}')

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


@pytest.fixture
def answering(board: BoardFactory) -> Iterator[Callable[..., AnsweringBoard]]:
    made: list[AnsweringBoard] = []

    def make(answering: set[str], *, delay: float = 0.0) -> AnsweringBoard:
        made.append(AnsweringBoard(board(), answering, delay=delay))
        return made[-1]

    yield make
    for b in made:
        b.stop()


def _polled(sensor_id: str, port: str, interval: float, **source: object) -> dict[str, Any]:
    own = source.pop("own_read_timeout", None)
    entry = serial_sensor(sensor_id, port, mode="poll", interval=interval, **source)
    if own is not None:
        entry["read_timeout"] = own
    return entry


def test_a_silent_sensor_backs_off_is_reported_once_and_recovers(answering: Callable[..., AnsweringBoard],
                                                                 start_handler: HandlerFactory,
                                                                 recorder: Recorder) -> None:
    b = answering({"ok"})
    handler = start_handler(_polled("ok", b.board.path, 0.3, read_timeout=0.1),
                            _polled("mute", b.board.path, 0.3, read_timeout=0.1))
    view = wait_for(lambda: (v := handler.sensor_view("mute"))["skipped_rounds"] >= 3 and v,
                    what="mute to skip 3 rounds")
    assert view["consecutive_failures"] >= 3
    assert view["backoff"]["state"] in ("backing_off", "suspect")
    assert len(b.asked["mute"]) < len(b.asked["ok"])  # the bus was asked less of it
    (error,) = recorder.of(ErrorObs, "mute")  # once for the outage, not every round
    assert error.error_code == "READ_TIMEOUT" and "asked less often" in error.message
    assert handler.sensor_view("ok")["consecutive_failures"] == 0
    client = create_app(handler=handler).test_client()  # what /sensors and /health say
    listed = {s["sensor_id"]: s for s in client.get("/sensors").get_json()["sensors"]}
    assert listed["mute"]["skipped_rounds"] >= 3 and listed["mute"]["unanswered"] >= 3
    assert set(listed["mute"]["backoff"]) == {"state", "rounds", "rounds_left"}
    assert listed["ok"]["backoff"]["state"] == "ok"
    (port,) = client.get("/health").get_json()["ports"]
    assert port["backing_off"] == ["mute"] and port["polls"] >= len(b.asked["mute"])

    b.answering.add("mute")
    recorder.wait(ReadingObs, "mute", timeout=15)
    wait_for(lambda: handler.sensor_view("mute")["backoff"]["state"] == "ok",
             what="mute back to ok")
    asked = len(b.asked["mute"])
    wait_for(lambda: len(b.asked["mute"]) >= asked + 2, what="mute polled every round again")
    assert len(recorder.of(ErrorObs, "mute")) == 1


def test_silent_sensors_do_not_delay_the_others(answering: Callable[..., AnsweringBoard],
                                                start_handler: HandlerFactory) -> None:
    # Two silent sensors, each holding the bus 0.3 s, and three healthy ones: 0.6 s of
    # unanswered requests per 0.5 s round if they were asked every round.
    interval = 0.5
    b = answering({"h1", "h2", "h3"})
    sensors = [_polled("m1", b.board.path, interval, read_timeout=0.1, own_read_timeout=0.3),
               _polled("h1", b.board.path, interval, read_timeout=0.1),
               _polled("m2", b.board.path, interval, read_timeout=0.1, own_read_timeout=0.3),
               _polled("h2", b.board.path, interval, read_timeout=0.1),
               _polled("h3", b.board.path, interval, read_timeout=0.1)]
    handler = start_handler(*sensors)
    wait_for(lambda: all(len(b.asked[h]) >= 12 for h in ("h1", "h2", "h3")), timeout=20,
             what="12 polls of each healthy sensor")
    gaps = [t1 - t0 for h in ("h1", "h2", "h3")
            for t0, t1 in zip(b.asked[h][2:12], b.asked[h][3:12], strict=False)]
    on_time = sum(abs(g - interval) <= 0.1 for g in gaps) / len(gaps)
    assert on_time >= 0.9, sorted(gaps)
    # The silent ones were still asked, in the gaps: they would be found when they come back.
    assert all(len(b.asked[m]) >= 3 for m in ("m1", "m2"))
    assert handler.ports[b.board.path].status()["backing_off"] == ["m1", "m2"]


def test_a_sensors_read_timeout_overrides_the_ports(answering: Callable[..., AnsweringBoard],
                                                    start_handler: HandlerFactory) -> None:
    b = answering({"slow", "quick"}, delay=0.3)  # the board takes 0.3 s to answer either
    handler = start_handler(
        _polled("slow", b.board.path, 3600, read_timeout=0.1, own_read_timeout=0.6),
        _polled("quick", b.board.path, 3600, read_timeout=0.1))
    assert handler.sensor_view("slow")["read_timeout"] == 0.6
    assert handler.sensor_view("quick")["read_timeout"] == 0.1
    wait_for(lambda: handler.sensor_view("quick")["unanswered"] == 1, what="the first round")
    assert handler.read("slow").values == {"temperature": 21.5}
    with pytest.raises(ReadError) as quick:
        handler.read("quick")
    assert quick.value.code == "READ_TIMEOUT" and "within 0.1 s" in quick.value.message


def test_a_round_that_cannot_fit_is_counted_late_and_warned_once(answering: Callable[..., AnsweringBoard],
                                                                 start_handler: HandlerFactory,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    # Four sensors that each take 0.2 s to answer need 0.8 s of a 0.5 s interval.
    b = answering({"a", "b", "c", "d"}, delay=0.2)
    with caplog.at_level(logging.WARNING, logger="services.serial_handler.schedule"):
        handler = start_handler(*[_polled(s, b.board.path, 0.5, read_timeout=0.5)
                                  for s in "abcd"])
        status = wait_for(lambda: (s := handler.ports[b.board.path].status())["late_polls"] >= 4
                          and s, what="late polls")
        wait_for(lambda: len(b.asked["a"]) >= 4, what="a few rounds")
    assert status["polls"] >= status["late_polls"]
    assert sum(handler.sensor_view(s)["late_polls"] for s in "abcd") >= 4
    warnings = [r for r in caplog.records if "run late" in r.getMessage()]
    assert len(warnings) == 1


def test_a_sensors_read_timeout_is_for_serial_sensors_only() -> None:
    http = {"sensor_id": "h", "sensor_type": "climate", "read_timeout": 1.0,
            "source": {"type": "http", "url": "http://192.0.2.1/"}}
    with pytest.raises(ConfigError, match="read_timeout is for serial sensors"):
        make_instance(http)
    with pytest.raises(ConfigError, match="read_timeout"):
        make_instance(_polled("s", "/dev/ttyUSB0", 10, own_read_timeout=0))
