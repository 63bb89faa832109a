"""The README's run command itself: ``./hub run`` with no MQTT_HOST starts an embedded mosquitto
and the demo, and data flows. Ctrl-C (SIGINT to the process group) stops it cleanly, with the
bridge saying ``offline`` before the embedded broker goes away."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.helpers import Subscriber, free_port, port_open, wait_for

pytestmark = pytest.mark.e2e


def test_hub_run_starts_broker_and_demo_and_stops_cleanly(tmp_path: Path) -> None:
    mqtt_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MQTT_")}
    env.update({
        "MQTT_PORT": str(mqtt_port), "MQTT_BASE_TOPIC": "hubrun",
        "HUB_RUN_DIR": str(tmp_path / "run"), "DATA_DIR": str(tmp_path / "data"),
        "SERIAL_HANDLER_PORT": str(free_port()), "HTTP_POLLER_PORT": str(free_port()),
        "STATE_AGGREGATOR_PORT": str(free_port()), "PORT": str(free_port()),
        "HOST": "127.0.0.1", "DEMO_SENSORS_PORT": str(free_port()), "PROBE_DISCOVERY": "false",
    })
    proc = subprocess.Popen([str(ROOT / "hub"), "run"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(
        line.decode(errors="replace") for line in proc.stdout or []), daemon=True).start()
    try:
        wait_for(lambda: port_open("127.0.0.1", mqtt_port), timeout=60,
                 what="the embedded mosquitto")
        sub = Subscriber("127.0.0.1", mqtt_port).subscribe("hubrun/#")
        root = "hubrun/v1/instances/demo"
        sub.wait(f"{root}/status", where=lambda m: m.text == "online", timeout=30)
        for device in ("temp_living_room", "temp_bedroom", "heater_relay"):
            sub.wait(f"{root}/devices/{device}/state", timeout=30)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        sub.wait(f"{root}/status", where=lambda m: m.text == "offline", timeout=30)
        assert proc.wait(30) == 0, "\n".join(output[-40:])
        wait_for(lambda: not port_open("127.0.0.1", mqtt_port), what="the broker to stop")
        sub.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
