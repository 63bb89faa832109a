"""The serial handler's REST endpoints through the Flask test client, over a real pty; and one
fresh read through a real HTTP server, as the aggregator makes it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from services.serial_handler.app import create_app
from services.serial_handler.core import SerialHandler
from services.state_aggregator.core import Aggregator
from shared.models import LinkObs, ReadingObs, StateChange
from shared.rest import RestClient
from tests.helpers import Recorder, wait_for

from .conftest import BoardFactory, FakeBoard, HandlerFactory, make_instance, serial_sensor

Setup = tuple[SerialHandler, FlaskClient, FakeBoard]


@pytest.fixture
def setup(board: BoardFactory, start_handler: HandlerFactory) -> Setup:
    b = board()
    handler = start_handler(
        serial_sensor("t1", b.path, mode="poll", read_timeout=0.3, interval=60),
        serial_sensor("relay1", b.path, mode="poll", read_timeout=0.3, interval=60,
                      writable=True),
    )
    # The first poll of each sensor goes unanswered (READ_TIMEOUT); consume both requests.
    assert {b.read_line(), b.read_line()} == {b'{"id":"t1","read":true}\n',
                                            b'{"id":"relay1","read":true}\n'}
    return handler, create_app(handler=handler).test_client(), b


def test_fresh_read_answers_200_with_the_reading(setup: Setup) -> None:
    _handler, client, b = setup
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(client.get, "/sensor/t1")
        assert b.read_line() == b'{"id":"t1","read":true}\n'
        b.send('{"id": "t1", "temperature": 21.5, "humidity": 40}')
        resp = answer.result(3)
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["cached"] is False and body["sensor_id"] == "t1"
    assert body["reading"]["values"] == {"temperature": 21.5, "humidity": 40}
    assert body["timestamp"].endswith("Z")

    cached = client.get("/sensor/t1/cached").get_json()
    assert cached["cached"] is True and cached["reading"] == body["reading"]


def test_fresh_read_can_ask_for_some_properties(setup: Setup) -> None:
    _handler, client, b = setup
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(client.get, "/sensor/t1?properties=humidity")
        b.read_line()
        b.send('{"id": "t1", "temperature": 21.5, "humidity": 40}')
        assert answer.result(3).get_json()["reading"]["values"] == {"humidity": 40}


def test_fresh_read_timeout_is_503_with_error_message_timestamp(setup: Setup) -> None:
    _handler, client, _b = setup
    resp = client.get("/sensor/t1")
    assert resp.status_code == 503
    body = resp.get_json()
    assert set(body) == {"error", "message", "timestamp"}
    assert body["error"] == "READ_TIMEOUT" and "0.3 s" in body["message"]


def test_unknown_sensor_is_404_and_no_data_yet_is_503(setup: Setup) -> None:
    _handler, client, _b = setup
    assert client.get("/sensor/nope").status_code == 404
    assert client.get("/sensor/nope/cached").get_json()["error"] == "unknown_device"
    resp = client.get("/sensor/t1/cached")
    assert (resp.status_code, resp.get_json()["error"]) == (503, "NO_DATA")


def test_command_route_success_rejected_and_bad_body(setup: Setup) -> None:
    _handler, client, b = setup
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(client.post, "/sensor/relay1/command",
                             json={"cmd_id": "c1", "values": {"state": "on"}, "timeout_s": 3})
        assert b.read_line() == b'{"id":"relay1","cmd_id":"c1","values":{"state":"on"}}\n'
        b.send("id=relay1 ack=c1 ok=true")
        assert answer.result(3).get_json() == {"status": "success"}

    rejected = client.post("/sensor/t1/command", json={"cmd_id": "c2", "values": {"x": 1}})
    assert rejected.status_code == 200 and rejected.get_json()["status"] == "rejected"
    bad = client.post("/sensor/relay1/command", json={"values": {"state": "on"}})
    assert bad.status_code == 422 and "cmd_id" in bad.get_json()["message"]
    timeout = client.post("/sensor/relay1/command",
                          json={"cmd_id": "c3", "values": {"state": "on"}, "timeout_s": 0.2})
    assert timeout.get_json()["status"] == "timeout"


def test_errors_lists_and_counts_bad_lines(setup: Setup) -> None:
    handler, client, b = setup
    b.send("?? not a line ??")
    b.send("id=t1 temperature=20")
    wait_for(lambda: handler.ports[b.path].slots["t1"].last, what="the good line after garbage")
    body = client.get("/errors").get_json()
    assert body["bad_lines"] == {b.path: 1}
    assert body["counts"]["BAD_LINE"] == 1  # beside the first polls' READ_TIMEOUTs
    (bad,) = [e for e in body["errors"] if e["error_code"] == "BAD_LINE"]
    assert bad["port"] == b.path and "?? not a line ??" in bad["message"]


def test_health_and_sensors_show_the_port_going_down_and_why(setup: Setup, recorder: Recorder) -> None:
    _handler, client, b = setup
    health = client.get("/health").get_json()
    (port,) = health["ports"]
    assert port["up"] is True and port["sensors"] == ["relay1", "t1"]
    b.unplug()
    recorder.wait(LinkObs, "t1", lambda o: not o.up)
    (port,) = client.get("/health").get_json()["ports"]
    assert port["up"] is False and b.path in port["down_reason"]
    sensors = {s["sensor_id"]: s for s in client.get("/sensors").get_json()["sensors"]}
    assert sensors["t1"]["port_up"] is False and sensors["relay1"]["writable"] is True
    read = client.get("/sensor/t1")
    assert (read.status_code, read.get_json()["error"]) == (503, "PORT_UNAVAILABLE")


@pytest.fixture
def http_server(setup: Setup) -> Iterator[str]:
    handler, _client, _b = setup
    server = make_server("127.0.0.1", 0, create_app(handler=handler), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


def test_fresh_read_over_real_http(setup: Setup, http_server: str) -> None:
    _handler, _client, b = setup
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(requests.get, f"{http_server}/sensor/t1", timeout=5)
        assert b.read_line() == b'{"id":"t1","read":true}\n'
        b.send("id=t1 temperature=23")
        resp = answer.result(5)
    assert resp.status_code == 200
    assert ReadingObs.model_validate(resp.json()["reading"]).values == {"temperature": 23}


def test_a_fresh_read_through_the_aggregator_becomes_state_once(setup: Setup, http_server: str,
                                                                recorder: Recorder) -> None:
    """The MQTT ``get`` path: aggregator -> real HTTP -> handler -> pty and back. The handler
    answers with the reading and does not push it, so the aggregator's change log has exactly
    one state for it (and nothing counted stale)."""
    _handler, _client, b = setup
    agg = Aggregator(make_instance(serial_sensor("t1", b.path)), poll_interval=5,
                     handlers={"serial": RestClient(http_server, name="serial-handler")},
                     cache_ttl=10)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(agg.refresh, "t1")
        assert b.read_line() == b'{"id":"t1","read":true}\n'
        b.send("id=t1 temperature=23")
        view = answer.result(5)
    assert (view["state"], view["cached"], view["device_seq"]) == ({"temperature": 23}, False, 1)
    assert not recorder.of(ReadingObs, "t1")  # not pushed as well
    states = [c for c in agg.changes.since(0)[2] if isinstance(c, StateChange)]
    assert [c.values for c in states] == [{"temperature": 23}]
    assert (agg.counters["readings"], agg.counters["stale"]) == (1, 0)
    # A line nobody asked for still takes the push path.
    b.send("id=t1 temperature=24")
    recorder.wait(ReadingObs, "t1", lambda r: r.values == {"temperature": 24})


def test_readings_pages_and_the_aggregators_warm_up_from_them(
        setup: Setup, http_server: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """``/readings`` gives each sensor's last reading a page at a time; a restarted
    aggregator's warm-up takes them over real HTTP, page by page, to the same state as in one
    page."""
    handler, client, b = setup
    caplog.set_level(logging.INFO, logger="services.state_aggregator.core")
    b.send("id=t1 temperature=20")
    last = wait_for(lambda: handler.ports[b.path].slots["t1"].last, what="t1's reading")
    whole = client.get("/readings").get_json()
    assert (whole["readings"], whole["next"], whole["total"]) == ([last.model_dump()], None, 2)
    first = client.get("/readings?limit=1").get_json()
    second = client.get("/readings?offset=1&limit=1").get_json()
    assert (first["readings"], first["next"]) == (whole["readings"], 1)
    assert (second["readings"], second["next"]) == ([], None)

    def warmed(page: int) -> Aggregator:
        monkeypatch.setattr("services.state_aggregator.core.WARM_UP_PAGE", page)
        agg = Aggregator(make_instance(serial_sensor("t1", b.path), serial_sensor("relay1", b.path)),
                         poll_interval=5, cache_ttl=10,
                         handlers={"serial": RestClient(http_server, name="serial-handler")})
        agg.warm_up(deadline_s=5)
        return agg

    paged, at_once = warmed(1), warmed(1_000)
    for agg in (paged, at_once):
        assert agg.devices["t1"].values == {"temperature": 20}
        assert agg.devices["t1"].state_ts == last.ts and agg.devices["t1"].device_seq == 1
        assert agg.devices["relay1"].last_seen is None
        assert agg.counters["readings"] == 1
    assert caplog.text.count("warm-up: 1 last readings from serial-handler\n") == 2  # not /sensors
    assert "GET /readings?offset=1&limit=1 " in caplog.text and "GET /sensors" not in caplog.text
