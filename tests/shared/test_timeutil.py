"""The times an observation may carry (``shared.timeutil.obs_time_problem``, behind
``shared.models.ObsTime``)."""

from __future__ import annotations

import pytest

from shared.timeutil import EARLIEST_OBS_TS, FUTURE_SKEW_S, obs_time_problem

NOW = 1_790_000_000.0  # 2026-09-21


@pytest.mark.parametrize(("ts", "problem"), [
    (NOW, None),
    (EARLIEST_OBS_TS, None),
    (NOW + FUTURE_SKEW_S, None),
    (EARLIEST_OBS_TS - 1, "is before 2000-01-01"),
    (NOW + FUTURE_SKEW_S + 1, "is in the future"),
    (-1.0, "is not a time between 1970 and 9999"),
    (float("nan"), "is not a time between 1970 and 9999"),
])
def test_a_time_is_taken_from_2000_to_a_little_ahead_of_the_clock(ts: float,
                                                                   problem: str | None) -> None:
    said = obs_time_problem(ts, NOW)
    assert said is None if problem is None else problem in (said or "")


def test_a_hub_whose_clock_is_not_set_yet_takes_its_own_readings() -> None:
    # A board without a real-time clock starts in 1970 until NTP answers: its own readings,
    # stamped by that clock, are not refused; the future and the impossible still are.
    booted = 120.0
    assert obs_time_problem(booted, booted) is None
    assert obs_time_problem(booted - 100, booted) is None
    assert "is in the future" in (obs_time_problem(booted + FUTURE_SKEW_S + 1, booted) or "")
    assert "between 1970 and 9999" in (obs_time_problem(-5.0, booted) or "")
