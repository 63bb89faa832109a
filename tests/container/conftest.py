"""Fixtures for the container tests: tools and podman set up for this machine. The broker is
the suite's shared ``mosquitto`` fixture (tests/conftest.py).

The static tests (hadolint, docker-compose) need only two binaries. The smoke test builds the
repository's Dockerfile with podman (scripts/container/build.sh), runs it with host networking
against a mosquitto on 127.0.0.1 and watches what a real subscriber receives. It is marked
``container``: the quick run deselects it with ``-m "not container"``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# The test modules import container_support by name, whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).parent))

if TYPE_CHECKING:  # mypy knows the module by its place in the tree
    from tests.container.container_support import REPO, SCRIPTS, container_env, find_tool
else:
    from container_support import REPO, SCRIPTS, container_env, find_tool


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
def podman_env() -> dict[str, str]:
    """Runs setup.sh (idempotent; well under a second when everything is in place) and returns
    the environment for podman commands."""
    setup = subprocess.run(["bash", str(SCRIPTS / "setup.sh")], capture_output=True, text=True, check=False)
    if setup.returncode != 0:
        pytest.fail(f"scripts/container/setup.sh failed:\n{setup.stdout}{setup.stderr}")
    return container_env()
