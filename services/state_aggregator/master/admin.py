"""Master control, management side (no Flask): master instances, sensors, config templates,
groups, commands, config history with rollback, and the explanation of a sensor's effective
config. Every change that can alter what sensors receive recomputes exactly the sensors it
concerns and tells the listeners (the MQTT side republishes their configs)."""

from __future__ import annotations

import sqlite3
from typing import Any

from pydantic import ValidationError

from shared.jsonutil import dumps, loads
from shared.master_models import (
    CommandCreate,
    GroupIn,
    GroupPatch,
    MasterInstanceIn,
    MasterInstancePatch,
    Rollback,
    SensorPatch,
    SensorStatus,
    TemplateIn,
    TemplatePatch,
)
from shared.timeutil import iso

from . import resolve
from .configs import Version, template_from_row
from .errors import Conflict, Invalid, NotFound, unknown_sensor
from .service import MasterService


def _validation(exc: ValidationError) -> Invalid:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()]
    return Invalid("invalid_body", "; ".join(parts))


def _master(row: sqlite3.Row) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "description": row["description"],
            "api_endpoint": row["api_endpoint"], "priority": row["priority"],
            "enabled": bool(row["enabled"]), "created_at": iso(row["created_at"]),
            "updated_at": iso(row["updated_at"])}


def _template(row: sqlite3.Row) -> dict[str, Any]:
    t = template_from_row(row)
    return {"id": t.id, "master_id": t.master_id, "config_name": t.config_name,
            "sensor_id": t.sensor_id, "group": t.group, "sensor_type": t.sensor_type,
            "applies_to": t.scope, "config_data": t.config_data, "priority": t.priority,
            "is_active": t.is_active, "created_at": iso(row["created_at"]),
            "updated_at": iso(row["updated_at"])}


