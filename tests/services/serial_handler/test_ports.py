"""SerialHandler and PortWorker against real pseudo-terminals: what a board prints becomes
observations, bad lines become counted device errors, the cable can be pulled and put back, and
commands go out on the wire and come back acknowledged."""

from __future__ import annotations

import termios
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from services.serial_handler.core import SerialHandler, SerialPlan
from services.serial_handler.protocol import MAX_LINE, MAX_TEXT
from shared.compact import detached
from shared.errors import ReadError
from shared.models import CommandRequest, ErrorObs, EventObs, LinkObs, ReadingObs
from tests.helpers import Recorder, wait_for

from .conftest import BoardFactory, HandlerFactory, make_instance, serial_sensor


def test_json_and_key_value_lines_become_readings(board: BoardFactory, start_handler: HandlerFactory,
                                                  recorder: Recorder) -> None:
    b = board()
    start_handler(serial_sensor("temp_living_room", b.path))
    recorder.wait(LinkObs, "temp_living_room", lambda o: o.up)
    b.send('{"id": "temp_living_room", "temperature": 22.5, "humidity": 41}')
    b.send('id=temp_living_room temperature=22.75 humidity=40 label="by the window"')
    first, second = recorder.wait(ReadingObs, "temp_living_room", count=2)
    assert first.values == {"temperature": 22.5, "humidity": 41}
    assert second.values == {"temperature": 22.75, "humidity": 40, "label": "by the window"}


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_any_line_ending_ends_a_line(board: BoardFactory, start_handler: HandlerFactory, recorder: Recorder,
                                     ending: bytes) -> None:
    b = board()
    start_handler(serial_sensor("t1", b.path, line_ending="\r"))
    b.send("id=t1 temperature=1", end=ending)
    b.send("id=t1 temperature=2", end=ending)
    readings = recorder.wait(ReadingObs, "t1", count=2)
    assert [r.values["temperature"] for r in readings] == [1, 2]
    assert not recorder.of(ErrorObs)


def test_port_is_opened_with_the_instance_file_settings(board: BoardFactory,
                                                        start_handler: HandlerFactory) -> None:
    b = board()
    handler = start_handler(serial_sensor("t1", b.path, baudrate=9600, parity="E", stopbits=2,
                                          bytesize=7))
    port = wait_for(lambda: handler.ports[b.path]._port, what="the port to open")
    _iflag, _oflag, cflag, lflag, ispeed, ospeed, _cc = termios.tcgetattr(b.slave_fd)
    assert ispeed == ospeed == termios.B9600
    assert cflag & termios.CSTOPB  # two stop bits
    assert not lflag & termios.ECHO  # raw: what the hub writes is not read back as a line
    # Linux ptys force CS8 and no parity whatever is asked, so these are checked on pyserial's
    # side of the same open.
    assert (port.parity, port.bytesize, port.stopbits) == ("E", 7, 2)


def test_the_hub_writes_its_configured_line_ending(board: BoardFactory, start_handler: HandlerFactory,
                                                   recorder: Recorder) -> None:
    b = board()
    start_handler(serial_sensor("t1", b.path, mode="poll", line_ending="\r\n", interval=60))
    assert b.read_line() == b'{"id":"t1","read":true}\r\n'  # polled at once on open
    b.send('{"id": "t1", "temperature": 20.5}')
    assert recorder.wait(ReadingObs, "t1")[0].values == {"temperature": 20.5}


def test_garbage_is_counted_reported_and_the_reader_goes_on(board: BoardFactory,
                                                            start_handler: HandlerFactory,
                                                            recorder: Recorder) -> None:
    b = board()
    handler = start_handler(serial_sensor("t1", b.path))
    noise = "ets Jun  8 2016 00:22:57 rst:0x1 (POWERON_RESET) " + "x" * 300
    b.send(noise)
    b.send("# debug output from the sketch: not garbage")
    b.send("id=t1 temperature=21")
    assert recorder.wait(ReadingObs, "t1")[0].values == {"temperature": 21}
    (error,) = recorder.of(ErrorObs, "t1")
    assert error.error_code == "BAD_LINE" and error.severity == "warning"
    assert "neither JSON nor key=value" in error.message
    assert "ets Jun  8 2016" in error.message and "x" * 300 not in error.message  # truncated
    # The port's path (pytest's tmp dir, whose length varies) is not part of the bound.
    assert len(error.message.replace(b.path, "")) < 250
    quoted = error.message.split("): ", 1)[1]
    assert len(quoted) <= MAX_TEXT + 3  # the text, an ellipsis and repr's two quotes
    worker = handler.ports[b.path]
    assert (worker.garbage, worker.lines) == (1, 2)
    assert handler.errors_view()["bad_lines"] == {b.path: 1}
    assert handler.errors_view()["errors"][0]["error_code"] == "BAD_LINE"


