"""The devices registered at run time (ESP32 probes, ``hub_system``), kept in
``{DATA_DIR}/registry.json`` so that a restart of the aggregator does not forget them: a handler
that registered a probe once keeps pushing its readings, and they must still be accepted."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from shared.jsonutil import JSONDecodeError, dumps, loads
from shared.models import RegisterDevice

log = logging.getLogger(__name__)


class Registration(BaseModel):
    model_config = ConfigDict(frozen=True)

    device: RegisterDevice
    handler: str | None = None


class RegistryStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[Registration]:
        """What was saved; an unreadable file is reported and set aside, never fatal."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.error("cannot read %s: %s; starting without run-time devices", self.path, exc)
            return []
        try:
            data = loads(raw)
            return [Registration.model_validate(item) for item in data["devices"]]
        except (JSONDecodeError, ValidationError, KeyError, TypeError) as exc:
            broken = self.path.with_suffix(".broken")
            log.error("%s is damaged (%s); moved aside to %s", self.path, exc, broken)
            self.path.replace(broken)
            return []

    def save(self, registrations: list[Registration]) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(dumps({"devices": [r.model_dump() for r in registrations]}))
            tmp.replace(self.path)
        except OSError as exc:
            log.error("cannot save run-time devices to %s: %s", self.path, exc)
