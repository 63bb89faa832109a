"""Fixtures shared by the whole suite: a real mosquitto on a free port (one per session), a
locked one (passwords and TLS, per test) with the test CA it uses (one per session), a unique
base topic per test, a recording subscriber, and a throwaway PostgreSQL server (one per session,
started only when a test asks for it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    LOCKED_USERS,
    Broker,
    Subscriber,
    TestCa,
    make_test_ca,
    start_broker,
    unique_base,
)
from tests.postgres import Postgres, start_postgres

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = start_broker(tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def locked(tmp_path: Path, ca: TestCa) -> Iterator[Broker]:
    """A broker with ``LOCKED_USERS`` on every listener, and TLS (the ``ca``'s certificate) on a
    second listener that also wants a client certificate."""
    broker = start_broker(tmp_path, users=LOCKED_USERS, tls=ca, require_certificate=True)
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