def test_an_overlong_line_is_one_error_and_the_next_line_is_read(board: BoardFactory,
                                                                 start_handler: HandlerFactory,
                                                                 recorder: Recorder) -> None:
    b = board()
    handler = start_handler(serial_sensor("t1", b.path))
    b.send('{"id": "t1", "blob": "' + "A" * (3 * MAX_LINE) + '"}')
    b.send('{"id": "t1", "temperature": 19}')
    assert recorder.wait(ReadingObs, "t1")[0].values == {"temperature": 19}
    (error,) = recorder.of(ErrorObs, "t1")
    assert f"line longer than {MAX_LINE} bytes" in error.message
    assert handler.ports[b.path].garbage == 1


def test_bad_line_errors_are_rate_limited_but_all_counted(board: BoardFactory, start_handler: HandlerFactory,
                                                          recorder: Recorder) -> None:
    b = board()
    handler = start_handler(serial_sensor("t1", b.path), bad_line_report_every=3600)
    for i in range(5):
        b.send(f"garbage {i}")
    b.send("id=t1 temperature=1")
    recorder.wait(ReadingObs, "t1")
    assert len(recorder.of(ErrorObs, "t1")) == 1  # a wrong baud rate must not flood MQTT
    assert handler.ports[b.path].slots["t1"].bad_lines == 5
    assert handler.errors_view()["counts"] == {"BAD_LINE": 5}  # /errors has every one


def test_several_sensors_share_one_port(board: BoardFactory, start_handler: HandlerFactory,
                                        recorder: Recorder) -> None:
    b = board()
    handler = start_handler(serial_sensor("temp_a", b.path), serial_sensor("temp_b", b.path),
                            serial_sensor("motion_c", b.path))
    b.send('{"id": "temp_a", "temperature": 20}')
    b.send("id=temp_b temperature=30")
    b.send('{"id": "motion_c", "event": "motion_started", "data": {"zone": 2}}')
    b.send('{"id": "temp_b", "error": "SENSOR_FAULT", "message": "DHT22 silent"}')
    b.send('{"id": "temp_b", "temperature": NaN}')  # garbage naming temp_b: its error only
    b.send("temperature=5")  # no id on a shared port: whose? every sensor of the port is told
    b.send('{"id": "stranger", "temperature": 1}')  # not in the instance file
    b.send('{"id": "temp_a", "temperature": 21}')
    recorder.wait(ReadingObs, "temp_a", count=2)
    assert recorder.of(ReadingObs, "temp_b")[0].values == {"temperature": 30}
    (event,) = recorder.of(EventObs, "motion_c")
    assert (event.event, event.data) == ("motion_started", {"zone": 2})
    codes = {d: [e.error_code for e in recorder.of(ErrorObs, d)]
             for d in ("temp_a", "temp_b", "motion_c")}
    assert codes == {"temp_a": ["BAD_LINE"], "temp_b": ["SENSOR_FAULT", "BAD_LINE", "BAD_LINE"],
                     "motion_c": ["BAD_LINE"]}
    view = handler.errors_view()
    assert view["counts"]["UNKNOWN_SENSOR"] == 1
    assert any("'stranger'" in e["message"] for e in view["errors"])


def test_a_port_with_one_sensor_takes_lines_without_id(board: BoardFactory, start_handler: HandlerFactory,
                                                       recorder: Recorder) -> None:
    b = board()
    start_handler(serial_sensor("t1", b.path))
    b.send("temperature=21.5 humidity=40")
    assert recorder.wait(ReadingObs, "t1")[0].values == {"temperature": 21.5, "humidity": 40}


