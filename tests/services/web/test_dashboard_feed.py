"""The dashboard feed's fan-out, without HTTP: changes coalesce per device, a device is sent at
most once per second per client (an injected clock), a client's backlog is bounded by the number
of devices, and a reconnect's Last-Event-ID is replayed from the ring or answered with a reset."""

from __future__ import annotations

from typing import Any

import pytest

from services.web.dashboard.feed import RESET, Feed, Subscriber, numeric
from shared.rest import RestClient
from tests.helpers import Clock


def test_changes_coalesce_and_each_device_is_sent_at_most_once_a_second() -> None:
    clock = Clock(1000.0)
    sub = Subscriber(clock=clock)
    for _ in range(50):  # a burst of readings of two devices
        sub.mark("a")
        sub.mark("b")
    assert sub.take(0) == ["a", "b"]
    sub.mark("a")
    assert sub.take(0) == []  # "a" was sent this second
    clock.now += 0.999
    assert sub.take(0) == []
    clock.now += 0.001
    assert sub.take(0) == ["a"]
    assert len(sub.dirty) == 0


def test_a_device_page_subscriber_sees_only_its_device() -> None:
    sub = Subscriber(device="a", clock=Clock(1000.0))
    sub.mark("b")
    sub.mark("a")
    assert sub.take(0) == ["a"]


def test_the_backlog_is_bounded_and_overflow_asks_for_a_reload() -> None:
    sub = Subscriber(max_dirty=3, clock=Clock(1000.0))
    for d in ("a", "b", "c", "d"):
        sub.mark(d)
    assert len(sub.dirty) == 3
    assert sub.take(0) == RESET


@pytest.mark.parametrize(("values", "expected"), [
    ({"t": 21.5, "on": True, "name": "x", "n": None}, {"t": 21.5, "on": 1.0}),
    ({"bad": float("nan"), "i": 3}, {"i": 3.0}),
])
def test_numeric_values_are_what_a_chart_draws(values: dict[str, Any],
                                                expected: dict[str, float]) -> None:
    assert numeric(values) == expected


def fed(ring: int = 100) -> Feed:
    """A feed loaded with two devices and five changes, as if it had followed the log (the
    aggregator address is never called: nothing here waits for the network)."""
    feed = Feed(RestClient("http://127.0.0.1:9", name="unused"), ring=ring)
    info = {"source": "serial", "online": True, "last_seen": 1.0, "units": {"t": "°C"}}
    feed._load({"epoch": "e1", "seq": 10, "devices": [
        {"info": {"device_id": "a", **info}, "state": None},
        {"info": {"device_id": "b", **info}, "state": None}]})
    for seq, device in enumerate(["a", "b", "a", "a", "b"], start=11):
        feed._apply({"kind": "state", "seq": seq, "device_id": device, "ts": float(seq),
                     "values": {"t": float(seq)}, "sampled": ["t"]})
    feed._synced.set()
    return feed


def test_last_event_id_replays_the_devices_changed_after_it() -> None:
    feed = fed()
    assert feed.position() == "e1:15"
    assert feed.subscribe("e1:13").take(0) == ["a", "b"]  # 14: a, 15: b
    assert feed.subscribe("e1:14").take(0) == ["b"]
    assert feed.subscribe("e1:15").take(0) == []
    row = feed.device("a")
    assert row is not None
    assert row["series"] == [[11.0, {"t": 11.0}], [13.0, {"t": 13.0}],
                                          [14.0, {"t": 14.0}]]


@pytest.mark.parametrize("last_id", ["e0:13", "e1:99", "e1:2"])
def test_an_id_from_another_epoch_or_out_of_the_ring_and_the_log_resets(last_id: str) -> None:
    # The ring keeps seq 13..15; e1:2 is asked of the durable log, which cannot answer here
    # (tests/e2e/test_dashboard_replay.py has the log answer it).
    feed = fed(ring=3)
    assert feed.subscribe(last_id).take(0) == RESET


def test_an_updated_device_keeps_its_values_and_takes_the_new_units() -> None:
    feed = fed()
    feed._apply({"kind": "device", "seq": 16, "device_id": "a", "ts": 16.0, "action": "updated",
                 "info": {"device_id": "a", "source": "sensor", "online": True,
                          "last_seen": 14.0, "units": {"t": "°F"}}})
    row = feed.rows["a"]
    assert (row["units"], row["values"], row["ts"]) == ({"t": "°F"}, {"t": 14.0}, 14.0)
    feed._apply({"kind": "device", "seq": 17, "device_id": "b", "ts": 17.0, "action": "removed"})
    assert "b" not in feed.rows


def test_a_command_result_joins_the_device_recent_list_and_wakes_its_page() -> None:
    feed = fed()
    sub = feed.subscribe("e1:15", device="a")
    feed._apply({"kind": "command", "seq": 16, "device_id": "a", "ts": 16.0, "cmd_id": "mqtt-1",
                 "values": {"state": "on"}, "status": "success", "result": None, "error": None})
    assert feed.subscribe("e1:15", device="a").take(0) == ["a"]  # replayed from the ring
    row = feed.device("a")
    assert row is not None and row["recent"][-1] == {
        "kind": "command", "ts": 16.0, "seq": 16, "cmd_id": "mqtt-1", "values": {"state": "on"},
        "status": "success", "result": None, "error": None}
    assert sub.take(0) == []  # _apply alone marks nobody: _follow does, after the batch


def test_replayed_notes_join_the_recent_list_in_order_and_once() -> None:
    """Events the feed did not follow (it was unwatched, or the program restarted) come from the
    durable log with a replay: merged by seq, never twice, the newest error on the row."""
    feed = fed()
    feed._apply({"kind": "event", "seq": 20, "device_id": "a", "ts": 20.0, "event": "late"})
    for seq in (14, 20, 12):  # 20 is already there; 12 and 14 were missed
        feed._remember({"kind": "event", "seq": seq, "device_id": "a", "ts": float(seq),
                        "event": f"e{seq}"})
    feed._remember({"kind": "error", "seq": 13, "device_id": "a", "ts": 13.0,
                    "error_code": "E", "message": "m", "severity": "error"})
    row = feed.device("a")
    assert row is not None
    assert [e["seq"] for e in row["recent"]] == [12, 13, 14, 20]
    assert row["error"]["seq"] == 13
    feed._remember({"kind": "error", "seq": 9, "device_id": "a", "ts": 9.0,
                    "error_code": "OLD", "message": "m", "severity": "error"})
    assert feed.rows["a"]["error"]["error_code"] == "E"  # an older error does not replace it
    feed._remember({"kind": "event", "seq": 30, "device_id": "gone", "ts": 30.0, "event": "x"})
    assert "gone" not in feed.recent