class MasterAdmin:
    def __init__(self, service: MasterService) -> None:
        self.service = service
        self.db = service.db
        self.configs = service.configs
        self.queue = service.queue

    def _recompute(self, conn: sqlite3.Connection, reason: str,
                   sensor_ids: list[str] | None) -> list[Version]:
        return self.configs.recompute(conn, reason, self.service.clock(), sensor_ids)

    # --- master instances ------------------------------------------------------------------------
    def instances(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            return [_master(r) for r in conn.execute("SELECT * FROM masters ORDER BY priority, id")]

    def _instance_row(self, conn: sqlite3.Connection, master_id: int) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute("SELECT * FROM masters WHERE id = ?",
                                               (master_id,)).fetchone()
        if row is None:
            raise NotFound("unknown_master", f"no master instance {master_id}")
        return row

    def create_instance(self, body: MasterInstanceIn) -> dict[str, Any]:
        now = self.service.clock()
        with self.db.tx() as conn:
            try:
                cur = conn.execute(
                    "INSERT INTO masters (name, description, api_endpoint, priority, enabled, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (body.name, body.description, body.api_endpoint, body.priority, body.enabled,
                     now, now))
            except sqlite3.IntegrityError as exc:
                raise Conflict("duplicate_name", f"name: a master named {body.name!r} exists") from exc
            changed = self._recompute(conn, "master instances changed", None)
            out = _master(self._instance_row(conn, int(cur.lastrowid or 0)))
        self.service.notify(changed)
        return out

    def update_instance(self, master_id: int, body: MasterInstancePatch) -> dict[str, Any]:
        now = self.service.clock()
        with self.db.tx() as conn:
            current = _master(self._instance_row(conn, master_id))
            merged = {**current, **body.model_dump(exclude_unset=True)}
            try:
                valid = MasterInstanceIn.model_validate(
                    {k: merged[k] for k in MasterInstanceIn.model_fields})
            except ValidationError as exc:
                raise _validation(exc) from exc
            try:
                conn.execute("UPDATE masters SET name = ?, description = ?, api_endpoint = ?, "
                             "priority = ?, enabled = ?, updated_at = ? WHERE id = ?",
                             (valid.name, valid.description, valid.api_endpoint, valid.priority,
                              valid.enabled, now, master_id))
            except sqlite3.IntegrityError as exc:
                raise Conflict("duplicate_name", f"name: a master named {valid.name!r} exists") from exc
            changed = self._recompute(conn, "master instances changed", None)
            out = _master(self._instance_row(conn, master_id))
        self.service.notify(changed)
        return out

    def delete_instance(self, master_id: int) -> dict[str, Any]:
        with self.db.tx() as conn:
            out = _master(self._instance_row(conn, master_id))
            conn.execute("DELETE FROM masters WHERE id = ?", (master_id,))
            changed = self._recompute(conn, "master instances changed", None)
        self.service.notify(changed)
        return {"deleted": out}

    # --- sensors ---------------------------------------------------------------------------------
    def _sensor(self, conn: sqlite3.Connection, row: sqlite3.Row, now: float) -> dict[str, Any]:
        latest = self.configs.latest(conn, row["sensor_id"])
        interval = row["effective_interval"] or self.service.options.default_interval
        status: SensorStatus = resolve.status(row["last_check_in"], interval, now)
        return {
            "sensor_id": row["sensor_id"], "sensor_name": row["sensor_name"],
            "sensor_type": row["sensor_type"], "hardware_info": row["hardware_info"],
            "firmware_version": row["firmware_version"], "ip_address": row["ip_address"],
            "mac_address": row["mac_address"], "capabilities": loads(row["capabilities"]),
            "status": status, "registered_at": iso(row["registered_at"]),
            "first_check_in": iso(row["first_check_in"]) if row["first_check_in"] else None,
            "last_check_in": iso(row["last_check_in"]) if row["last_check_in"] else None,
            "check_in_interval": interval, "check_in_interval_override": row["check_in_interval"],
            "config_hash": row["applied_hash"],
            "config_version": latest.version if latest else None,
            "expected_config_hash": latest.config_hash if latest else None,
            "in_sync": latest is not None and row["applied_hash"] == latest.config_hash,
            "pinned_version": row["pinned_version"], "metrics": loads(row["metrics"]),
            "groups": sorted(self.configs.groups_of(conn, row["sensor_id"])),
        }

    def sensors(self, *, status: str | None = None,
                sensor_type: str | None = None) -> list[dict[str, Any]]:
        now = self.service.clock()
        with self.db.read() as conn:
            rows = conn.execute("SELECT * FROM sensors ORDER BY sensor_id").fetchall()
            out = [self._sensor(conn, r, now) for r in rows
                   if sensor_type is None or r["sensor_type"] == sensor_type]
        return [s for s in out if status is None or s["status"] == status]

    def sensor(self, sensor_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return self._sensor(conn, self.service.sensor_row(conn, sensor_id), self.service.clock())

    def update_sensor(self, sensor_id: str, body: SensorPatch) -> dict[str, Any]:
        given = body.model_dump(exclude_unset=True)
        with self.db.tx() as conn:
            self.service.sensor_row(conn, sensor_id)
            for column in ("sensor_name", "sensor_type", "check_in_interval"):
                if column in given:  # a literal column name from this tuple, never user text
                    conn.execute(f"UPDATE sensors SET {column} = ? WHERE sensor_id = ?",  # noqa: S608
                                 (given[column], sensor_id))
            if body.unpin:
                conn.execute("UPDATE sensors SET pinned_version = NULL WHERE sensor_id = ?",
                             (sensor_id,))
            changed = self._recompute(conn, "sensor updated", [sensor_id])
            out = self._sensor(conn, self.service.sensor_row(conn, sensor_id), self.service.clock())
        self.service.notify(changed)
        return out

    def delete_sensor(self, sensor_id: str) -> dict[str, Any]:
        """Unregister: the sensor, its memberships and open commands go; its config history
        stays, so that a sensor registering again continues its version numbers."""
        now = self.service.clock()
        with self.db.tx() as conn:
            self.service.sensor_row(conn, sensor_id)
            self.queue.cancel_all(conn, sensor_id, now)
            conn.execute("DELETE FROM group_members WHERE sensor_id = ?", (sensor_id,))
            conn.execute("DELETE FROM readings_seen WHERE sensor_id = ?", (sensor_id,))
            conn.execute("DELETE FROM sensors WHERE sensor_id = ?", (sensor_id,))
        self.service.forget(sensor_id)
        if self.service.sink is not None and self.service.sink.source_of(sensor_id) == "sensor":
            # its device (and the bridge clears its retained topics) goes too
            self.service.sink.unregister(sensor_id, source="sensor")
        return {"deleted": sensor_id}

    # --- config templates ------------------------------------------------------------------------
    def templates(self, *, sensor_id: str | None = None) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute("SELECT * FROM templates ORDER BY id").fetchall()
        out = [_template(r) for r in rows]
        return [t for t in out if sensor_id is None or t["sensor_id"] == sensor_id]

    def _template_row(self, conn: sqlite3.Connection, template_id: int) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute("SELECT * FROM templates WHERE id = ?",
                                               (template_id,)).fetchone()
        if row is None:
            raise NotFound("unknown_config", f"no config template {template_id}")
        return row

    def _check_master(self, conn: sqlite3.Connection, master_id: int | None) -> None:
        if master_id is not None:
            try:
                self._instance_row(conn, master_id)
            except NotFound as exc:
                raise Invalid("invalid_body", f"master_id: no master instance {master_id}") from exc

    def _create_template(self, conn: sqlite3.Connection, body: TemplateIn,
                         now: float) -> tuple[sqlite3.Row, list[Version]]:
        self._check_master(conn, body.master_id)
        cur = conn.execute(
            "INSERT INTO templates (master_id, config_name, sensor_id, group_name, sensor_type, "
            "config_data, priority, is_active, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (body.master_id, body.config_name, body.sensor_id, body.group, body.sensor_type,
             dumps(body.config_data).decode(), body.priority, body.is_active, now, now))
        row = self._template_row(conn, int(cur.lastrowid or 0))
        t = template_from_row(row)
        return row, self._recompute(conn, f"template {t.id} created",
                                    self.configs.sensors_for(conn, t))

    def _update_template(self, conn: sqlite3.Connection, template_id: int, body: TemplatePatch,
                         now: float) -> tuple[sqlite3.Row, list[Version]]:
        before = template_from_row(self._template_row(conn, template_id))
        current = _template(self._template_row(conn, template_id))
        merged = {**current, **body.model_dump(exclude_unset=True)}
        try:
            valid = TemplateIn.model_validate({k: merged[k] for k in TemplateIn.model_fields})
        except ValidationError as exc:
            raise _validation(exc) from exc
        self._check_master(conn, valid.master_id)
        conn.execute(
            "UPDATE templates SET master_id = ?, config_name = ?, sensor_id = ?, group_name = ?, "
            "sensor_type = ?, config_data = ?, priority = ?, is_active = ?, updated_at = ? "
            "WHERE id = ?",
            (valid.master_id, valid.config_name, valid.sensor_id, valid.group,
             valid.sensor_type, dumps(valid.config_data).decode(), valid.priority,
             valid.is_active, now, template_id))
        row = self._template_row(conn, template_id)
        after = template_from_row(row)
        concerned = self.configs.sensors_for(conn, before) + self.configs.sensors_for(conn, after)
        return row, self._recompute(conn, f"template {template_id} updated", concerned)

    def create_template(self, body: TemplateIn) -> dict[str, Any]:
        with self.db.tx() as conn:
            row, changed = self._create_template(conn, body, self.service.clock())
        self.service.notify(changed)
        return {**_template(row), "sensors_changed": len(changed)}

    def update_template(self, template_id: int, body: TemplatePatch) -> dict[str, Any]:
        with self.db.tx() as conn:
            row, changed = self._update_template(conn, template_id, body, self.service.clock())
        self.service.notify(changed)
        return {**_template(row), "sensors_changed": len(changed)}

    def preview_template(self, body: TemplateIn | TemplatePatch,
                         template_id: int | None = None) -> dict[str, Any]:
        """What saving ``body`` (a new template, or a new version of ``template_id``) would do:
        the sensors that would get a new config, with its version and hash, and the pinned
        sensors it concerns that would keep theirs. Computed by the saving code itself, in a
        transaction that is rolled back, so the preview and the save cannot disagree."""
        with self.db.dry_run() as conn:
            if template_id is None:
                assert isinstance(body, TemplateIn)
                row, changed = self._create_template(conn, body, self.service.clock())
            else:
                patch = (body if isinstance(body, TemplatePatch)
                         else TemplatePatch.model_validate(body.model_dump()))
                row, changed = self._update_template(conn, template_id, patch,
                                                     self.service.clock())
            t = template_from_row(row)
            pinned = [r[0] for r in conn.execute(
                "SELECT sensor_id FROM sensors WHERE pinned_version IS NOT NULL ORDER BY sensor_id")]
            concerned = set(self.configs.sensors_for(conn, t))
            sensors = []
            for v in changed:
                before = (self.configs.version(conn, v.sensor_id, v.version - 1)
                          if v.version > 1 else None)
                sensors.append({"sensor_id": v.sensor_id, "config_version": v.version,
                                "config_hash": v.config_hash,
                                "previous_hash": before.config_hash if before else None,
                                "template_id": v.template_id})
        return {"template": {**_template(row), "id": template_id},
                "sensors_changed": len(sensors), "sensors": sensors,
                "pinned": [s for s in pinned if s in concerned]}

    def delete_template(self, template_id: int) -> dict[str, Any]:
        with self.db.tx() as conn:
            row = self._template_row(conn, template_id)
            t = template_from_row(row)
            conn.execute("DELETE FROM templates WHERE id = ?", (template_id,))
            changed = self._recompute(conn, f"template {template_id} deleted",
                                      self.configs.sensors_for(conn, t))
        self.service.notify(changed)
        return {"deleted": _template(row), "sensors_changed": len(changed)}

    # --- groups ----------------------------------------------------------------------------------
    def _group(self, conn: sqlite3.Connection, name: str) -> dict[str, Any]:
        row = conn.execute("SELECT * FROM groups WHERE group_name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound("unknown_group", f"no group {name!r}")
        members = [r[0] for r in conn.execute(
            "SELECT sensor_id FROM group_members WHERE group_name = ? ORDER BY sensor_id", (name,))]
        templates = [r[0] for r in conn.execute(
            "SELECT id FROM templates WHERE group_name = ? ORDER BY id", (name,))]
        return {"group_name": name, "description": row["description"], "sensors": members,
                "templates": templates, "created_at": iso(row["created_at"])}

    def groups(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            names = [r[0] for r in conn.execute("SELECT group_name FROM groups ORDER BY group_name")]
            return [self._group(conn, n) for n in names]

    def group(self, name: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return self._group(conn, name)

    def create_group(self, body: GroupIn) -> dict[str, Any]:
        now = self.service.clock()
        with self.db.tx() as conn:
            try:
                conn.execute("INSERT INTO groups VALUES (?, ?, ?)",
                             (body.group_name, body.description, now))
            except sqlite3.IntegrityError as exc:
                raise Conflict("duplicate_group", f"group_name: {body.group_name!r} exists") from exc
            conn.executemany("INSERT OR IGNORE INTO group_members VALUES (?, ?)",
                             [(body.group_name, s) for s in body.sensors])
            if body.config is not None:
                try:
                    shared = TemplateIn(config_name=f"group {body.group_name}",
                                        group=body.group_name, config_data=body.config,
                                        priority=body.priority)
                except ValidationError as exc:
                    raise _validation(exc) from exc
                conn.execute(
                    "INSERT INTO templates (config_name, group_name, config_data, priority, "
                    "is_active, created_at, updated_at) VALUES (?, ?, ?, ?, 1, ?, ?)",
                    (shared.config_name, body.group_name, dumps(shared.config_data).decode(),
                     shared.priority, now, now))
            changed = self._recompute(conn, f"group {body.group_name} created", list(body.sensors))
            out = self._group(conn, body.group_name)
        self.service.notify(changed)
        return out

    def update_group(self, name: str, body: GroupPatch) -> dict[str, Any]:
        with self.db.tx() as conn:
            before = self._group(conn, name)["sensors"]
            if body.description is not None:
                conn.execute("UPDATE groups SET description = ? WHERE group_name = ?",
                             (body.description, name))
            if body.sensors is not None:
                conn.execute("DELETE FROM group_members WHERE group_name = ?", (name,))
                conn.executemany("INSERT OR IGNORE INTO group_members VALUES (?, ?)",
                                 [(name, s) for s in body.sensors])
            changed = self._recompute(conn, f"group {name} changed", before + (body.sensors or []))
            out = self._group(conn, name)
        self.service.notify(changed)
        return out

    def set_member(self, name: str, sensor_id: str, *, member: bool) -> dict[str, Any]:
        with self.db.tx() as conn:
            self._group(conn, name)
            if member:
                conn.execute("INSERT OR IGNORE INTO group_members VALUES (?, ?)", (name, sensor_id))
            else:
                conn.execute("DELETE FROM group_members WHERE group_name = ? AND sensor_id = ?",
                             (name, sensor_id))
            changed = self._recompute(conn, f"group {name} changed", [sensor_id])
            out = self._group(conn, name)
        self.service.notify(changed)
        return out

    def delete_group(self, name: str) -> dict[str, Any]:
        """The group, its members and the templates that apply to it go."""
        with self.db.tx() as conn:
            members = self._group(conn, name)["sensors"]
            conn.execute("DELETE FROM templates WHERE group_name = ?", (name,))
            conn.execute("DELETE FROM groups WHERE group_name = ?", (name,))
            changed = self._recompute(conn, f"group {name} deleted", members)
        self.service.notify(changed)
        return {"deleted": name, "sensors_changed": len(changed)}

    # --- commands --------------------------------------------------------------------------------
    def create_command(self, body: CommandCreate) -> dict[str, Any]:
        with self.db.tx() as conn:
            if conn.execute("SELECT 1 FROM sensors WHERE sensor_id = ?",
                            (body.sensor_id,)).fetchone() is None:
                raise unknown_sensor(body.sensor_id)
            made = self.queue.create(conn, body, self.service.clock())
        self.service.feed.append("command", body.sensor_id, command_id=made["command_id"])
        return made

    def commands(self, *, sensor_id: str | None, status: str | None,
                 limit: int = 500) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            return self.queue.list_commands(conn, sensor_id=sensor_id, status=status, limit=limit)

    def command(self, command_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return self.queue.get(conn, command_id)

    def cancel_command(self, command_id: str) -> dict[str, Any]:
        with self.db.tx() as conn:
            return self.queue.cancel(conn, command_id, self.service.clock())

    # --- history, rollback, explanation ----------------------------------------------------------
    def history(self, sensor_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            self.service.sensor_row(conn, sensor_id)
            return [v.as_dict() for v in self.configs.history(conn, sensor_id, limit)]

    def rollback(self, sensor_id: str, body: Rollback) -> dict[str, Any]:
        with self.db.tx() as conn:
            self.service.sensor_row(conn, sensor_id)
            made = self.configs.rollback(conn, sensor_id, body.version, self.service.clock())
        self.service.notify([made])
        return {**made.as_dict(), "pinned": True}

    def explain(self, sensor_id: str) -> dict[str, Any]:
        """Which template won for the sensor and why, with every other matching template and
        what it lost to."""
        with self.db.read() as conn:
            row = self.service.sensor_row(conn, sensor_id)
            found, doc = self.configs.evaluate(conn, row)
            latest = self.configs.latest(conn, sensor_id)
            groups = sorted(self.configs.groups_of(conn, sensor_id))
        pinned = row["pinned_version"]
        return {
            "sensor_id": sensor_id, "sensor_type": row["sensor_type"], "groups": groups,
            "order": "sensor-specific, then group, then sensor type; within each, the active "
                     "template with the lowest priority number; a tie goes to the oldest",
            "winner": ({"id": found.winner.id, "config_name": found.winner.config_name,
                        "applies_to": found.winner.scope, "target": found.winner.target,
                        "priority": found.winner.priority} if found.winner else None),
            "reason": (f"pinned to version {pinned} by a rollback; release with "
                       "PATCH sensors/{id} {\"unpin\": true}" if pinned else found.reason),
            "candidates": [{"id": c.template.id, "config_name": c.template.config_name,
                            "applies_to": c.template.scope, "target": c.template.target,
                            "priority": c.template.priority, "is_active": c.template.is_active,
                            "outcome": c.outcome} for c in found.candidates],
            "pinned_version": pinned,
            "effective": doc, "config_hash": resolve.config_hash(doc),
            "config_version": latest.version if latest else None,
        }
