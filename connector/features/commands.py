"""``devices/{d}/cmd``, ``devices/{d}/get`` and ``groups/{g}/cmd``.

Every command gets exactly one final ``cmd/response``; a retained command is never executed
(and is cleared from the broker); an expired one is answered ``expired`` and not run.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from pydantic import ValidationError

from shared.errors import ServiceError, TopicError
from shared.jsonutil import JSONDecodeError, NotAJsonObject, loads, loads_object
from shared.models import CommandIn, CommandResult, GetIn
from shared.timeutil import iso, parse_iso
from shared.web import validation_message

from .base import Feature, Route

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 5000


class BadRequest(ValueError):
    """A payload the bridge cannot act on; the message says why."""


def decode(payload: bytes, model: type[Any], *, allow_empty: bool = False) -> Any:
    try:
        data = loads_object(payload, what="payload")
    except NotAJsonObject as exc:
        if not (exc.reason == "empty" and allow_empty):
            raise BadRequest(str(exc)) from exc
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(validation_message(exc)) from exc


def _guess_cmd_id(payload: bytes) -> str | None:
    try:
        data = loads(payload)
    except JSONDecodeError:
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and len(value) <= 128 else None


class CommandsFeature(Feature):
    name = "commands"

    def routes(self) -> list[Route]:
        root = self.ctx.topics.root
        return [(f"{root}/devices/+/cmd", self._on_cmd), (f"{root}/devices/+/get", self._on_get),
                (f"{root}/groups/+/cmd", self._on_group_cmd)]

    # --- responses -----------------------------------------------------------------------------
    def respond(self, device_id: str, cmd_id: str | None, result: CommandResult) -> None:
        payload: dict[str, Any] = {"cmd_id": cmd_id, "status": result.status, "timestamp": iso()}
        if result.result is not None:
            payload["result"] = result.result
        if result.error is not None:
            payload["error"] = result.error
        self.ctx.publisher.json(self.ctx.topics.cmd_response(device_id), payload, qos=1)

    def _target(self, topic: str) -> str | None:
        try:
            route = self.ctx.topics.parse(topic)
        except TopicError as exc:
            log.warning("ignoring %s: %s", topic, exc)
            return None
        return route.target if route else None

    # --- cmd -----------------------------------------------------------------------------------
    def _on_cmd(self, topic: str, payload: bytes, retained: bool) -> None:
        device_id = self._target(topic)
        if device_id is None:
            return
        if retained:
            self._refuse_retained(topic, device_id, payload)
            return
        try:
            cmd = decode(payload, CommandIn)
        except BadRequest as exc:
            log.warning("bad command for %s: %s", device_id, exc)
            self.respond(device_id, _guess_cmd_id(payload),
                         CommandResult(status="error", error=f"invalid command: {exc}"))
            return
        self.ctx.executor.submit(self._run_guarded, device_id, cmd, cmd.id or uuid.uuid4().hex[:12])

    def _refuse_retained(self, topic: str, device_id: str, payload: bytes) -> None:
        if not payload:
            return  # our own clearing message coming back
        log.warning("a retained command sits on %s: clearing it, not executing it", topic)
        self.ctx.publisher.raw(topic, b"", qos=1, retain=True)
        self.respond(device_id, _guess_cmd_id(payload), CommandResult(
            status="rejected", error="retained commands are never executed; publish without retain"))

    def _run_guarded(self, device_id: str, cmd: CommandIn, cmd_id: str) -> None:
        try:
            result = self.execute(device_id, cmd, cmd_id)
        except Exception as exc:  # one final response, whatever happens
            log.exception("command %s for %s failed", cmd_id, device_id)
            result = CommandResult(status="error", error=f"internal error: {exc}")
        self.respond(device_id, cmd_id, result)

    def execute(self, device_id: str, cmd: CommandIn, cmd_id: str) -> CommandResult:
        if device_id not in self.ctx.mirror.devices:
            return CommandResult(status="rejected", error=f"unknown device {device_id!r}")
        timeout_ms = cmd.timeout or DEFAULT_TIMEOUT_MS
        if cmd.timestamp is not None:
            try:
                issued = parse_iso(cmd.timestamp)
            except ValueError:
                return CommandResult(status="error",
                                     error=f"timestamp {cmd.timestamp!r} is not ISO 8601")
            if cmd.timeout is not None and issued + cmd.timeout / 1000 < time.time():
                return CommandResult(status="expired",
                                     error=f"expired at {iso(issued + cmd.timeout / 1000)}")
        try:
            body = self.ctx.aggregator.post(
                f"/device/{device_id}/command",
                {"cmd_id": cmd_id, "values": cmd.values, "timeout_s": timeout_ms / 1000},
                timeout=timeout_ms / 1000 + 10.0,
            )
        except ServiceError as exc:
            return CommandResult(status="error", error=str(exc))
        return CommandResult.model_validate(body)

    # --- groups --------------------------------------------------------------------------------
    def _on_group_cmd(self, topic: str, payload: bytes, retained: bool) -> None:
        group_id = self._target(topic)
        if group_id is None:
            return
        members = self.ctx.mirror.groups.get(group_id)
        if members is None:
            log.warning("command for unknown group %r ignored", group_id)
            return
        if retained:
            self._refuse_retained(topic, members[0], payload) if members else None
            return
        try:
            cmd = decode(payload, CommandIn)
        except BadRequest as exc:
            for device_id in members:
                self.respond(device_id, _guess_cmd_id(payload),
                             CommandResult(status="error", error=f"invalid command: {exc}"))
            return
        cmd_id = cmd.id or uuid.uuid4().hex[:12]
        for device_id in members:
            self.ctx.executor.submit(self._run_guarded, device_id, cmd, cmd_id)

    # --- get -----------------------------------------------------------------------------------
    def _on_get(self, topic: str, payload: bytes, retained: bool) -> None:
        device_id = self._target(topic)
        if device_id is None or retained:
            return
        try:
            req = decode(payload, GetIn, allow_empty=True)
        except BadRequest as exc:
            self._error(device_id, "INVALID_REQUEST", f"invalid get request: {exc}")
            return
        self.ctx.executor.submit(self._refresh, device_id, req.properties)

    def _refresh(self, device_id: str, properties: list[str] | None) -> None:
        if device_id not in self.ctx.mirror.devices:
            log.warning("get for unknown device %r ignored", device_id)
            return
        try:
            self.ctx.aggregator.post(f"/device/{device_id}/force-refresh",
                                     {"properties": properties}, timeout=20.0)
        except ServiceError as exc:
            if exc.status != 503:  # a failed read was already published as a device error
                self._error(device_id, "REFRESH_FAILED", str(exc))

    def _error(self, device_id: str, code: str, message: str) -> None:
        self.ctx.publisher.json(self.ctx.topics.error(device_id), {
            "timestamp": iso(), "error_code": code, "message": message, "severity": "warning"},
            qos=1)
