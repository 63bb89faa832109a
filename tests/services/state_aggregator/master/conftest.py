"""Master control over real SQLite files and a real aggregator (its handlers at a closed port),
with one injectable clock for both, so status and expiry are tested without waiting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.state_aggregator.core import Aggregator
from services.state_aggregator.master.admin import MasterAdmin
from services.state_aggregator.master.db import Database
from services.state_aggregator.master.service import MasterOptions, MasterService
from tests.helpers import Clock
from tests.services.state_aggregator.test_aggregator import INSTANCE


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def agg(clock: Clock) -> Aggregator:
    return Aggregator(INSTANCE, handlers={}, cache_ttl=10, poll_interval=5, clock=clock)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "master.db"


@pytest.fixture
def service(db_path: Path, agg: Aggregator, clock: Clock) -> Iterator[MasterService]:
    svc = MasterService(Database(db_path), sink=agg, clock=clock,
                        options=MasterOptions(default_interval=60, max_open_commands=100,
                                              command_ttl=3600))
    yield svc
    svc.stop()
    svc.db.close()


@pytest.fixture
def admin(service: MasterService) -> MasterAdmin:
    return MasterAdmin(service)
