"""Device topics as a real subscriber sees them: every topic once after a (re)start, a new
device alone, a removed device leaves nothing retained, per-property topics by policy, and the
state's per-device ``seq``."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from connector.bridge import Bridge
from shared.models import (
    ChangesPage,
    DeviceChange,
    EventObs,
    ReadingObs,
    RegisterDevice,
    StateChange,
)
from tests.connector.conftest import SENSORS, Hub
from tests.helpers import Broker, Subscriber, publish, retained, wait_for


def reading(device: str, **values: object) -> ReadingObs:
    return ReadingObs(device_id=device, ts=time.time(), values=values)


def device_topics(sub: Subscriber, root: str) -> Counter[str]:
    """Live messages per device topic (a retained copy the broker replays is not counted)."""
    with sub.lock:
        return Counter(m.topic.removeprefix(f"{root}/devices/") for m in sub.messages
                       if m.topic.startswith(f"{root}/devices/") and not m.retain)


def marker(hub: Hub, sub: Subscriber, value: float) -> None:
    """A reading of s3 through the same path as everything else: once it is at the
    subscriber, whatever the bridge published before it is there too."""
    hub.agg.ingest([reading("s3", temperature=value)])
    sub.wait(f"{hub.root}/devices/s3/state", where=lambda m: m.json()["temperature"] == value)


@pytest.mark.parametrize("restarts", [0, 1])
def test_a_start_publishes_every_topic_once(broker: Broker, hub: Hub, tmp_path: Path,
                                            restarts: int) -> None:
    hub.agg.ingest([reading("s1", temperature=20.5, humidity=40.0), reading("s2", temperature=19.0)])
    for _ in range(restarts):  # as `supervisorctl restart mqtt-bridge` does
        first = hub.bridge(broker, tmp_path)
        def up(b: Bridge = first) -> bool:
            return b.ctx.mirror.synced and b.client.connected.is_set()

        wait_for(up, what="the first bridge up")
        first.stop()
    sub = Subscriber(broker.host, broker.port).subscribe(f"{hub.root}/devices/#")
    try:
        hub.bridge(broker, tmp_path)
        marker(hub, sub, 30.0)
        seen = device_topics(sub, hub.root)
        for topic in ("s1/availability", "s1/state", "s1/state/temperature", "s1/state/humidity",
                      "s2/availability", "s2/state", "s2/state/temperature",
                      "relay/availability"):
            assert seen[topic] == 1, f"{topic} published {seen[topic]} times: {seen}"
    finally:
        sub.close()


def test_a_new_device_publishes_only_itself_and_a_removed_one_is_cleared(
        broker: Broker, hub: Hub, tmp_path: Path) -> None:
    hub.agg.ingest([reading("s1", temperature=20.5)])
    sub = Subscriber(broker.host, broker.port).subscribe(f"{hub.root}/devices/#")
    try:
        bridge = hub.bridge(broker, tmp_path)
        marker(hub, sub, 30.0)
        sub.clear()
        shape = bridge.ctx.mirror.shape
        marker(hub, sub, 30.5)  # a state with the same properties: the same shape
        assert bridge.ctx.mirror.shape == shape
        for i in range(20):
            hub.agg.register(RegisterDevice(device_id=f"probe_{i}", source="probe", interval=10))
        hub.agg.ingest([reading("probe_7", temperature_c=21.5)])
        marker(hub, sub, 31.0)
        seen = device_topics(sub, hub.root)
        assert {t for t in seen if not t.startswith(("probe_", "s3/"))} == set(), seen
        assert all(seen[f"probe_{i}/availability"] == 1 + (i == 7) for i in range(20)), seen
        assert json.loads(sub.wait(f"{hub.root}/devices/probe_7/state/temperature_c").payload) \
            == 21.5
        assert "probe_7" in bridge.ctx.mirror.devices
        assert bridge.ctx.mirror.shape >= shape + 21  # 20 devices, and probe_7's properties

        # The aggregator drops probe_7 (a stale probe removed): nothing of it stays retained.
        hub.agg.changes.append(lambda seq: DeviceChange(seq=seq, device_id="probe_7",
                                                        ts=time.time(), action="removed"))
        wait_for(lambda: "probe_7" not in bridge.ctx.mirror.devices, what="probe_7 removed")
        for suffix in ("availability", "state", "state/temperature_c"):
            sub.wait(f"{hub.root}/devices/probe_7/{suffix}", where=lambda m: m.payload == b"")
        ghost = Subscriber(broker.host, broker.port).subscribe(f"{hub.root}/devices/probe_7/#")
        try:
            marker(hub, sub, 32.0)  # the broker sends retained messages with the SUBACK
            assert ghost.messages == []
        finally:
            ghost.close()
    finally:
        sub.close()


@pytest.mark.parametrize(("policy", "expected"), [
    ("changed", ["temperature", "humidity", "humidity"]),
    ("all", ["temperature", "humidity", "temperature", "humidity", "temperature", "humidity"]),
    ("off", []),
])
def test_property_topics_follow_the_policy(broker: Broker, hub: Hub, tmp_path: Path,
                                           policy: str, expected: list[str]) -> None:
    sub = Subscriber(broker.host, broker.port).subscribe(f"{hub.root}/devices/s1/#")
    try:
        bridge = hub.bridge(broker, tmp_path, mqtt_property_topics=policy)
        wait_for(lambda: bridge.ctx.mirror.synced and bridge.client.connected.is_set(),
                 what="the bridge up")
        for humidity in (40.0, 40.0, 41.0):  # the temperature never changes
            hub.agg.ingest([reading("s1", temperature=20.0, humidity=humidity)])
            time.sleep(0.002)  # distinct sampling times: a reading may not roll state back
        states = wait_for(lambda: len(got := sub.on(f"{hub.root}/devices/s1/state")) == 3 and got,
                          what="three states")
        marker(hub, Subscriber(broker.host, broker.port).subscribe(f"{hub.root}/#"), 1.0)
        props = [m.topic.rsplit("/", 1)[1] for m in sub.messages if "/state/" in m.topic]
        assert props == expected
        assert [s.json()["seq"] for s in states] == [1, 2, 3]

        # A rebirth republishes every property (unless off) with the state's own seq again.
        sub.clear()
        publish(broker.host, broker.port, f"{hub.root}/meta/request/rebirth", b"{}")
        state = sub.wait(f"{hub.root}/devices/s1/state")
        assert state.json()["seq"] == 3
        if policy != "off":
            assert json.loads(sub.wait(f"{hub.root}/devices/s1/state/temperature").payload) == 20.0
    finally:
        sub.close()


@pytest.mark.parametrize("property_qos", [0, 1])
def test_property_topics_go_at_their_own_qos(broker: Broker, hub: Hub, tmp_path: Path,
                                             property_qos: int) -> None:
    """The state topic at MQTT_QOS (1), the property topics at MQTT_PROPERTY_QOS (default 0):
    they repeat the state's values, and two of a reading's three messages are property topics.
    The subscriber asks for QoS 1, so it gets what the bridge published with."""
    sub = Subscriber(broker.host, broker.port).subscribe(f"{hub.root}/devices/s1/#")
    try:
        overrides: dict[str, Any] = {} if property_qos == 0 else {"mqtt_property_qos": property_qos}
        hub.bridge(broker, tmp_path, **overrides)
        hub.agg.ingest([reading("s1", temperature=20.0, humidity=40.0)])
        prop = sub.wait(f"{hub.root}/devices/s1/state/humidity",
                        where=lambda m: json.loads(m.payload) == 40.0 and not m.retain)
        state = sub.wait(f"{hub.root}/devices/s1/state", where=lambda m: not m.retain)
        assert (state.qos, prop.qos) == (1, property_qos)
    finally:
        sub.close()


def test_state_payload_keeps_the_contract_fields(broker: Broker, hub: Hub,
                                                 tmp_path: Path) -> None:
    hub.bridge(broker, tmp_path)
    hub.agg.ingest([reading("s2", seq=999, temperature=1.5)])  # a property named like a field
    body = retained(broker.host, broker.port, f"{hub.root}/devices/s2/state",
                    where=lambda m: "temperature" in m.json()).json()
    assert body["seq"] == 1 and body["device_id"] == "s2" and body["temperature"] == 1.5
    assert retained(broker.host, broker.port, f"{hub.root}/devices/s2/state/seq").json() == 999
    assert set(SENSORS) >= {"s2"}


def test_a_resync_publishes_only_what_changed_meanwhile(broker: Broker, hub: Hub,
                                                        tmp_path: Path) -> None:
    hub.agg.ingest([reading("s1", temperature=20.5), reading("s2", temperature=19.0)])
    sub = Subscriber(broker.host, broker.port).subscribe(f"{hub.root}/devices/#")
    try:
        bridge = hub.bridge(broker, tmp_path)
        marker(hub, sub, 30.0)
        sub.clear()
        # As after an aggregator restart: the feed reloads the snapshot (s2 changed meanwhile).
        bridge.state.epoch = None
        hub.agg.ingest([reading("s2", temperature=19.5)])
        wait_for(lambda: bridge.state.epoch is not None, what="the snapshot reloaded")
        marker(hub, sub, 31.0)
        seen = device_topics(sub, hub.root)
        assert "s1/state" not in seen and "s1/availability" not in seen, seen
        assert sub.wait(f"{hub.root}/devices/s2/state").json()["temperature"] == 19.5
    finally:
        sub.close()


def test_state_topics_of_a_batch_go_before_its_property_topics(broker: Broker, hub: Hub,
                                                               tmp_path: Path) -> None:
    hub.agg.ingest([reading(s, temperature=20.0 + i, humidity=50.0) for i, s in enumerate(SENSORS)])
    sub = Subscriber(broker.host, broker.port).subscribe(f"{hub.root}/devices/#")
    try:
        hub.bridge(broker, tmp_path)  # the first snapshot: one batch of every device
        wait_for(lambda: len([m for m in sub.messages if "/state/" in m.topic]) == 6,
                 what="every property topic")
        kinds = ["prop" if "/state/" in m.topic else "state" for m in sub.messages
                 if m.topic.endswith("/state") or "/state/" in m.topic]
        assert kinds == ["state"] * 3 + ["prop"] * 6
    finally:
        sub.close()


class WarmUp(threading.Event):
    """The aggregator's warm-up, held open by the test, which learns when a snapshot waits on
    it (the bridge has asked for its snapshot)."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waited.set()
        return super().wait(timeout)


