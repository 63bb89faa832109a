"""kill -9 of a handler (the serial-handler) mid-flow: what is lost is the handler's own
unacknowledged window and nothing else. The demo instance under the real supervisord with one
more serial sensor on a real pseudo-terminal, to which the test writes numbered readings
(``n=0``, ``n=1``, ...); a subscriber collects every ``n`` that reaches MQTT.

1. Mid-flow, the aggregator up: the test kills the handler right after writing a line. The lost
   readings are one run at the tail (the last ones written before the kill), never one before
   them, at most one batch (1,000: README, "Nothing is lost"); every reading written after the
   handler is back arrives.
2. The aggregator away: the handler holds what it read (its queue and the batch it keeps
   resending; its ``/health`` counts them in ``push.queued``). kill -9: exactly those readings
   are lost, not one more or less, and the readings after it flow again.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Instance, demo_instance
from tests.e2e.test_nothing_lost import Counter, pid, running
from tests.helpers import Broker, internal_headers, wait_for

pytestmark = pytest.mark.e2e
DEVICE = "kill_counter"
RATE = 200.0  # lines per second
MAX_BATCH = 1000  # shared.pusher.Pusher's max_batch: the one batch awaiting an answer


class Board:
    """The sensor's side of a pseudo-terminal: numbered readings, one line each."""

    def __init__(self, link: Path) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: the hub reads what is written
        os.symlink(os.ttyname(self._slave), link)
        self.link = link
        self.next = 0

    def write(self, count: int = 1) -> int:
        """Write ``count`` readings; the number of the last."""
        for _ in range(count):
            os.write(self.master, f"n={self.next}\n".encode())
            self.next += 1
        return self.next - 1

    def drain(self) -> None:
        """Whatever the hub wrote back (nothing is expected; keeps the pty's buffer empty)."""
        while select.select([self.master], [], [], 0)[0]:
            try:
                os.read(self.master, 4096)
            except OSError:
                return

    def close(self) -> None:
        os.close(self.master)
        os.close(self._slave)


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Board]:
    b = Board(tmp_path / "ttyKILL")
    yield b
    b.close()


def handler(inst: Instance) -> dict[str, Any]:
    body: dict[str, Any] = requests.get(
        f"http://127.0.0.1:{inst.env['SERIAL_HANDLER_PORT']}/health", timeout=5,
        headers=internal_headers(inst.env)).json()
    return body


def port_of(inst: Instance, board: Board) -> dict[str, Any] | None:
    try:
        ports = handler(inst)["ports"]
    except requests.RequestException:
        return None
    return next((p for p in ports if p["port"] == str(board.link) and p["up"]), None)


def settled(inst: Instance) -> int:
    """The serial-handler's pid once supervisord counts it as started (``RUNNING``, after its
    ``startsecs``): a kill before that is a failed start, which supervisord does not retry."""
    wait_for(lambda: "RUNNING" in inst.supervisorctl("status", "serial-handler").stdout,
             timeout=30, what="the serial-handler RUNNING")
    return pid(inst, "serial-handler")


def back(inst: Instance, board: Board, killed: int) -> None:
    """Supervisord restarted the serial-handler killed as ``killed``, and the new one has the
    port open."""
    wait_for(lambda: running(inst, "serial-handler", other_than=killed), timeout=30,
             what="supervisord to restart the serial-handler")
    wait_for(lambda: port_of(inst, board), timeout=60, what="the new handler to open the port")


def flows_again(counter: Counter, board: Board) -> range:
    """Readings written after a disturbance arrive, every one; their numbers."""
    first = board.next
    last = board.write(50)
    wait_for(lambda: counter.got(DEVICE) >= set(range(first, last + 1)), timeout=60,
             what="the readings written after the kill on MQTT")
    return range(first, last + 1)


def test_kill_9_of_the_serial_handler_loses_only_its_own_window(
        mosquitto: Broker, board: Board, tmp_path: Path) -> None:
    sensor = {"sensor_id": DEVICE, "sensor_type": "climate", "interval": 60,
              "source": {"type": "serial", "port": str(board.link), "mode": "stream"}}
    with demo_instance(mosquitto, tmp_path, extra_sensors=[sensor]) as inst:
        counter = Counter(mosquitto, inst.root_topic)
        try:
            wait_for(lambda: port_of(inst, board), timeout=30, what="the handler to open the pty")
            flows_again(counter, board)

            # 1. Mid-flow with the aggregator up: a writer at RATE kills the handler right
            # after one of its lines.
            target = settled(inst)
            stop = threading.Event()
            killed_after: list[int] = []

            def write() -> None:
                start = board.next
                while not stop.wait(1 / RATE):
                    n = board.write()
                    if n - start == int(RATE):  # a second into the flow
                        os.kill(target, signal.SIGKILL)
                        killed_after.append(n)
                        return

            writer = threading.Thread(target=write, daemon=True)
            writer.start()
            writer.join(30)
            stop.set()
            assert killed_after, "the writer never reached the kill"
            last = killed_after[0]
            back(inst, board, target)
            flows_again(counter, board)
            lost = sorted(set(range(last + 1)) - counter.got(DEVICE))
            # Only a run at the tail: the readings written just before the kill.
            assert lost == list(range(last + 1 - len(lost), last + 1)), lost
            assert len(lost) <= MAX_BATCH, len(lost)

            # 2. The aggregator away: the handler holds every reading it read, and says so.
            assert inst.supervisorctl("stop", "state-aggregator").returncode == 0
            read_before = wait_for(lambda: port_of(inst, board), timeout=10, what="the port")
            held_first = board.next
            held_last = board.write(37)
            held = set(range(held_first, held_last + 1))
            wait_for(lambda: (p := port_of(inst, board)) is not None
                     and p["lines"] == read_before["lines"] + len(held), timeout=30,
                     what="the handler to read every line")
            # The demo's simulated boards share the handler (and its queue): at least ours.
            wait_for(lambda: handler(inst)["push"]["queued"] >= len(held), timeout=30,
                     what="the handler to hold the readings it read")
            target = settled(inst)
            os.kill(target, signal.SIGKILL)
            assert inst.supervisorctl("start", "state-aggregator").returncode == 0
            back(inst, board, target)
            after = flows_again(counter, board)
            got = counter.got(DEVICE)
            assert held - got == held, f"{len(held & got)} held readings arrived after all"
            assert not set(after) - got
            # Exactly the readings the handler held, nothing before them (step 1's tail aside).
            lost_now = sorted(set(range(last + 1, after.start)) - got)
            assert lost_now == sorted(held)
        finally:
            counter.close()
            board.drain()
