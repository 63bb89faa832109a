"""The master control database: migrations, config versions (monotonic, with history and
rollback) and what survives a restart, on real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from services.state_aggregator.core import Aggregator
from services.state_aggregator.master.admin import MasterAdmin
from services.state_aggregator.master.db import MIGRATIONS, Database
from services.state_aggregator.master.errors import NotFound
from services.state_aggregator.master.service import MasterService
from shared.errors import ConfigError
from shared.master_models import (
    CommandCreate,
    Rollback,
    SensorPatch,
    SensorRegister,
    TemplateIn,
    TemplatePatch,
)
from tests.helpers import Clock
from tests.services.state_aggregator.test_aggregator import INSTANCE

ESP = SensorRegister(sensor_id="esp32_001", sensor_name="Chamber 1", sensor_type="esp32_ferm",
                     capabilities=["temperature"])


def test_migrations_run_once_in_wal_mode(db_path: Path) -> None:
    db = Database(db_path)
    assert db.schema_version == MIGRATIONS[-1][0]
    db.close()
    again = Database(db_path)
    with again.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_a_database_newer_than_the_code_is_refused_not_touched(db_path: Path) -> None:
    Database(db_path).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (99, 0)")
    with pytest.raises(ConfigError, match="schema version 99, newer"):
        Database(db_path)


def versions(admin: MasterAdmin, sensor_id: str = "esp32_001") -> list[tuple[int, str]]:
    return [(v["config_version"], v["reason"]) for v in reversed(admin.history(sensor_id))]


def test_a_version_per_change_of_what_the_sensor_receives(service: MasterService,
                                                          admin: MasterAdmin) -> None:
    service.register(ESP)
    service.register(ESP)  # registering again changes nothing the sensor receives
    made = admin.create_template(TemplateIn(config_name="type", sensor_type="esp32_ferm",
                                            config_data={"polling_interval": 60}))
    admin.update_template(made["id"], TemplatePatch(config_name="type"))  # same content
    admin.update_template(made["id"], TemplatePatch(config_data={"polling_interval": 30}))
    admin.delete_template(made["id"])
    assert versions(admin) == [(1, "registered"), (2, f"template {made['id']} created"),
                               (3, f"template {made['id']} updated"),
                               (4, f"template {made['id']} deleted")]
    history = admin.history("esp32_001")
    assert [h["config_available"] for h in history] == [False, True, True, False]
    assert len({h["config_hash"] for h in history}) == 3  # v1 and v4 are the same document


def test_rollback_pins_an_old_document_as_a_new_version(service: MasterService,
                                                        admin: MasterAdmin) -> None:
    service.register(ESP)
    made = admin.create_template(TemplateIn(config_name="t", sensor_type="esp32_ferm",
                                            config_data={"v": 1}))
    admin.update_template(made["id"], TemplatePatch(config_data={"v": 2}))
    back = admin.rollback("esp32_001", Rollback(version=2))
    assert (back["config_version"], back["config"], back["pinned"]) == (4, {"v": 1}, True)
    # while pinned, template edits do not reach the sensor
    admin.update_template(made["id"], TemplatePatch(config_data={"v": 3}))
    assert service.config("esp32_001").body["config"] == {"v": 1}
    assert "pinned to version 4" in admin.explain("esp32_001")["reason"]
    admin.update_sensor("esp32_001", SensorPatch(unpin=True))
    answer = service.config("esp32_001").body
    assert (answer["config"], answer["config_version"]) == ({"v": 3}, 5)
    with pytest.raises(NotFound, match="no config version 9"):
        admin.rollback("esp32_001", Rollback(version=9))


def test_everything_survives_a_restart(db_path: Path, service: MasterService, admin: MasterAdmin,
                                       clock: Clock) -> None:
    service.register(ESP)
    admin.create_template(TemplateIn(config_name="t", sensor_type="esp32_ferm",
                                     config_data={"v": 1}))
    cmd = admin.create_command(CommandCreate(sensor_id="esp32_001", command_type="restart"))
    service.db.close()

    agg2 = Aggregator(INSTANCE, handlers={}, cache_ttl=10, poll_interval=5, clock=clock)
    again = MasterService(Database(db_path), sink=agg2, clock=clock)
    again.start(tick_s=3600)
    try:
        admin2 = MasterAdmin(again)
        assert [s["sensor_id"] for s in admin2.sensors()] == ["esp32_001"]
        assert [t["config_name"] for t in admin2.templates()] == ["t"]
        assert [v["config_version"] for v in admin2.history("esp32_001")] == [2, 1]
        assert admin2.command(cmd["command_id"])["status"] == "pending"
        assert agg2.devices["esp32_001"].source == "sensor"  # a device again, at once
    finally:
        again.stop()
        again.db.close()


def test_expiry_is_evaluated_at_start_up(db_path: Path, service: MasterService,
                                         admin: MasterAdmin, clock: Clock) -> None:
    service.register(ESP)
    cmd = admin.create_command(CommandCreate(sensor_id="esp32_001", command_type="restart",
                                             expires_in=60))
    service.db.close()
    clock.now += 61  # the hub was down while the command's time ran out
    again = MasterService(Database(db_path), sink=None, clock=clock)
    again.start(tick_s=3600)
    try:
        assert MasterAdmin(again).command(cmd["command_id"])["status"] == "expired"
        assert again.pending_commands("esp32_001") == []
    finally:
        again.stop()
        again.db.close()
