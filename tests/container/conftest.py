"""Fixtures for the container tests: tool lookup, podman set up for this machine, a real MQTT
broker and a real MQTT subscriber.

The static tests (hadolint, docker-compose) need only two binaries. The smoke test builds the
repository's Dockerfile with podman (scripts/container/build.sh), runs it with host networking
against a mosquitto on 127.0.0.1 and watches what a real subscriber receives. It is marked
``container``: the quick run deselects it with ``-m "not container"``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "container"
SETUP_HINT = "run scripts/container/setup.sh first (the project's test entry point does)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "container: builds and runs the real image with podman (slow; the quick run skips it)",
    )


def find_tool(name: str) -> str:
    """A tool from the project venv (next to this Python) or PATH; fails the test if absent."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: {SETUP_HINT}")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- MQTT ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Broker:
    host: str
    port: int


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def _own_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A private mosquitto on 127.0.0.1, for when tests/conftest.py provides none."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = tmp_path_factory.mktemp("mosquitto") / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "set_tcp_nodelay true\nlog_dest stderr\n"
    )
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(
            lambda: proc.poll() is not None or _accepts("127.0.0.1", port),
            timeout=10,
            what=f"mosquitto on port {port}",
        )
        if proc.poll() is not None:
            pytest.fail(f"mosquitto exited with {proc.returncode}")
        yield Broker("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Any:
    """The project's shared ``mosquitto`` fixture when it exists, else a private one."""
    try:
        return request.getfixturevalue("mosquitto")
    except pytest.FixtureLookupError:
        return request.getfixturevalue("_own_mosquitto")


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A real MQTT v5 subscriber. Retain-as-published keeps the publisher's retain flag on live
    messages too, so a test can tell a retained publish from a plain one."""

    def __init__(self, host: str, port: int, topic_filter: str) -> None:
        self.messages: list[Message] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sensor-hub-test-{uuid.uuid4().hex[:12]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.on_connect = lambda client, _u, _f, _rc, _p: client.subscribe(
            topic_filter, options=SubscribeOptions(qos=1, retainAsPublished=True)
        )
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            pytest.fail(f"could not subscribe to {topic_filter} on {host}:{port}")

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append(Message(msg.topic, msg.payload, bool(msg.retain)))
            self._changed.notify_all()

    def wait_for(
        self, predicate: Callable[[Message], bool], *, timeout: float, what: str
    ) -> Message:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.messages:
                    if predicate(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = sorted({m.topic for m in self.messages})
                    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; saw {seen}")
                self._changed.wait(left)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@pytest.fixture
def subscribe(broker: Any) -> Iterator[Callable[[str], Subscriber]]:
    """``subscribe(topic_filter)`` -> a connected ``Subscriber``, closed after the test."""
    opened: list[Subscriber] = []

    def _subscribe(topic_filter: str) -> Subscriber:
        opened.append(Subscriber(broker.host, broker.port, topic_filter))
        return opened[-1]

    yield _subscribe
    for sub in opened:
        sub.close()


# --- podman -------------------------------------------------------------------------------------


def container_env() -> dict[str, str]:
    """The environment podman needs here: the CONTAINERS_CONF that setup.sh writes."""
    env = dict(os.environ)
    cache = Path(
        env.get("SENSOR_HUB_CACHE")
        or Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sensor-hub"
    )
    env.setdefault("CONTAINERS_CONF", str(cache / "containers.conf"))
    return env


@pytest.fixture(scope="session")
def podman_env() -> dict[str, str]:
    """Runs setup.sh (idempotent, well under a second when all is in place) and returns the
    environment for podman commands."""
    setup = subprocess.run(
        ["bash", str(SCRIPTS / "setup.sh")], capture_output=True, text=True, check=False
    )
    if setup.returncode != 0:
        pytest.fail(f"scripts/container/setup.sh failed:\n{setup.stdout}{setup.stderr}")
    return container_env()
