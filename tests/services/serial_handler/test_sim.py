"""``sim://`` goes through pyserial's ``serial_for_url`` like any port URL: the demo's boards
answer read requests and commands in the line protocol."""

from __future__ import annotations

import pytest
import serial

import services.serial_handler.ports  # noqa: F401  (registers sim:// with pyserial)
from services.serial_handler.protocol import Ack, Reading, parse_line
from shared.models import CommandRequest, ReadingObs
from tests.helpers import Recorder

from .conftest import HandlerFactory, serial_sensor


def _lines(port: serial.SerialBase, count: int) -> list[bytes]:
    return [port.readline() for _ in range(count)]


def test_sim_url_answers_reads_and_commands() -> None:
    port = serial.serial_for_url("sim://bench?profile=relay&ids=relay1&seed=1", timeout=2)
    try:
        port.write(b'{"id": "relay1", "read": true}\n')
        assert parse_line(port.readline().decode()) == Reading("relay1", {"state": "off"})
        port.write(b'{"id":"relay1","cmd_id":"c1","values":{"state":"on"}}\n')
        ack, state = (parse_line(line.decode()) for line in _lines(port, 2))
        assert ack == Ack("relay1", "c1", True, {"state": "on"}, None)
        assert state == Reading("relay1", {"state": "on"})
    finally:
        port.close()


def test_sim_climate_board_reads_plausible_values() -> None:
    port = serial.serial_for_url("sim://x?ids=t1,t2&seed=3", timeout=2)
    try:
        port.write(b'{"id":"t2","read":true}\n')
        reading = parse_line(port.readline().decode())
        assert isinstance(reading, Reading) and reading.device_id == "t2"
        assert 10 < reading.values["temperature"] < 35 and 20 < reading.values["humidity"] < 70
    finally:
        port.close()


@pytest.mark.parametrize("url", ["sim://x?profile=nope", "sim://x?bogus=1", "sim://x?fail=lots"])
def test_bad_sim_urls_are_refused(url: str) -> None:
    with pytest.raises(serial.SerialException):
        serial.serial_for_url(url)


def test_the_handler_polls_a_sim_board(start_handler: HandlerFactory, recorder: Recorder) -> None:
    url = "sim://heater?profile=relay&ids=heater_relay"
    handler = start_handler(serial_sensor("heater_relay", url, mode="poll", writable=True,
                                          interval=60))
    recorder.wait(ReadingObs, "heater_relay")
    result = handler.command("heater_relay",
                             CommandRequest(cmd_id="c9", values={"state": "on"}, timeout_s=2))
    assert (result.status, result.result) == ("success", {"state": "on"})
    recorder.wait(ReadingObs, "heater_relay", lambda r: r.values == {"state": "on"})
