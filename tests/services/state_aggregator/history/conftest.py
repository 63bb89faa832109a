"""Every history test that is not about one backend's files runs twice: on a SQLite file and on
a real PostgreSQL server (the session's throwaway cluster, ``tests/conftest.py``, a fresh
database per test)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.state_aggregator.history.store import HistoryStore
from tests.postgres import Postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def history_location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a history lives: a SQLite file, or a fresh database on the test server."""
    if request.param == "sqlite":
        return tmp_path / "history.db"
    server: Postgres = request.getfixturevalue("postgres")
    return server.create_database(f"h{uuid.uuid4().hex[:12]}")


@pytest.fixture
def postgres_store(postgres: Postgres) -> Iterator[HistoryStore]:
    """A store on a fresh database of the test server (tests of PostgreSQL's own schema)."""
    store = HistoryStore(postgres.create_database(f"h{uuid.uuid4().hex[:12]}"))
    yield store
    store.close()
