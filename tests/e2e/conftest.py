"""An instance under the real supervisord with the real supervisord.conf, against the test
broker, with the demo instance file (its HTTP motion sensor pointed at a real demo server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.demo_sensors.__main__ import make_server
from shared.internal import new_secret
from tests.conftest import ROOT
from tests.helpers import Broker, free_port, internal_headers, retained, unique_base, wait_for


@dataclass
class Instance:
    env: dict[str, str]
    root_topic: str
    proc: subprocess.Popen[bytes]
    output: list[str] = field(default_factory=list)

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).parent / "supervisorctl"), "-c",
             str(ROOT / "supervisord.conf"), *args],
            env=self.env, capture_output=True, text=True, timeout=30, check=False)

    def log(self) -> str:
        return "\n".join(self.output[-200:])

    def aggregator_health(self) -> dict[str, Any]:
        """The state-aggregator's ``/health``, asked with the instance's internal secret."""
        import requests

        body: dict[str, Any] = requests.get(
            f"http://127.0.0.1:{self.env['STATE_AGGREGATOR_PORT']}/health", timeout=5,
            headers=internal_headers(self.env)).json()
        return body

    @property
    def hub_token(self) -> str:
        """The hub token: SERVER_TOKEN, else the one the hub generated under DATA_DIR (where a
        user finds it too)."""
        if self.env.get("SERVER_TOKEN"):
            return self.env["SERVER_TOKEN"]
        path = Path(self.env["DATA_DIR"]) / "server_token"
        return str(wait_for(lambda: path.exists() and path.read_text().strip(), timeout=30,
                            what=f"the generated hub token in {path}"))


def instance_env(broker: Broker, tmp: Path, instances: Path, name: str) -> dict[str, str]:
    run_dir = tmp / "run"
    new_secret(run_dir)  # as ./hub run and the container's entrypoint do at every start
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "INSTANCE_NAME": name,
        "INSTANCES_DIR": str(instances),
        "DATA_DIR": str(tmp / "data"),
        "HUB_RUN_DIR": str(run_dir),
        "MQTT_HOST": broker.host,
        "MQTT_PORT": str(broker.port),
        "MQTT_BASE_TOPIC": unique_base(),
        "SERIAL_HANDLER_PORT": str(free_port()),
        "HTTP_POLLER_PORT": str(free_port()),
        "STATE_AGGREGATOR_PORT": str(free_port()),
        "PORT": str(free_port()),
        "HOST": "127.0.0.1",
        "PROBE_DISCOVERY": "false",  # never provision another test's probes
        "LOG_LEVEL": "INFO",
    }


def states(inst: Instance) -> dict[str, str]:
    lines = inst.supervisorctl("status").stdout.splitlines()
    return {words[0]: words[1] for words in map(str.split, lines) if len(words) > 1}


def stopped_for_good(inst: Instance, program: str) -> bool:
    """FATAL: the program exited on its configuration within startsecs, a failed start. A
    machine too busy to run the check within startsecs (5 s) makes it a stop after the start
    instead: EXITED with the expected status 2, not restarted either."""
    state = states(inst).get(program)
    return state == "FATAL" or (
        state == "EXITED" and f"exited: {program} (exit status 2; expected)" in inst.log())


def start_supervisord(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], list[str]]:
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "supervisord"), "-c", str(ROOT / "supervisord.conf"),
         "-n"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line.decode(errors="replace").rstrip())

    threading.Thread(target=pump, daemon=True).start()
    return proc, output


def stop_supervisord(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextmanager
def demo_instance(mosquitto: Broker, tmp: Path, *, extra_sensors: list[dict[str, Any]] | None = None,
                  **extra_env: str) -> Iterator[Instance]:
    """The demo instance (its HTTP motion sensor served here) under the real supervisord, once
    its retained ``online`` is out; its output is kept in ``tmp/instance.log`` afterwards.
    ``extra_sensors`` join the instance file's sensors (a static probe, say)."""
    sensors = make_server("127.0.0.1", free_port())
    threading.Thread(target=sensors.serve_forever, daemon=True).start()
    instances = tmp / "instances"
    instances.mkdir()
    demo = json.loads((ROOT / "instances" / "demo.json").read_text())
    demo["config"]["sensors"] += extra_sensors or []
    (instances / "demo.json").write_text(json.dumps(demo))
    env = instance_env(mosquitto, tmp, instances, "demo")
    env.update(DEMO_SENSORS_PORT=str(sensors.server_address[1]), **extra_env)
    proc, output = start_supervisord(env)
    inst = Instance(env, f"{env['MQTT_BASE_TOPIC']}/v1/instances/demo", proc, output)
    try:
        try:
            retained(mosquitto.host, mosquitto.port, f"{inst.root_topic}/status", timeout=60,
                     where=lambda m: m.text == "online")
        except AssertionError:
            raise AssertionError("the instance never came online:\n" + inst.log()) from None
        yield inst
    finally:
        stop_supervisord(proc)
        (tmp / "instance.log").write_text("\n".join(output))  # kept by pytest for a post-mortem
        sensors.shutdown()


@pytest.fixture(scope="module")
def demo(mosquitto: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    with demo_instance(mosquitto, tmp_path_factory.mktemp("demo")) as inst:
        yield inst
