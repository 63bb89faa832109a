"""Fixtures for the container tests: tools, podman set up for this machine, a real MQTT broker
and real MQTT subscribers.

The static tests (hadolint, docker-compose) need only two binaries. The smoke test builds the
repository's Dockerfile with podman (scripts/container/build.sh), runs it with host networking
against a mosquitto on 127.0.0.1 and watches what a real subscriber receives. It is marked
``container``: the quick run deselects it with ``-m "not container"``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The test modules import container_support by name, whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).parent))

from container_support import (
    REPO,
    SCRIPTS,
    Broker,
    Subscriber,
    container_env,
    find_tool,
    start_mosquitto,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "container: builds and runs the real image with podman (slow; the quick run skips it)",
    )


@pytest.fixture(scope="session")
def tool() -> Callable[[str], str]:
    """``tool(name)`` -> the path of a binary from the venv or PATH; fails when it is missing."""
    return find_tool


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def _own_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A private mosquitto, for when tests/conftest.py provides no ``mosquitto`` fixture."""
    proc, broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    try:
        yield broker
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Any:
    """The project's shared ``mosquitto`` fixture when it exists, else a private one; either
    way an object with ``.host`` and ``.port``."""
    try:
        return request.getfixturevalue("mosquitto")
    except pytest.FixtureLookupError:
        return request.getfixturevalue("_own_mosquitto")


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


@pytest.fixture(scope="session")
def podman_env() -> dict[str, str]:
    """Runs setup.sh (idempotent; well under a second when everything is in place) and returns
    the environment for podman commands."""
    setup = subprocess.run(["bash", str(SCRIPTS / "setup.sh")], capture_output=True, text=True, check=False)
    if setup.returncode != 0:
        pytest.fail(f"scripts/container/setup.sh failed:\n{setup.stdout}{setup.stderr}")
    return container_env()
