"""The HTTP poller against real local HTTP sensors: a good one, a slow one, one that answers
500, and ones that answer garbage; health stats, backoff, device errors, events and routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest.mock import ANY

import pytest

from services.http_poller.app import create_app
from services.http_poller.core import MAX_BACKOFF, HttpPoller
from shared.errors import ReadError
from shared.instance import Instance, parse_instance
from shared.models import ErrorObs, EventObs, ReadingObs
from tests.helpers import Recorder, wait_for
from tests.probe_fixtures.servers import SensorServer

MAPPING = {
    "motion": {"path": "data.motion", "type": "bool",
               "events": {"true": "motion_started", "false": "motion_stopped"}},
    "illuminance": {"path": "data.lux", "type": "float", "unit": "lx"},
    "battery": {"path": "battery", "type": "int", "unit": "%"},
}


@pytest.fixture
def sensors() -> Iterator[SensorServer]:
    server = SensorServer(slow_s=1.0)
    yield server
    server.close()


def instance_for(server: SensorServer, *, interval: float = 5.0) -> Instance:
    def sensor(sid: str, path: str, **src: Any) -> dict[str, Any]:
        return {"sensor_id": sid, "sensor_type": "motion", "interval": interval,
                "properties": MAPPING,
                "source": {"type": "http", "url": server.url(path), "timeout": 0.3, **src}}
    return parse_instance({"instance_id": "t", "friendly_name": "t", "config": {"sensors": [
        sensor("good", "/good"), sensor("slow", "/slow"), sensor("error", "/error"),
        sensor("garbage", "/garbage"), sensor("mismatch", "/mismatch"),
        sensor("flaky", "/flaky"),
    ]}})


@pytest.fixture
def poller(sensors: SensorServer) -> Iterator[tuple[HttpPoller, Recorder]]:
    rec = Recorder()
    p = HttpPoller(instance_for(sensors), rec, poll_interval=5.0, workers=4)
    yield p, rec
    p.stop()


def test_good_sensor_maps_values_and_keeps_health_stats(poller: tuple[HttpPoller, Recorder]) -> None:
    p, rec = poller
    for _ in range(5):
        reading = p.read("good")
    assert reading.values == {"motion": False, "illuminance": 120.5, "battery": 90}
    health = p.health_of("good")
    assert (health["successes"], health["failures"], health["consecutive_failures"]) == (5, 0, 0)
    assert health["polls"] == 5 and health["last_error"] is None
    assert 0 < health["last_latency_ms"] <= 1000 and 0 < health["p95_latency_ms"] <= 1000
    assert health["last_success"].endswith("Z")
    # A fresh read is its caller's to deliver (the aggregator ingests the answer): not pushed.
    assert not rec.of(ReadingObs, "good") and not rec.of(ErrorObs, "good")
    scheduled = p.poll(p.sensors["good"])  # a scheduled poll is pushed
    assert rec.of(ReadingObs, "good") == [scheduled]


@pytest.mark.parametrize(("sid", "code", "words"), [
    ("slow", "READ_TIMEOUT", "did not answer within 0.3 s"),
    ("error", "HTTP_ERROR", "500"),
    ("garbage", "BAD_RESPONSE", "non-JSON"),
    ("mismatch", "BAD_RESPONSE", "'data.motion'"),
])
def test_failures_become_device_errors_not_crashes(
        poller: tuple[HttpPoller, Recorder], sid: str, code: str, words: str) -> None:
    p, rec = poller
    for _ in range(2):
        with pytest.raises(ReadError) as info:
            p.read(sid)
        assert info.value.code == code
    errors = rec.of(ErrorObs, sid)
    assert [e.error_code for e in errors] == [code, code]
    assert words in errors[0].message and not rec.of(ReadingObs, sid)
    health = p.health_of(sid)
    assert (health["successes"], health["failures"], health["consecutive_failures"]) == (0, 2, 2)
    assert health["last_error"].startswith(code)
    assert p.errors[-1]["device_id"] == sid


def test_backoff_pushes_the_next_due_time_out_and_recovery_resets_it(
        poller: tuple[HttpPoller, Recorder], sensors: SensorServer) -> None:
    p, _ = poller
    flaky = p.sensors["flaky"]
    assert HttpPoller.next_due(flaky, due=100.0, now=100.0) == 105.0  # on the grid
    steps = []
    for _ in range(4):
        with pytest.raises(ReadError):
            p.read("flaky")
        steps.append(HttpPoller.next_due(flaky, due=100.0, now=100.0) - 100.0)
    assert steps == [10.0, 20.0, 40.0, 80.0]  # doubles per consecutive failure
    flaky.consecutive_failures = 5000  # days of failing: capped, and no float overflow
    assert flaky.step() == MAX_BACKOFF
    sensors.flaky_fail = False
    p.read("flaky")
    assert HttpPoller.next_due(flaky, due=100.0, now=100.0) == 105.0
    # A scheduler that fell far behind skips the missed slots instead of bursting.
    assert HttpPoller.next_due(flaky, due=100.0, now=500.0) == 505.0


def test_the_running_scheduler_backs_off_a_failing_sensor(sensors: SensorServer) -> None:
    rec = Recorder()
    p = HttpPoller(instance_for(sensors, interval=0.05), rec, poll_interval=5.0, workers=4)
    p.start()
    try:
        wait_for(lambda: p.sensors["error"].consecutive_failures >= 3, what="three failures")
        error, good = p.sensors["error"], p.sensors["good"]
        wait_for(lambda: (error.last_step or 0) >= 0.05 * 2 ** 3, what="the backoff to grow")
        assert good.last_step == 0.05 and good.consecutive_failures == 0
        assert error.next_due is not None and good.next_due is not None
        assert p.totals()["failing"] >= 4  # slow, error, garbage, mismatch (and flaky)
        wait_for(lambda: p.totals()["polls"] >= 20, what="polls to add up")
    finally:
        p.stop()


def test_motion_change_emits_events(poller: tuple[HttpPoller, Recorder],
                                    sensors: SensorServer) -> None:
    p, rec = poller
    p.read("good")
    p.read("good")  # unchanged: no event
    sensors.motion = True
    p.read("good")
    sensors.motion = False
    p.read("good")
    assert [e.event for e in rec.of(EventObs, "good")] == ["motion_started", "motion_stopped"]


def test_routes_through_the_flask_test_client(poller: tuple[HttpPoller, Recorder]) -> None:
    p, _ = poller
    client = create_app(p).test_client()
    read = client.get("/sensor/good")
    assert read.status_code == 200 and read.get_json()["reading"]["values"]["battery"] == 90
    failed = client.get("/sensor/garbage")
    assert failed.status_code == 503 and failed.get_json()["error"] == "BAD_RESPONSE"
    assert client.get("/sensor/nope").status_code == 404
    health = client.get("/sensor/good/health").get_json()
    assert health["successes"] == 1 and health["p95_latency_ms"] is not None
    assert client.get("/sensor/garbage/health").get_json()["consecutive_failures"] == 1
    totals = client.get("/health").get_json()
    assert totals["sensors"] == 6 and {"polls", "late", "failing"} <= totals.keys()
    listed = {s["sensor_id"]: s for s in client.get("/sensors").get_json()["sensors"]}
    assert listed["good"]["values"]["illuminance"] == 120.5
    assert client.get("/errors").get_json()["errors"][-1]["device_id"] == "garbage"
    cmd = client.post("/sensor/good/command", json={"cmd_id": "c1", "values": {"on": True}})
    assert cmd.get_json()["status"] == "rejected"
    bad = client.post("/sensor/good/command", data=b"{nope")
    assert bad.status_code == 400


def test_readings_in_pages_are_the_same_as_in_one_page(poller: tuple[HttpPoller, Recorder],
                                                       sensors: SensorServer) -> None:
    """``/readings`` (what the aggregator's warm-up takes): each sensor's last reading, the same
    whether asked in pages of 1 or 4 sensors or at once, and the same as ``/sensors`` says."""
    p, _ = poller
    sensors.flaky_fail = False
    polled = {sid: p.poll(p.sensors[sid]) for sid in ("good", "flaky")}
    client = create_app(p).test_client()
    whole = client.get("/readings").get_json()
    assert (whole["total"], whole["next"]) == (6, None)
    listed = [s["reading"] for s in client.get("/sensors").get_json()["sensors"] if s["reading"]]
    assert whole["readings"] == listed == [r.model_dump() for r in polled.values()]
    for limit in (1, 4):
        paged: list[dict[str, Any]] = []
        offsets = []
        offset: int | None = 0
        while offset is not None:
            offsets.append(offset)
            page = client.get(f"/readings?offset={offset}&limit={limit}").get_json()
            assert page["total"] == 6
            paged += page["readings"]
            offset = page["next"]
        assert paged == whole["readings"]
        assert offsets == list(range(0, 6, limit))
    assert client.get("/readings?offset=99").get_json() == {
        **whole, "readings": [], "next": None, "timestamp": ANY}
    bad = client.get("/readings?limit=many")
    assert bad.status_code == 400 and bad.get_json()["error"] == "invalid_argument"
