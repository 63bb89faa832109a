"""The instance file ``{INSTANCES_DIR}/{INSTANCE_NAME}.json``: its model, loading and JSON schema.

A broken file raises ``ConfigError`` naming the file, the field and the problem; the process
exits at start and supervisord shows the message.

``python -m shared.instance`` checks the configuration the programs would get from this
environment; ``python -m shared.instance FILE...`` checks each file as the instance its name
says (``instances/mine.json`` runs as ``INSTANCE_NAME=mine``); ``--schema`` prints the JSON
schema committed as ``instances/instance.schema.json``. Both checks are ``shared.config``'s, the
very one every program makes at start.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.errors import ConfigError

Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
PropertyName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class _Strict(BaseModel):
    # extra="forbid": a misspelt key is an error that names it, not a silent default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class PropertySpec(_Strict):
    """What is known of one property: where to find it (HTTP sensors), its type and unit."""

    path: str | None = Field(
        default=None, description="JMESPath into the sensor's JSON response (HTTP sensors)"
    )
    type: Literal["float", "int", "bool", "str"] | None = None
    unit: str | None = None
    device_class: str | None = None
    events: dict[str, str] | None = Field(
        default=None,
        description='Events to emit when the value changes to a key, e.g. {"true": "motion_started"}',
    )


class SerialSource(_Strict):
    type: Literal["serial"]
    port: str = Field(description="A device path or any pyserial URL: socket://, loop://, sim://")
    baudrate: int = Field(default=115200, gt=0)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: float = Field(default=1, description="1, 1.5 or 2")
    line_ending: Literal["\n", "\r\n", "\r"] = "\n"
    read_timeout: float = Field(
        default=2.0, gt=0, le=60,
        description="Seconds a read request may wait for its answer; a sensor's own "
                    "read_timeout overrides it. An unanswered request holds the port that long: "
                    "sensors on the port x read_timeout should fit the interval",
    )
    mode: Literal["stream", "poll"] = Field(
        default="stream",
        description="stream: the sensor prints readings by itself; poll: the hub asks every interval",
    )
    writable: bool = False

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, v: float) -> float:
        if v not in (1, 1.5, 2):
            raise ValueError("stopbits must be 1, 1.5 or 2")
        return v


class HttpSource(_Strict):
    type: Literal["http"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    method: Literal["GET", "POST"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=3.0, gt=0, le=60)
    writable: bool = False


class ProbeSource(_Strict):
    """An ESP32 probe that pushes to the hub; ``ip`` lists it statically where mDNS cannot."""

    type: Literal["probe"]
    ip: str | None = None
    port: int = Field(default=80, ge=1, le=65535)


SourceConfig = Annotated[SerialSource | HttpSource | ProbeSource, Field(discriminator="type")]


class SensorConfig(_Strict):
    sensor_id: Id
    sensor_type: str = Field(min_length=1, max_length=64)
    friendly_name: str | None = None
    model: str | None = None
    enabled: bool = True
    interval: float | None = Field(
        default=None, gt=0, description="Expected cadence in seconds (default: update_interval)"
    )
    read_timeout: float | None = Field(
        default=None, gt=0, le=60,
        description="Serial sensors: seconds this sensor's answer to a read request may take, "
                    "overriding its port's source.read_timeout",
    )
    properties: dict[PropertyName, PropertySpec] = Field(default_factory=dict)
    source: SourceConfig

    @model_validator(mode="after")
    def _read_timeout_is_serial(self) -> SensorConfig:
        # An HTTP source has its own "timeout"; a probe pushes and is never asked.
        if self.read_timeout is not None and self.source.type != "serial":
            raise ValueError("read_timeout is for serial sensors (an HTTP source has timeout)")
        return self


class InstanceConfig(_Strict):
    cache_ttl: float = Field(default=10, ge=0)
    sensors: list[SensorConfig] = Field(default_factory=list)


class GroupConfig(_Strict):
    group_id: Id
    friendly_name: str | None = None
    devices: list[Id]


class Instance(_Strict):
    schema_: str | None = Field(default=None, alias="$schema")
    instance_id: Id
    connector_type: Literal["sensor-hub"] = "sensor-hub"
    friendly_name: str
    enabled: bool = True
    update_interval: float = Field(default=10, gt=0)
    config: InstanceConfig
    groups: list[GroupConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Instance:
        seen: set[str] = set()
        for sensor in self.config.sensors:
            if sensor.sensor_id in seen:
                raise ValueError(f"sensor_id {sensor.sensor_id!r} is used twice")
            seen.add(sensor.sensor_id)
        for group in self.groups:
            unknown = [d for d in group.devices if d not in seen]
            if unknown:
                raise ValueError(f"group {group.group_id!r} names unknown devices {unknown}")
        _check_shared_ports(self.config.sensors)
        return self

    def sensors_of(self, source_type: str) -> list[SensorConfig]:
        return [s for s in self.config.sensors if s.source.type == source_type and s.enabled]

    def interval_of(self, sensor: SensorConfig, default: float | None = None) -> float:
        return sensor.interval or default or self.update_interval


def _check_shared_ports(sensors: list[SensorConfig]) -> None:
    """Sensors that share a serial port must agree on how it is opened."""
    by_port: dict[str, SerialSource] = {}
    owner: dict[str, str] = {}
    for sensor in sensors:
        src = sensor.source
        if not isinstance(src, SerialSource):
            continue
        first = by_port.setdefault(src.port, src)
        owner.setdefault(src.port, sensor.sensor_id)
        if first.model_dump(exclude={"writable"}) != src.model_dump(exclude={"writable"}):
            raise ValueError(
                f"sensors {owner[src.port]!r} and {sensor.sensor_id!r} share port {src.port!r} "
                "but open it with different settings"
            )


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(data: Any, env: Mapping[str, str], *, where: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of the file, as compose does,
    so one file serves on the host and in a container; an unset variable without a default is
    an error naming it and the field."""
    if isinstance(data, dict):
        return {k: expand_env(v, env, where=f"{where}.{k}" if where else k) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_env(v, env, where=f"{where}.{i}") for i, v in enumerate(data)]
    if not isinstance(data, str) or "${" not in data:
        return data

    def value(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        found = env.get(name) or default
        if found is None:
            raise ConfigError(f"{where}: ${{{name}}} is not set and has no default")
        return found

    return _VAR.sub(value, data)


def parse_instance(data: Any, *, origin: str = "<instance>") -> Instance:
    try:
        return Instance.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid instance file {origin}:\n{_format_errors(exc)}") from exc


def load_instance(path: Path, *, expected_id: str | None = None) -> Instance:
    """Read and validate an instance file; ``ConfigError`` names the file, field and problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read instance file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"invalid instance file {path}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    try:
        data = expand_env(data, os.environ)
    except ConfigError as exc:
        raise ConfigError(f"invalid instance file {path}:\n  {exc}") from exc
    instance = parse_instance(data, origin=str(path))
    if expected_id is not None and instance.instance_id != expected_id:
        # The usual cause: a copied file (cp demo.json mine.json) that kept its instance_id.
        raise ConfigError(
            f"invalid instance file {path}:\n  instance_id: is {instance.instance_id!r} "
            f"but INSTANCE_NAME is {expected_id!r} (the file of instance {expected_id!r} "
            f"needs \"instance_id\": \"{expected_id}\")"
        )
    return instance


def json_schema() -> dict[str, Any]:
    schema = Instance.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sensor-hub instance"
    return schema


def _check(env: Mapping[str, str]) -> str:
    """Run the programs' own start-up check (``shared.config.check_config``) under ``env``;
    return what was checked, or raise ``ConfigError``."""
    from shared.config import check_config  # not at the top: shared.config imports this module

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        settings, instance = check_config()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return (f"{settings.instance_file}: ok (instance {instance.instance_id!r}, "
            f"{len(instance.config.sensors)} sensors)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.instance",
        description="Check instance files as the programs will at start (settings from the "
                    "environment included), or print the instance file's JSON schema.")
    parser.add_argument("--schema", action="store_true", help="print the JSON schema")
    parser.add_argument("files", nargs="*", type=Path,
                        help="instance files, each checked as the instance its name says "
                             "(default: {INSTANCES_DIR}/{INSTANCE_NAME}.json from the environment)")
    args = parser.parse_args(argv)
    if args.schema:
        print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
        return 0
    # A file runs as the instance its name says: the programs read {INSTANCES_DIR}/{INSTANCE_NAME}.json.
    envs = [{"INSTANCES_DIR": str(p.parent), "INSTANCE_NAME": p.stem} for p in args.files] or [{}]
    status = 0
    for env in envs:
        try:
            print(_check(env))
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