def test_unplug_goes_offline_with_the_reason_and_replug_comes_back(board: BoardFactory,
                                                                   start_handler: HandlerFactory,
                                                                   recorder: Recorder) -> None:
    b = board()
    handler = start_handler(serial_sensor("t1", b.path), serial_sensor("t2", b.path))
    worker = handler.ports[b.path]
    b.send("id=t1 temperature=20")
    recorder.wait(ReadingObs, "t1")

    b.unplug()
    for device in ("t1", "t2"):
        (down,) = recorder.wait(LinkObs, device, lambda o: not o.up)
        assert b.path in (down.reason or "")
        (error,) = recorder.wait(ErrorObs, device)
        assert error.error_code == "PORT_UNAVAILABLE" and error.severity == "error"
        assert error.message == down.reason
    wait_for(lambda: worker.open_failures >= 3, what="the handler to retry")
    assert not worker.is_up and "No such file" in (worker.down_reason or "")

    b.plug()
    for device in ("t1", "t2"):
        recorder.wait(LinkObs, device, lambda o: o.up, count=2)
    b.send("id=t2 temperature=22")
    assert recorder.wait(ReadingObs, "t2")[0].values == {"temperature": 22}
    assert worker.opens == 2
    # Said once per outage, not once per retry.
    assert len(recorder.of(LinkObs, "t1", lambda o: not o.up)) == 1
    assert len(recorder.of(ErrorObs, "t1")) == 1


def test_a_missing_port_at_start_is_offline_and_delays_no_other(board: BoardFactory,
                                                                start_handler: HandlerFactory,
                                                                recorder: Recorder,
                                                                tmp_path: Path) -> None:
    silent, live = board("silent"), board("live")
    missing = str(tmp_path / "ttyACM-never-plugged")
    start_handler(serial_sensor("gone", missing),
                  serial_sensor("mute", silent.path, mode="poll", read_timeout=30),
                  serial_sensor("t1", live.path))
    (down,) = recorder.wait(LinkObs, "gone", lambda o: not o.up)
    assert "cannot open" in (down.reason or "") and missing in (down.reason or "")
    assert silent.read_line() == b'{"id":"mute","read":true}\n'  # waits up to 30 s for it
    live.send("id=t1 temperature=20")
    recorder.wait(ReadingObs, "t1", timeout=1.0)


def test_poll_mode_asks_and_reads_answers_errors_and_timeouts(board: BoardFactory,
                                                              start_handler: HandlerFactory,
                                                              recorder: Recorder) -> None:
    b = board()
    handler = start_handler(serial_sensor("t1", b.path, mode="poll", read_timeout=0.3,
                                          interval=60))
    assert b.read_line() == b'{"id":"t1","read":true}\n'
    b.send('{"id": "t1", "temperature": 18.5}')
    recorder.wait(ReadingObs, "t1")

    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(handler.read, "t1")
        assert b.read_line() == b'{"id":"t1","read":true}\n'
        b.send('{"id": "t1", "error": "READ_FAILED", "message": "checksum", "severity": "warning"}')
        with pytest.raises(ReadError) as failed:
            answer.result(3)
    assert (failed.value.code, failed.value.message) == ("READ_FAILED", "checksum")
    (error,) = recorder.of(ErrorObs, "t1")
    assert (error.error_code, error.severity) == ("READ_FAILED", "warning")

    with pytest.raises(ReadError) as silent:
        handler.read("t1")  # nobody answers this time
    assert silent.value.code == "READ_TIMEOUT"
    assert recorder.of(ErrorObs, "t1")[-1].error_code == "READ_TIMEOUT"


def _command(values: dict[str, Any], *, cmd_id: str = "cmd-42", timeout_s: float = 3.0) -> CommandRequest:
    return CommandRequest(cmd_id=cmd_id, values=values, timeout_s=timeout_s)


def test_a_command_is_written_and_acknowledged(board: BoardFactory, start_handler: HandlerFactory) -> None:
    b = board()
    handler = start_handler(serial_sensor("relay1", b.path, writable=True))
    wait_for(lambda: handler.ports[b.path].is_up, what="the port to open")
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(handler.command, "relay1", _command({"state": "on", "level": 3}))
        assert b.read_line() == (
            b'{"id":"relay1","cmd_id":"cmd-42","values":{"state":"on","level":3}}\n')
        b.send('{"id": "relay1", "ack": "someone-else", "ok": true}')  # not this command
        b.send('{"id": "relay1", "ack": "cmd-42", "ok": true, "result": {"state": "on"}}')
        result = answer.result(3)
    assert (result.status, result.result) == ("success", {"state": "on"})


