"""Pydantic models of master control payloads (issue 9; fields from the "Sensor Master Control
System" seed): what sensors send (register, heartbeat, command acks, data) and what management
sends (master instances, config templates, commands, groups). Kept apart from ``shared.models``
so that the device data path and master control evolve without stepping on each other.

Every model refuses unknown shapes with a message that names the field; ids follow the contract
(``[A-Za-z0-9_-]{1,64}``), so a ``/``, ``+`` or ``#`` never reaches a topic or a SQL row.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.jsonutil import dumps

SensorId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
GroupName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
SensorType = Annotated[str, Field(min_length=1, max_length=64)]
ShortText = Annotated[str, Field(max_length=256)]
# ISO 8601 (``2026-01-01T12:00:00Z``) or epoch seconds: firmware without a formatter sends numbers.
Timestamp = str | float

MAX_CONFIG_BYTES = 64 * 1024
MAX_BATCH = 10_000
MAX_READINGS_BYTES = 16 * 1024  # one reading set; device state is small, not a file transfer
AckStatus = Literal["delivered", "completed", "failed"]
CommandState = Literal["pending", "sent", "delivered", "completed", "failed", "expired", "canceled"]
SensorStatus = Literal["online", "stale", "offline", "pending"]
OPEN_COMMAND_STATES: tuple[CommandState, ...] = ("pending", "sent")
FINAL_COMMAND_STATES: tuple[CommandState, ...] = ("completed", "failed", "expired", "canceled")


class _In(BaseModel):
    # Sensors in the field run old firmware: extra fields are ignored, not refused.
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Admin(BaseModel):
    # Management bodies come from people: a misspelt field is refused rather than silently lost.
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- sensor side -----------------------------------------------------------------------------


class SensorRegister(_In):
    """``POST /api/sensor-master/register`` and ``B/sensors/{s}/register``."""

    sensor_id: SensorId
    sensor_name: ShortText | None = None
    sensor_type: SensorType = "generic"
    hardware_info: ShortText | None = None
    firmware_version: Annotated[str, Field(max_length=64)] | None = None
    ip_address: Annotated[str, Field(max_length=64)] | None = None
    mac_address: Annotated[str, Field(max_length=64)] | None = None
    capabilities: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=64)] = (
        Field(default_factory=list))


class Heartbeat(_In):
    """``POST /api/sensor-master/heartbeat`` and ``B/sensors/{s}/heartbeat``."""

    sensor_id: SensorId
    status: Annotated[str, Field(max_length=32)] | None = None
    config_hash: Annotated[str, Field(max_length=128)] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class CommandAck(_In):
    """``POST /api/sensor-master/commands/{id}/ack`` and ``B/sensors/{s}/commands/ack``."""

    command_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    sensor_id: SensorId | None = None
    status: AckStatus
    result: dict[str, Any] | None = None


def _small_readings(readings: dict[str, Any] | None) -> dict[str, Any] | None:
    if readings is not None and (size := len(dumps(readings))) > MAX_READINGS_BYTES:
        raise ValueError(f"readings are {size} bytes; at most {MAX_READINGS_BYTES} per reading set")
    return readings


class DataItem(_In):
    """One reading set; ``id`` (or the timestamp) makes a replayed upload idempotent."""

    id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    timestamp: Timestamp | None = None
    readings: Annotated[dict[str, Any], Field(min_length=1, max_length=256)]

    _small = field_validator("readings")(_small_readings)


class DataUpload(_In):
    """``POST /api/sensor-master/data``: one reading set, or ``batch`` after an offline period."""

    sensor_id: SensorId
    id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    timestamp: Timestamp | None = None
    readings: Annotated[dict[str, Any], Field(min_length=1, max_length=256)] | None = None
    batch: Annotated[list[DataItem], Field(min_length=1, max_length=MAX_BATCH)] | None = None

    _small = field_validator("readings")(_small_readings)

    @model_validator(mode="after")
    def _one_shape(self) -> DataUpload:
        if (self.readings is None) == (self.batch is None):
            raise ValueError("give exactly one of readings (one reading set) or batch (a list)")
        return self

    def items(self) -> list[DataItem]:
        if self.batch is not None:
            return list(self.batch)
        assert self.readings is not None
        return [DataItem(id=self.id, timestamp=self.timestamp, readings=self.readings)]


# --- management -------------------------------------------------------------------------------


class MasterInstanceIn(_Admin):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: ShortText = ""
    api_endpoint: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^https?://\S+$")]
    priority: Annotated[int, Field(ge=1, le=1000)] = 1
    enabled: bool = True


class MasterInstancePatch(_Admin):
    name: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    description: ShortText | None = None
    api_endpoint: Annotated[str, Field(min_length=1, max_length=512,
                                       pattern=r"^https?://\S+$")] | None = None
    priority: Annotated[int, Field(ge=1, le=1000)] | None = None
    enabled: bool | None = None


class TemplateIn(_Admin):
    """A config template; it applies to exactly one of a sensor, a group or a sensor type."""

    master_id: int | None = None
    config_name: Annotated[str, Field(min_length=1, max_length=128)]
    sensor_id: SensorId | None = None
    group: GroupName | None = None
    sensor_type: SensorType | None = None
    config_data: dict[str, Any]
    priority: Annotated[int, Field(ge=0, le=1_000_000)] = 100
    is_active: bool = True

    @model_validator(mode="after")
    def _one_target(self) -> TemplateIn:
        named = [f for f in ("sensor_id", "group", "sensor_type") if getattr(self, f) is not None]
        if len(named) != 1:
            raise ValueError("a template applies to exactly one of sensor_id, group or "
                             f"sensor_type; this one names {', '.join(named) or 'none'}")
        size = len(dumps(self.config_data))
        if size > MAX_CONFIG_BYTES:
            raise ValueError(f"config_data is {size} bytes; at most {MAX_CONFIG_BYTES} are allowed")
        return self


class TemplatePatch(_Admin):
    """Fields to change; the merged template is validated again as a whole (``TemplateIn``).
    To move a template to another target, give the new target and null the old one."""

    master_id: int | None = None
    config_name: str | None = None
    sensor_id: str | None = None
    group: str | None = None
    sensor_type: str | None = None
    config_data: dict[str, Any] | None = None
    priority: int | None = None
    is_active: bool | None = None


class CommandCreate(_Admin):
    """``POST /api/sensor-master/command``; ``priority``: lower is delivered first (as templates
    and masters), ``expires_in`` seconds or ``expires_at`` (ISO 8601)."""

    sensor_id: SensorId
    command_type: Annotated[str, Field(min_length=1, max_length=64)]
    command_data: dict[str, Any] = Field(default_factory=dict)
    priority: Annotated[int, Field(ge=0, le=1000)] = 5
    expires_in: Annotated[float, Field(gt=0, le=30 * 86400)] | None = None
    expires_at: str | None = None


class SensorPatch(_Admin):
    sensor_name: ShortText | None = None
    sensor_type: SensorType | None = None
    check_in_interval: Annotated[float, Field(gt=0, le=86400)] | None = None
    unpin: bool = False  # release a rollback: the sensor follows its templates again


class GroupIn(_Admin):
    """A sensor group; ``config`` (optional) becomes a template that applies to the group."""

    group_name: GroupName
    description: ShortText = ""
    sensors: Annotated[list[SensorId], Field(max_length=10_000)] = Field(default_factory=list)
    config: dict[str, Any] | None = None
    priority: Annotated[int, Field(ge=0, le=1_000_000)] = 100


class GroupPatch(_Admin):
    description: ShortText | None = None
    sensors: Annotated[list[SensorId], Field(max_length=10_000)] | None = None


class Rollback(_Admin):
    version: Annotated[int, Field(ge=1)]