def test_what_comes_in_while_the_snapshot_waits_for_the_warm_up_reaches_mqtt(
        broker: Broker, hub: Hub, tmp_path: Path) -> None:
    """A restarted aggregator answers the bridge's snapshot only after its warm-up; a probe that
    registers meanwhile, reports twice and raises an event is in the log, not all in the
    snapshot (which holds its last state only)."""
    warm_up = WarmUp()
    hub.agg.warmed = warm_up
    sub = Subscriber(broker.host, broker.port).subscribe(f"{hub.root}/devices/#")
    try:
        bridge = hub.bridge(broker, tmp_path)
        warm_up.waited.wait(10)  # the bridge asked: what follows is after its position
        assert warm_up.waited.is_set() and not bridge.ctx.mirror.synced
        hub.agg.register(RegisterDevice(device_id="probe_new", source="probe", interval=10))
        hub.agg.ingest([reading("probe_new", temperature_c=21.0)])
        hub.agg.ingest([EventObs(device_id="probe_new", ts=time.time(), event="rebooted")])
        hub.agg.ingest([reading("probe_new", temperature_c=21.5)])
        warm_up.set()
        wait_for(lambda: bridge.ctx.mirror.synced, what="the snapshot loaded")
        marker(hub, sub, 30.0)  # after the snapshot: it comes after all its messages
        dev = f"{hub.root}/devices/probe_new"
        assert [m.json()["seq"] for m in sub.on(f"{dev}/state")] == [1, 2]
        assert [m.json()["event"] for m in sub.on(f"{dev}/events")] == ["rebooted"]
        assert [m.text for m in sub.on(f"{dev}/availability")][-1] == "online"
        assert [json.loads(m.payload) for m in sub.on(f"{dev}/state/temperature_c")] == [
            21.0, 21.5]
        assert retained(broker.host, broker.port, f"{dev}/state").json()["seq"] == 2
    finally:
        sub.close()


def test_the_backlog_figure_survives_a_page_published_but_not_yet_dropped(
        broker: Broker, hub: Hub, tmp_path: Path) -> None:
    """``meta/health``'s outbox asked between a page's last change and its removal: the oldest
    pending change is the next page's first (it raised IndexError at 10,000 devices)."""
    state = hub.bridge(broker, tmp_path, start=False).state
    now = time.time()

    def page(first: int, n: int, ts: float) -> ChangesPage:
        return ChangesPage(epoch="e", seq=first + n - 1, changes=[
            StateChange(seq=first + i, device_seq=first + i, device_id="s1", ts=ts, values={},
                        sampled=[]) for i in range(n)])

    state._pages.extend([page(1, 3, now - 50), page(4, 2, now - 20)])
    state._position, state._pending = 3, 2  # the first page wholly published, still held
    figure = state.outbox()
    assert figure["pending"] == 2
    assert 19 <= figure["oldest_age_s"] < 30
    state._pages.popleft()
    state._position, state._pending = 2, 0
    assert state.outbox() == {"pending": 0, "oldest_age_s": 0.0, "thinned": 0,
                              "thinned_events": 0}
