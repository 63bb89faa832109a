"""The aggregator's core (no HTTP) and its routes through the Flask test client."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from services.state_aggregator.app import create_app
from services.state_aggregator.changes import ChangeLog
from services.state_aggregator.core import Aggregator
from services.state_aggregator.registry import InstanceRegistry
from shared.compact import detached
from shared.errors import ServiceError
from shared.instance import parse_instance
from shared.models import (
    AvailabilityChange,
    ChangesPage,
    ErrorObs,
    EventObs,
    LinkObs,
    ReadingObs,
    Snapshot,
    StateChange,
)
from shared.rest import RestClient
from shared.timeutil import iso
from tests.connector.conftest import serve
from tests.helpers import Clock

INSTANCE = parse_instance({
    "instance_id": "t", "friendly_name": "test", "update_interval": 10,
    "config": {"cache_ttl": 10, "sensors": [
        {"sensor_id": "temp", "sensor_type": "climate",
         "source": {"type": "serial", "port": "sim://a?ids=temp", "mode": "poll"}},
        {"sensor_id": "relay", "sensor_type": "switch",
         "source": {"type": "serial", "port": "sim://b?ids=relay", "writable": True}},
        {"sensor_id": "slow", "sensor_type": "climate", "interval": 60,
         "source": {"type": "http", "url": "http://127.0.0.1:9/x"}},
    ]},
    "groups": [{"group_id": "all", "devices": ["temp", "relay"]}],
})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def agg(clock: Clock) -> Aggregator:
    # Handlers at a closed port: anything that reaches them fails like a dead process.
    dead = {"serial": RestClient("http://127.0.0.1:9", name="serial-handler", timeout=0.5),
            "http": RestClient("http://127.0.0.1:9", name="http-poller", timeout=0.5)}
    return Aggregator(INSTANCE, handlers=dead, cache_ttl=10, poll_interval=5, clock=clock)


def kinds(agg: Aggregator, since: int = 0) -> list[tuple[str, str]]:
    return [(c.kind, c.device_id) for c in agg.changes.since(since)[2]]


def test_readings_merge_into_state_and_go_online(agg: Aggregator, clock: Clock) -> None:
    agg.ingest([ReadingObs(device_id="temp", ts=clock.now, values={"temperature": 21.5,
                                                                   "humidity": 40})])
    agg.ingest([ReadingObs(device_id="temp", ts=clock.now + 1, values={"temperature": 22.0})])
    assert kinds(agg) == [("state", "temp"), ("availability", "temp"), ("state", "temp")]
    last = agg.changes.since(2)[2][-1]
    assert isinstance(last, StateChange)
    assert last.values == {"temperature": 22.0, "humidity": 40}
    assert last.sampled == ["temperature"]
    assert (last.seq, last.device_seq) == (3, 2)  # the log's position; the device's 2nd state
    assert agg.devices["temp"].state == last  # what the snapshot serves is what the log carried


def test_device_seq_grows_by_one_per_state_of_each_device(agg: Aggregator, clock: Clock) -> None:
    for i in range(3):
        agg.ingest([ReadingObs(device_id="temp", ts=clock.now + i, values={"t": i}),
                    ReadingObs(device_id="slow", ts=clock.now + i, values={"t": i})])
    agg.ingest([ReadingObs(device_id="temp", ts=clock.now, values={"t": -1})])  # stale: no state
    agg.ingest([ErrorObs(device_id="temp", ts=clock.now + 5, error_code="E", message="m")])
    agg.ingest([ReadingObs(device_id="temp", ts=clock.now + 9, values={"t": 9})])
    states = [c for c in agg.changes.since(0)[2] if isinstance(c, StateChange)]
    assert [c.device_seq for c in states if c.device_id == "temp"] == [1, 2, 3, 4]
    assert [c.device_seq for c in states if c.device_id == "slow"] == [1, 2, 3]
    log_seqs = [c.seq for c in agg.changes.since(0)[2]]
    assert log_seqs == list(range(1, len(log_seqs) + 1))  # the log's own numbering is global


def test_an_older_reading_never_rolls_state_back(agg: Aggregator, clock: Clock) -> None:
    agg.ingest([ReadingObs(device_id="temp", ts=clock.now, values={"temperature": 22.0})])
    agg.ingest([ReadingObs(device_id="temp", ts=clock.now - 5, values={"temperature": 1.0})])
    assert agg.devices["temp"].values == {"temperature": 22.0}
    assert agg.counters["stale"] == 1


def test_offline_after_three_intervals_but_never_under_30_s(agg: Aggregator, clock: Clock) -> None:
    agg.ingest([ReadingObs(device_id="temp", ts=clock.now, values={"t": 1}),
                ReadingObs(device_id="slow", ts=clock.now, values={"t": 1})])
    temp, slow = agg.devices["temp"], agg.devices["slow"]
    assert (temp.offline_after, slow.offline_after) == (30.0, 180.0)
    clock.now += 30
    assert temp.online(clock.now)
    clock.now += 0.5
    assert not temp.online(clock.now) and slow.online(clock.now)
    clock.now += 150
    assert not slow.online(clock.now)


def test_the_transport_takes_a_device_offline_at_once(agg: Aggregator, clock: Clock) -> None:
    agg.ingest([ReadingObs(device_id="temp", ts=clock.now, values={"t": 1})])
    seq = agg.changes.seq
    agg.ingest([LinkObs(device_id="temp", ts=clock.now, up=False, reason="port gone")])
    assert agg.changes.since(seq)[2] == [AvailabilityChange(
        seq=seq + 1, device_id="temp", ts=clock.now, online=False)]
    agg.ingest([LinkObs(device_id="temp", ts=clock.now, up=True)])
    assert agg.devices["temp"].online(clock.now)


def test_errors_and_events_reach_the_change_log(agg: Aggregator, clock: Clock) -> None:
    agg.ingest([ErrorObs(device_id="temp", ts=clock.now, error_code="READ_TIMEOUT", message="m"),
                EventObs(device_id="temp", ts=clock.now, event="motion_started")])
    assert kinds(agg) == [("error", "temp"), ("event", "temp")]
    assert agg.errors[-1]["error_code"] == "READ_TIMEOUT"


def test_unknown_devices_are_counted_not_applied(agg: Aggregator, clock: Clock) -> None:
    result = agg.ingest([ReadingObs(device_id="ghost", ts=clock.now, values={"t": 1})],
                        source="serial-handler")
    assert result == {"accepted": 0, "rejected": 1, "durable": False}
    assert "unknown device 'ghost'" in agg.errors[-1]["message"]
    assert agg.changes.seq == 0


def test_change_log_long_poll_and_resync() -> None:
    log = ChangeLog(capacity=3)
    def change(ts: float) -> Callable[[int], AvailabilityChange]:
        return lambda seq: AvailabilityChange(seq=seq, device_id="d", ts=ts, online=True)

    for i in range(10):
        log.append(change(i))
    seq, resync, items = log.since(0)
    assert resync and items == []  # position 0 is gone: reload the snapshot
    seq, resync, items = log.since(8)
    assert (seq, resync, [(c.seq, c.ts) for c in items]) == (10, False, [(9, 8), (10, 9)])
    assert log.since(10, wait=0.05) == (10, False, [])
    assert log.since(99)[1]


def test_device_view_serves_the_stored_state_within_the_ttl(agg: Aggregator,
                                                            clock: Clock) -> None:
    agg.ingest([ReadingObs(device_id="temp", ts=clock.now, values={"t": 20})])
    clock.now += 4
    view = agg.cached_state("temp")
    assert (view["cached"], view["cache_age"], view["state"], view["device_seq"]) == \
        (True, 4.0, {"t": 20}, 1)
    clock.now += 6  # 10 s old: past the TTL, so the (dead) handler is asked
    with pytest.raises(ServiceError, match="serial-handler"):
        agg.cached_state("temp")
    agg.ingest([ReadingObs(device_id="temp", ts=clock.now, values={"t": 21})])
    assert agg.cached_state("temp")["cached"] is True
    assert agg.cache_clear() == 1
    with pytest.raises(ServiceError):
        agg.cached_state("temp")
    assert agg.cache_stats() == {"ttl": 10, "size": 0, "live": 0, "hits": 2, "misses": 2,
                                 "expired": 1, "hit_ratio": 0.5}


def test_read_only_devices_reject_commands(agg: Aggregator) -> None:
    from shared.models import CommandRequest
    result = agg.command("temp", CommandRequest(cmd_id="c", values={"x": 1}))
    assert result.status == "rejected" and "read-only" in (result.error or "")
    dead = agg.command("relay", CommandRequest(cmd_id="c", values={"state": "on"}))
    assert dead.status == "error" and "serial-handler" in (dead.error or "")
    # every result reaches the change log, whoever sent the command (the dashboard shows it)
    logged = [c for c in agg.changes.since(0)[2] if c.kind == "command"]
    assert [(c.device_id, c.cmd_id, c.values, c.status) for c in logged] == [
        ("temp", "c", {"x": 1}, "rejected"), ("relay", "c", {"state": "on"}, "error")]


# --- routes -------------------------------------------------------------------------------------

@pytest.fixture
def client(agg: Aggregator) -> FlaskClient:
    return create_app(agg).test_client()


def body(resp: Any) -> Any:
    return json.loads(resp.data)


def test_ingest_route_batches(client: FlaskClient, clock: Clock) -> None:
    items = [{"kind": "reading", "device_id": "temp", "ts": clock.now + i, "values": {"t": i}}
             for i in range(100)]
    resp = client.post("/ingest", json={"source": "test", "items": items})
    assert resp.status_code == 200 and body(resp) == {"accepted": 100, "rejected": 0, "durable": False}
    changes = body(client.get("/changes?since=0"))
    assert len(changes["changes"]) == 101  # 100 states and one availability


@pytest.mark.parametrize(("data", "status", "error", "message"), [
    (b"{nope", 400, "invalid_json", "body is not valid JSON"),
    (b"", 400, "empty_body", "a JSON object is required"),
    (b"[1]", 422, "invalid_body", "body must be a JSON object"),
    (b'{"source": "x", "items": [{"kind": "reading", "device_id": "bad id", "ts": 1, "values": {}}]}',
     422, "invalid_body", "items.0.reading.device_id"),
    (b'{"source": "x", "items": [{"kind": "teleport"}]}', 422, "invalid_body", "items.0"),
])
def test_bad_bodies_get_400_or_422_with_a_message(client: FlaskClient, data: bytes, status: int,
                                                  error: str, message: str) -> None:
    resp = client.post("/ingest", data=data, content_type="application/json")
    assert resp.status_code == status
    assert body(resp)["error"] == error and message in body(resp)["message"]
    assert "timestamp" in body(resp)


def test_device_routes(client: FlaskClient, clock: Clock) -> None:
    client.post("/ingest", json={"source": "t", "items": [
        {"kind": "reading", "device_id": "temp", "ts": clock.now, "values": {"t": 20}}]})
    view = body(client.get("/device/temp"))
    assert view["cached"] is True and view["state"] == {"t": 20} and view["online"] is True
    assert view["cache_age"] == 0.0 and view["timestamp"].endswith("Z")
    assert client.get("/device/ghost").status_code == 404
    assert body(client.get("/device/ghost"))["error"] == "unknown_device"
    # Past the TTL the aggregator asks the (dead) handler: a clear 502, not a 500.
    client.post("/cache/clear")
    resp = client.get("/device/temp")
    assert resp.status_code == 502 and "serial-handler" in body(resp)["message"]
    assert body(client.get("/cache/stats"))["misses"] == 1
    devices = {d["device_id"] for d in body(client.get("/devices"))["devices"]}
    assert {"temp", "relay", "slow"} <= devices
    assert body(client.get("/groups"))["groups"] == {"all": ["temp", "relay"]}


def test_health_reports_dead_handlers(client: FlaskClient) -> None:
    health = body(client.get("/health"))
    assert health["status"] == "degraded"
    assert health["handlers"] == {"serial-handler": "down", "http-poller": "down"}


def test_the_handlers_are_asked_for_their_health_at_once(clock: Clock) -> None:
    """Each handler's /health answers only once both were asked: asked one after the other, the
    first waits out the aggregator's timeout (a handler that does not answer cost the callers
    of /health, which time out too, the whole answer)."""
    both_asked = threading.Barrier(2, timeout=5)

    def handler(environ: Any, start_response: Any) -> list[bytes]:
        try:
            both_asked.wait()
        except threading.BrokenBarrierError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"asked alone"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"status": "ok"}']

    servers = [serve(handler), serve(handler)]
    try:
        handlers = {name: RestClient(f"http://127.0.0.1:{server.server_port}", name=name)
                    for name, server in zip(("serial-handler", "http-poller"), servers,
                                            strict=True)}
        agg = Aggregator(INSTANCE, handlers=handlers, cache_ttl=10, poll_interval=5, clock=clock)
        assert agg.handler_health() == {"serial-handler": "running", "http-poller": "running"}
    finally:
        for server in servers:
            server.shutdown()


def test_snapshot_and_changes_carry_the_shared_models(client: FlaskClient, agg: Aggregator,
                                                      clock: Clock) -> None:
    client.post("/ingest", json={"source": "t", "items": [
        {"kind": "reading", "device_id": "temp", "ts": clock.now, "values": {"t": 20, "h": 1}},
        {"kind": "reading", "device_id": "temp", "ts": clock.now + 1, "values": {"t": 21}},
        {"kind": "event", "device_id": "relay", "ts": clock.now, "event": "clicked"}]})
    page = ChangesPage.model_validate_json(client.get("/changes?since=0").data)
    assert page.changes == agg.changes.since(0)[2]  # JSON round trip to the very same models
    snap = Snapshot.model_validate_json(client.get("/snapshot").data)
    states = {d.info.device_id: d.state for d in snap.devices}
    assert states["temp"] == agg.devices["temp"].state
    assert states["temp"] is not None and states["temp"].seq == 3  # its real log position
    assert (states["temp"].device_seq, states["temp"].values) == (2, {"t": 21, "h": 1})
    assert states["relay"] is None and snap.seq == agg.changes.seq


def test_the_snapshot_and_device_serve_each_last_state_byte_for_byte_as_the_log_carried_it(
        client: FlaskClient, agg: Aggregator, clock: Clock) -> None:
    """The registry keeps a device's last state as a compact tuple, not the model the change
    log carried: what ``/snapshot`` and ``/device/{id}`` make of it again is the log's JSON,
    byte for byte (the values' order after merges, their types, the reading's ``sampled``)."""
    t = clock.now
    client.post("/ingest", json={"source": "t", "items": [
        {"kind": "reading", "device_id": "temp", "ts": t, "values": {"t": 20, "h": 1.5}},
        {"kind": "reading", "device_id": "temp", "ts": t + 1, "values": {"t": 21}},  # a merge
        {"kind": "reading", "device_id": "temp", "ts": t + 2,
         "values": {"h": 2, "t": 22.25}},  # every property, in another order: still t, h
        {"kind": "reading", "device_id": "relay", "ts": t + 0.5,
         "values": {"state": "on", "raw": None, "cfg": {"a": [1, True]}}},
        {"kind": "reading", "device_id": "relay", "ts": t + 1.5,
         "values": {"state": "off", "raw": None, "cfg": {"a": [1, True]}}}]})
    carried: dict[str, bytes] = {}
    for item in agg.changes.since_json(0)[2]:
        change = json.loads(item)
        if change["kind"] == "state":
            carried[change["device_id"]] = item
    assert json.loads(carried["temp"])["values"] == {"t": 22.25, "h": 2}
    snapshot = client.get("/snapshot").data
    for device_id in ("temp", "relay"):
        assert b'"state":' + carried[device_id] + b"}" in snapshot, device_id
    assert snapshot.count(b'"state":null') == 1  # slow: no state yet
    assert agg.snapshot_json() == snapshot
    for device_id in ("temp", "relay"):
        view = client.get(f"/device/{device_id}").data
        change = json.loads(carried[device_id])
        assert (b'"state":' + carried[device_id].split(b'"values":')[1].split(b',"sampled"')[0]
                in view), device_id
        assert json.loads(view)["device_seq"] == change["device_seq"]
        assert json.loads(view)["timestamp"] == iso(change["ts"])


def test_the_snapshot_json_made_in_chunks_is_the_snapshot(agg: Aggregator, clock: Clock) -> None:
    agg.ingest([ReadingObs(device_id="temp", ts=clock.now, values={"t": 20}),
                ReadingObs(device_id="relay", ts=clock.now, values={"state": "on"})])
    for chunk in (1, 2, 500):
        assert Snapshot.model_validate_json(agg.snapshot_json(chunk=chunk)) == agg.snapshot()


def test_changes_with_another_epoch_asks_for_resync(client: FlaskClient) -> None:
    assert body(client.get("/changes?since=0&epoch=stale"))["resync"] is True
    assert client.get("/changes?since=x").status_code == 400


def test_an_aggregator_built_from_a_detached_registry_is_the_instance_files(clock: Clock) -> None:
    """What the app does: the registry made from the instance file and copied out of its load
    (``shared.compact.detached``) gives the same devices, groups and defaults."""
    registry = detached(lambda: InstanceRegistry.of(INSTANCE, poll_interval=5))
    assert (registry.instance_id, registry.groups, registry.update_interval,
            registry.cache_ttl) == ("t", {"all": ["temp", "relay"]}, 10, 10)
    dead = {"serial": RestClient("http://127.0.0.1:9", name="serial-handler", timeout=0.5),
            "http": RestClient("http://127.0.0.1:9", name="http-poller", timeout=0.5)}
    from_file = Aggregator(INSTANCE, handlers=dead, cache_ttl=10, poll_interval=5, clock=clock)
    detached_agg = Aggregator(registry, handlers=dead, cache_ttl=10, poll_interval=5, clock=clock)
    assert detached_agg.device_infos() == from_file.device_infos()
    assert (detached_agg.devices["slow"].interval, detached_agg.devices["relay"].writable) \
        == (60, True)
    detached_agg.ingest([ReadingObs(device_id="temp", ts=clock.now, values={"t": 1})])
    assert kinds(detached_agg) == [("state", "temp"), ("availability", "temp")]
