"""``devices/{d}/cmd``, ``devices/{d}/get`` and ``groups/{g}/cmd``.

Every command gets exactly one final ``cmd/response``; a retained command is never executed
(and is cleared from the broker); an expired one is answered ``expired`` and not run.

The handlers run on paho's network thread: they decode, check and hand the work on, never
wait. Commands run on a fixed pool behind a bounded queue, at most ``MAX_IN_FLIGHT_PER_DEVICE``
per device, and a ``timeout`` above ``COMMAND_TIMEOUT_MAX`` is refused: a board that never acks
can hold a device's slots for that long, not the bridge. Fresh reads (``get``) have a pool of
their own, and the answers to bad input go through the bounded ``Answers`` queue.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared.errors import ServiceError
from shared.jsonutil import JSONDecodeError, NotAJsonObject, loads, loads_object
from shared.models import CommandIn, CommandResult, GetIn
from shared.processes import (
    COMMAND_TIMEOUT_DEFAULT_S,
    FRESH_READ_TIMEOUT_S,
    aggregator_wait_s,
)
from shared.timeutil import iso, parse_iso
from shared.topics import Route, RouteKind

from ..context import BridgeContext
from ..workers import Workers
from .base import Feature, Inbound

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

MAX_IN_FLIGHT_PER_DEVICE = 2  # running or queued commands of one device
COMMAND_WORKERS, COMMAND_QUEUE = 8, 64
GET_WORKERS, GET_QUEUE = 2, 64


class BadRequest(ValueError):
    """A payload the bridge cannot act on; the message says why."""


def decode(payload: bytes, model: type[M], *, allow_empty: bool = False) -> M:
    try:
        data = loads_object(payload, what="payload")
    except NotAJsonObject as exc:
        if not (exc.reason == "empty" and allow_empty):
            raise BadRequest(str(exc)) from exc
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # pydantic's own text, one line per problem (shared.web would pull in Flask).
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}"
                             for e in exc.errors())
        raise BadRequest(problems) from exc


def guess_id(payload: bytes) -> str | None:
    """The ``id`` of a payload that failed validation, so its answer can still be matched."""
    try:
        data = loads(payload)
    except JSONDecodeError:
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None


class CommandsFeature(Feature):
    name = "commands"

    def __init__(self, ctx: BridgeContext) -> None:
        super().__init__(ctx)
        self.commands = Workers("command", size=COMMAND_WORKERS, capacity=COMMAND_QUEUE)
        self.gets = Workers("get", size=GET_WORKERS, capacity=GET_QUEUE)
        self.timeout_max_s = ctx.settings.command_timeout_max
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._gets_pending: set[str] = set()

    def handlers(self) -> dict[RouteKind, Inbound]:
        return {"cmd": self._on_cmd, "get": self._on_get, "group_cmd": self._on_group_cmd}

    def start(self) -> None:
        self.commands.start()
        self.gets.start()

    def stop(self) -> None:
        self.commands.stop()
        self.gets.stop()

    # --- responses -----------------------------------------------------------------------------
    def response(self, device_id: str, cmd_id: str | None,
                 result: CommandResult) -> tuple[str, dict[str, Any]]:
        payload: dict[str, Any] = {"cmd_id": cmd_id, "status": result.status, "timestamp": iso()}
        if result.result is not None:
            payload["result"] = result.result
        if result.error is not None:
            payload["error"] = result.error
        return self.ctx.topics.cmd_response(device_id), payload

    def respond(self, device_id: str, cmd_id: str | None, result: CommandResult) -> None:
        """From a worker thread: publish now (waiting for the send window is fine here)."""
        self.ctx.publisher.json(*self.response(device_id, cmd_id, result), qos=1)

    def answer(self, device_id: str, cmd_id: str | None, status: str, error: str) -> None:
        """From the network thread: through the bounded answers queue."""
        result = CommandResult.model_validate({"status": status, "error": error})
        self.ctx.answers.json(*self.response(device_id, cmd_id, result))

    # --- cmd -----------------------------------------------------------------------------------
    def _on_cmd(self, route: Route, payload: bytes, retained: bool) -> None:
        device_id = route.target
        if retained:
            self._refuse_retained(route, payload)
            return
        cmd = self._decode_cmd(payload, [device_id])
        if cmd is not None:
            self._submit(device_id, cmd, cmd.id or uuid.uuid4().hex[:12])

    def _on_group_cmd(self, route: Route, payload: bytes, retained: bool) -> None:
        if retained:
            self._refuse_retained(route, payload)
            return
        members = self.ctx.mirror.groups.get(route.target)
        if members is None:
            self.ctx.answers.json(self.ctx.topics.meta_error, meta_error(
                "UNKNOWN_GROUP", f"unknown group {route.target!r}; no member was commanded",
                topic=self.ctx.topics.group_cmd(route.target), req_id=guess_id(payload)))
            return
        cmd = self._decode_cmd(payload, members)
        if cmd is None:
            return
        cmd_id = cmd.id or uuid.uuid4().hex[:12]
        for device_id in members:
            self._submit(device_id, cmd, cmd_id)

    def _decode_cmd(self, payload: bytes, devices: list[str]) -> CommandIn | None:
        try:
            cmd = decode(payload, CommandIn)
        except BadRequest as exc:
            log.debug("bad command for %s: %s", devices, exc)
            for device_id in devices:
                self.answer(device_id, guess_id(payload), "error", f"invalid command: {exc}")
            return None
        if cmd.timeout is not None and cmd.timeout > self.timeout_max_s * 1000:
            for device_id in devices:
                self.answer(device_id, cmd.id, "rejected",
                            f"timeout {cmd.timeout} ms is longer than COMMAND_TIMEOUT_MAX "
                            f"({self.timeout_max_s * 1000:.0f} ms)")
            return None
        return cmd

    def _refuse_retained(self, route: Route, payload: bytes) -> None:
        if not payload:
            return  # our own clearing message coming back
        topic = self.ctx.topics.build(route)
        log.warning("a retained command sits on %s: clearing it, not executing it", topic)
        self.ctx.answers.clear_retained(topic)
        devices = ([route.target] if route.kind == "cmd"
                   else self.ctx.mirror.groups.get(route.target, []))
        for device_id in devices:
            self.answer(device_id, guess_id(payload), "rejected",
                        "retained commands are never executed; publish without retain")

    def _submit(self, device_id: str, cmd: CommandIn, cmd_id: str) -> None:
        mirror = self.ctx.mirror
        if not mirror.synced:
            self.answer(device_id, cmd_id, "rejected",
                        "the bridge has not loaded the device list yet; try again shortly")
            return
        if device_id not in mirror.devices:
            self.answer(device_id, cmd_id, "rejected", f"unknown device {device_id!r}")
            return
        with self._lock:
            running = self._in_flight.get(device_id, 0)
            if running >= MAX_IN_FLIGHT_PER_DEVICE:
                busy = f"busy: {running} commands for {device_id!r} are in flight already"
            else:
                self._in_flight[device_id] = running + 1
                busy = ""
        if busy:
            self.answer(device_id, cmd_id, "rejected", busy)
            return
        if not self.commands.offer(lambda: self._run(device_id, cmd, cmd_id)):
            self._release(device_id)
            self.answer(device_id, cmd_id, "rejected", "busy: the bridge's command queue is full")

    def _release(self, device_id: str) -> None:
        with self._lock:
            left = self._in_flight.get(device_id, 1) - 1
            if left > 0:
                self._in_flight[device_id] = left
            else:
                self._in_flight.pop(device_id, None)

    def _run(self, device_id: str, cmd: CommandIn, cmd_id: str) -> None:
        try:
            result = self.execute(device_id, cmd, cmd_id)
        except Exception as exc:  # one final response, whatever happens
            log.exception("command %s for %s failed", cmd_id, device_id)
            result = CommandResult(status="error", error=f"internal error: {exc}")
        finally:
            self._release(device_id)
        self.respond(device_id, cmd_id, result)

    def execute(self, device_id: str, cmd: CommandIn, cmd_id: str) -> CommandResult:
        timeout_s = cmd.timeout / 1000 if cmd.timeout else COMMAND_TIMEOUT_DEFAULT_S
        if cmd.timestamp is not None:
            try:
                issued = parse_iso(cmd.timestamp)
            except ValueError:
                return CommandResult(status="error",
                                     error=f"timestamp {cmd.timestamp!r} is not ISO 8601")
            if cmd.timeout is not None and issued + timeout_s < time.time():
                return CommandResult(status="expired",
                                     error=f"expired at {iso(issued + timeout_s)}")
        try:
            body = self.ctx.aggregator.post(
                f"/device/{device_id}/command",
                {"cmd_id": cmd_id, "values": cmd.values, "timeout_s": timeout_s},
                timeout=aggregator_wait_s(timeout_s),
            )
        except ServiceError as exc:
            return CommandResult(status="error", error=str(exc))
        return CommandResult.model_validate(body)

    # --- get -----------------------------------------------------------------------------------
    def _on_get(self, route: Route, payload: bytes, retained: bool) -> None:
        device_id = route.target
        if retained:
            return
        try:
            req = decode(payload, GetIn, allow_empty=True)
        except BadRequest as exc:
            self._answer_error(device_id, "INVALID_REQUEST", f"invalid get request: {exc}")
            return
        mirror = self.ctx.mirror
        if mirror.synced and device_id not in mirror.devices:
            self._answer_error(device_id, "UNKNOWN_DEVICE", f"get for unknown device {device_id!r}")
            return
        with self._lock:
            if device_id in self._gets_pending:
                return  # a fresh read of this device is on its way: one read serves both
            self._gets_pending.add(device_id)
        if not self.gets.offer(lambda: self._refresh(device_id, req.properties)):
            with self._lock:
                self._gets_pending.discard(device_id)
            self._answer_error(device_id, "BUSY", "too many fresh reads queued; try again")

    def _refresh(self, device_id: str, properties: list[str] | None) -> None:
        with self._lock:
            self._gets_pending.discard(device_id)
        try:
            self.ctx.aggregator.post(f"/device/{device_id}/force-refresh",
                                     {"properties": properties},
                                     timeout=aggregator_wait_s(FRESH_READ_TIMEOUT_S))
        except ServiceError as exc:
            if exc.status != 503:  # a failed read was already published as a device error
                self.ctx.publisher.json(self.ctx.topics.error(device_id), device_error(
                    "REFRESH_FAILED", str(exc)), qos=1)

    def _answer_error(self, device_id: str, code: str, message: str) -> None:
        self.ctx.answers.json(self.ctx.topics.error(device_id), device_error(code, message))


def device_error(code: str, message: str) -> dict[str, Any]:
    return {"timestamp": iso(), "error_code": code, "message": message, "severity": "warning"}


def meta_error(code: str, message: str, *, topic: str,
               req_id: str | None = None) -> dict[str, Any]:
    """``B/meta/error``: an answer to bad input that names no device the bridge could answer on
    (an invalid id in the topic, an unknown group). ``topic`` is the inbound topic."""
    body: dict[str, Any] = {**device_error(code, message), "topic": topic}
    if req_id is not None:
        body["id"] = req_id
    return body
