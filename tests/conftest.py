"""Fixtures shared by the whole suite: a real mosquitto on a free port (one per session), a
unique base topic per test, a recording subscriber, and a throwaway PostgreSQL server (one per
session, started only when a test asks for it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Broker, Subscriber, start_broker, unique_base
from tests.postgres import Postgres, start_postgres

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = start_broker(tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.stop()


@pytest.fixture
def base_topic() -> str:
    """A base topic no other test uses, so tests never see each other's retained messages."""
    return unique_base()


@pytest.fixture
def subscriber(mosquitto: Broker) -> Iterator[Subscriber]:
    sub = Subscriber(mosquitto.host, mosquitto.port)
    yield sub
    sub.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = start_postgres()
    yield server
    server.stop()
