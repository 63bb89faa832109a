"""Helpers for the container tests: tool lookup, polling with a deadline, an MQTT v5 subscriber
that sees the publisher's retain flag, and podman's environment. conftest.py turns some into
fixtures; the test modules import what they need from here (the module name is unique, so the
import is not ambiguous the way ``import conftest`` would be)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
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


def find_tool(name: str) -> str:
    """A tool from the project venv (next to this Python) or PATH; fails the test if absent."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: {SETUP_HINT}")
    return found


def wait_until(
    condition: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    context: Callable[[], str] = str,
) -> Any:
    """Poll ``condition`` until it returns something truthy; at the deadline, fail naming
    ``what`` and adding ``context()`` (container logs, say)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{context()}")
        time.sleep(interval)


# --- MQTT ---------------------------------------------------------------------------------------


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
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._changed.notify_all()

    def wait_for(
        self,
        predicate: Callable[[Message], bool],
        *,
        timeout: float,
        what: str,
        context: Callable[[], str] = str,
    ) -> Message:
        """The first message (already received or still to come) that matches ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.messages:
                    if predicate(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = sorted({m.topic for m in self.messages})
                    pytest.fail(
                        f"timed out after {timeout:.0f} s waiting for {what}; "
                        f"topics seen: {seen}\n{context()}"
                    )
                self._changed.wait(left)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


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
