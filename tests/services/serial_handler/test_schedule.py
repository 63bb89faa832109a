"""The port's poll schedule with an injected clock: the grid, the order within a round,
backoff of silent sensors and its recovery, probes only in gaps, and late polls counted."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.serial_handler.schedule import MAX_BACKOFF_S, PortSchedule
from tests.helpers import Clock


class Bus:
    """Drives a schedule as the poll thread does: each request takes ``answer_s`` of bus time
    when answered and its read_timeout when not. Records (time, sensor) of every request."""

    def __init__(self, sensors: list[tuple[str, float, float]], *, answer_s: float = 0.01,
                 silent: frozenset[str] = frozenset()) -> None:
        self.clock = Clock(1000.0)
        self.schedule = PortSchedule("bus", sensors, clock=self.clock)
        self.schedule.restart()
        self.answer_s = answer_s
        self.silent = set(silent)
        self.asked: list[tuple[float, str]] = []

    def run_until(self, end: float) -> None:
        while self.clock.now < end:
            sid, wait = self.schedule.next_poll()
            if sid is None:
                self.clock.now += wait
                continue
            self.asked.append((self.clock.now - 1000.0, sid))
            if sid in self.silent:
                self.clock.now += self.schedule.polled[sid].read_timeout
                self.schedule.unanswered(sid)
            else:
                self.clock.now += self.answer_s
                self.schedule.answered(sid, self.answer_s)

    def times(self, sid: str) -> list[float]:
        return [round(t, 3) for t, s in self.asked if s == sid]


def test_a_round_keeps_the_instance_file_order_on_a_fixed_grid() -> None:
    bus = Bus([("a", 10, 1), ("b", 10, 1), ("c", 10, 1)])
    bus.run_until(1035)
    assert [s for _, s in bus.asked] == ["a", "b", "c"] * 4
    assert bus.times("a") == [0, 10, 20, 30]  # the answers' time does not push it along
    assert bus.times("c") == [0.02, 10.02, 20.02, 30.02]
    assert bus.schedule.late_polls == 0


def test_a_silent_sensor_backs_off_exponentially_and_recovers() -> None:
    bus = Bus([("ok", 10, 1), ("mute", 10, 1)], silent=frozenset({"mute"}))
    bus.run_until(1000 + 10 * 16)
    # Retried at once after a lone miss, then skips 1, 2, 4 ... rounds.
    assert [round(t) for t in bus.times("mute")] == [0, 10, 30, 60, 110]
    p = bus.schedule.polled["mute"]
    assert (p.consecutive_failures, p.skipped_rounds, p.skip_left) == (5, 1 + 2 + 4 + 4, 8 - 4)
    view = bus.schedule.view("mute")
    assert view["backoff"] == {"state": "backing_off", "rounds": 8, "rounds_left": 4}
    assert bus.times("ok") == [10.0 * i for i in range(16)]  # never held back

    bus.silent.clear()  # it answers again at its next probe, then every round
    bus.run_until(1000 + 10 * 24)
    assert [round(t) for t in bus.times("mute")][5:] == [200, 210, 220, 230]
    assert bus.schedule.view("mute")["backoff"]["state"] == "ok"
    assert bus.schedule.late_polls == 0


def test_only_the_first_unanswered_request_of_an_outage_is_to_be_reported() -> None:
    schedule = PortSchedule("p", [("s", 10, 1)], clock=Clock(1000.0))
    assert schedule.unanswered("s") is True
    assert schedule.unanswered("s") is False
    assert schedule.unanswered("s") is False
    assert schedule.answered("s", 0.1) == 3  # the worker logs "answers again after 3"
    assert schedule.unanswered("s") is True  # a new outage


@given(st.integers(min_value=2, max_value=2000), st.sampled_from([0.5, 1, 10, 60, 600]))
def test_backoff_is_capped(failures: int, interval: float) -> None:
    schedule = PortSchedule("p", [("s", interval, 0.1)], clock=Clock(1000.0))
    for _ in range(failures):
        schedule.unanswered("s")
    rounds = schedule.polled["s"].backoff_rounds()
    assert rounds >= 1 and (rounds + 1) * interval <= max(MAX_BACKOFF_S, 2 * interval)


def test_probes_go_after_the_healthy_sensors_and_only_into_a_gap() -> None:
    # Three sensors take 3 s of a 10 s round; a silent one with a 5 s read_timeout fits after
    # them, one with 9 s never does until it has waited FORCE_PROBE_AFTER rounds.
    bus = Bus([("m5", 10, 5), ("a", 10, 1), ("b", 10, 1), ("c", 10, 1)], answer_s=1.0,
              silent=frozenset({"m5"}))
    bus.run_until(1000 + 10 * 4)
    assert bus.times("a") == [5, 10, 20, 30]  # m5 held the bus only in the first round
    assert bus.times("m5")[:2] == [0, 13]  # then after c, in the gap before the next round
    assert bus.schedule.late_polls == 0

    bus = Bus([("a", 10, 1), ("b", 10, 1), ("c", 10, 1), ("m9", 10, 9)], answer_s=1.0,
              silent=frozenset({"m9"}))
    bus.run_until(1000 + 10 * 5)
    late = bus.schedule.late_polls
    bus.run_until(1000 + 10 * 7)
    assert bus.times("m9") == [3, 53]  # deferred 4 rounds, then asked anyway
    assert bus.schedule.polled["m9"].deferred == 4
    assert bus.schedule.late_polls > late  # and that probe pushed the next round back


def test_a_round_that_cannot_fit_is_counted_late_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    # Four sensors answering in 3 s each need 12 s of a 10 s interval.
    bus = Bus([(s, 10, 5) for s in "abcd"], answer_s=3.0)
    with caplog.at_level(logging.WARNING, logger="services.serial_handler.schedule"):
        bus.run_until(1000 + 10 * 6)
    assert bus.schedule.late_polls >= 6
    assert bus.schedule.status()["late_polls"] == bus.schedule.late_polls
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "run late" in warnings[0].getMessage()
    # It stays on the grid: a late sensor skips to the next grid point, never in between.
    for sid in "abcd":
        p = bus.schedule.polled[sid]
        assert bus.schedule._due(p) == pytest.approx(1000 + 10 * p.k)


def test_restart_starts_a_new_grid_and_asks_backed_off_sensors_once() -> None:
    bus = Bus([("ok", 10, 1), ("mute", 10, 1)], silent=frozenset({"mute"}))
    bus.run_until(1000 + 10 * 4)
    assert bus.schedule.polled["mute"].skip_left
    bus.clock.now = 1234.5  # the port dropped and came back
    bus.schedule.restart()
    bus.run_until(1234.5 + 1)
    assert [s for _, s in bus.asked][-2:] == ["ok", "mute"]
    assert bus.times("ok")[-1] == 234.5
