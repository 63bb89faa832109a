"""The harness's own mosquitto on a free 127.0.0.1 port, never the one a developer runs."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .procs import mosquitto_binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_until(cond, *, timeout: float, what: str, interval: float = 0.02):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


@dataclass
class Broker:
    port: int
    proc: subprocess.Popen[bytes]
    host: str = "127.0.0.1"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_broker(workdir: Path) -> Broker:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    # set_tcp_nodelay: see PERF_NOTES (Nagle). max_queued_messages 0: the measuring subscriber
    # may fall behind for a moment, and mosquitto's default (1000) would then drop messages at
    # the measuring end and count as losses of the hub.
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                    "persistence false\nmax_queued_messages 0\n")
    log = (workdir / "mosquitto.log").open("wb")
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log,
                            stderr=subprocess.STDOUT)
    wait_until(lambda: port_open(port), timeout=10, what="mosquitto to listen")
    return Broker(port, proc)