def test_a_refused_command_is_an_error(board: BoardFactory, start_handler: HandlerFactory) -> None:
    b = board()
    handler = start_handler(serial_sensor("relay1", b.path, writable=True))
    wait_for(lambda: handler.ports[b.path].is_up, what="the port to open")
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(handler.command, "relay1", _command({"state": "dim"}))
        b.read_line()
        b.send('id=relay1 ack=cmd-42 ok=false error="expected on or off"')
        result = answer.result(3)
    assert (result.status, result.error) == ("error", "expected on or off")


def test_a_command_without_ack_times_out(board: BoardFactory, start_handler: HandlerFactory) -> None:
    b = board()
    handler = start_handler(serial_sensor("relay1", b.path, writable=True))
    wait_for(lambda: handler.ports[b.path].is_up, what="the port to open")
    result = handler.command("relay1", _command({"state": "on"}, timeout_s=0.3))
    assert result.status == "timeout" and "0.3 s" in (result.error or "")
    assert b.read_line().startswith(b'{"id":"relay1","cmd_id":"cmd-42"')
    b.send('{"id": "relay1", "ack": "cmd-42", "ok": true}')  # too late: ignored, no crash
    b.send("id=relay1 state=on")
    handler_reads = handler.ports[b.path]
    wait_for(lambda: handler_reads.slots["relay1"].last is not None, what="the next reading")


def test_a_command_to_a_read_only_sensor_is_rejected_unwritten(board: BoardFactory,
                                                               start_handler: HandlerFactory) -> None:
    b = board()
    handler = start_handler(serial_sensor("t1", b.path))
    wait_for(lambda: handler.ports[b.path].is_up, what="the port to open")
    result = handler.command("t1", _command({"state": "on"}))
    assert result.status == "rejected" and "read-only" in (result.error or "")
    assert b.pending() == b""


def test_a_command_to_an_unplugged_port_is_an_error_at_once(board: BoardFactory,
                                                            start_handler: HandlerFactory,
                                                            recorder: Recorder) -> None:
    b = board()
    handler = start_handler(serial_sensor("relay1", b.path, writable=True))
    recorder.wait(LinkObs, "relay1", lambda o: o.up)
    b.unplug()
    recorder.wait(LinkObs, "relay1", lambda o: not o.up)
    result = handler.command("relay1", _command({"state": "on"}, timeout_s=30))
    assert result.status == "error" and b.path in (result.error or "")


def test_stop_ends_the_threads(board: BoardFactory, start_handler: HandlerFactory) -> None:
    b = board()
    handler = start_handler(serial_sensor("t1", b.path, mode="poll", read_timeout=30))
    worker = handler.ports[b.path]
    b.read_line()  # the poll thread now waits for an answer that never comes
    handler.stop()
    assert not any(t.is_alive() for t in worker._threads)


def test_a_command_that_cannot_be_encoded_is_an_error_unwritten(board: BoardFactory,
                                                                start_handler: HandlerFactory) -> None:
    b = board()
    handler = start_handler(serial_sensor("relay1", b.path, writable=True))
    result = handler.command("relay1", _command({"label": "\ud800"}))
    assert result.status == "error" and "cannot encode" in (result.error or "")
    assert b.pending() == b""


def test_a_handler_built_from_a_detached_plan_reads_its_ports(board: BoardFactory,
                                                              recorder: Recorder) -> None:
    """What the app does: the plan made from the instance file and copied out of its load
    (``shared.compact.detached``) is the handler's whole configuration."""
    b = board()
    named = {**serial_sensor("t1", b.path, read_timeout=0.5), "friendly_name": "Living room",
             "interval": 30, "read_timeout": 0.2}
    plan = detached(lambda: SerialPlan.of(make_instance(named, serial_sensor("t2", b.path,
                                                                             read_timeout=0.5)),
                                          update_interval=7))
    assert [s.sensor_id for s in plan.sensors] == ["t1", "t2"]
    handler = SerialHandler(plan, recorder, backoff=(0.05, 0.2))
    handler.start()
    try:
        recorder.wait(LinkObs, "t1", lambda o: o.up)
        b.send("id=t2 temperature=21.5")
        assert recorder.wait(ReadingObs, "t2")[0].values == {"temperature": 21.5}
        one, two = handler.sensor_view("t1"), handler.sensor_view("t2")
        assert (one["friendly_name"], one["interval"], two["friendly_name"], two["interval"]) \
            == ("Living room", 30, "t2", 7)
        worker = handler.ports[b.path]
        assert worker.read_timeout_of(worker.slots["t1"]) == 0.2
        assert worker.read_timeout_of(worker.slots["t2"]) == 0.5
    finally:
        handler.stop()
