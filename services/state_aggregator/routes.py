"""The aggregator's REST endpoints: thin routes over ``Aggregator``."""

from __future__ import annotations

import sqlite3
from typing import Annotated, Any

from flask import Blueprint, Response, current_app, request
from pydantic import Field, ValidationError

from shared.models import (
    CommandRequest,
    CursorCommit,
    IngestBatch,
    RefreshRequest,
    RegisterDevice,
    to_json,
)
from shared.openapi import describe
from shared.timeutil import iso
from shared.web import ApiError, int_arg, json_response, parse_body

from .core import Aggregator
from .registry import RegistryRefusal

bp = Blueprint("state_aggregator", __name__)
# Out-of-range numbers are clamped, not refused.
CHANGES_QUERY = {"since": int, "epoch": str, "wait": Annotated[int, Field(ge=0, le=30)],
                 "limit": Annotated[int, Field(ge=1, le=100_000)]}


def _agg() -> Aggregator:
    agg: Aggregator = current_app.extensions["aggregator"]
    return agg


def _models_response(obj: Any) -> Response:
    """Models (or data holding them) written once, by orjson, at the edge."""
    return Response(to_json(obj), mimetype="application/json")


@bp.get("/health")
@describe(responses={200: "the aggregator's health"})
def health() -> Response:
    agg = _agg()
    handlers = agg.handler_health()
    history = current_app.extensions.get("history")
    stored = history.health() if history is not None else None
    outbox = agg.outbox.health() if agg.outbox is not None else None
    return json_response({
        "status": "ok" if all(v == "running" for v in handlers.values())
        and (stored is None or stored["state"] == "ok")
        and (outbox is None or outbox["state"] == "ok") else "degraded",
        "history": stored,
        "outbox": outbox,
        "service": "state-aggregator",
        "instance": agg.instance_id,
        "uptime": round(agg.clock() - agg.started, 1),
        "handlers": handlers,
        "devices": agg.counts(),
        "changelog": agg.changes.stats(),
        "timestamp": iso(),
    })


@bp.post("/ingest")
@describe(body=IngestBatch, responses={200: "the batch's outcome", 400: "not JSON",
                                   422: "not a batch"})
def ingest() -> Response:
    """A handler's batch of observations: decoded and validated in one pass by pydantic
    (about a quarter cheaper than orjson then pydantic), since every reading crosses it."""
    try:
        batch = IngestBatch.model_validate_json(request.get_data())
    except ValidationError:
        # A bad body takes the common path, for the same 400/422 answers every route gives.
        batch = parse_body(IngestBatch)
    return json_response(_agg().ingest(batch.items, source=batch.source,
                                       batch_id=batch.batch_id))


@bp.post("/devices/register")
@describe(body=RegisterDevice, responses={200: "registered (or already known)", 400: "not JSON",
                                      409: "another source's id, or MAX_DEVICES reached",
                                      422: "not a device"})
def register() -> Response:
    """Add a device found at run time; ``added`` is false when the registry already has it.
    409 when the id is another source's device, or past ``MAX_DEVICES``."""
    body = parse_body(RegisterDevice)
    try:
        added = _agg().register(body, capped=True)
    except RegistryRefusal as exc:
        raise ApiError(exc.status, exc.error, exc.message) from exc
    return json_response({"device_id": body.device_id, "added": added})


@bp.get("/devices/<device_id>")
@describe(responses={200: "the registry entry", 404: "unknown device"})
def device_info(device_id: str) -> Response:
    """The registry's entry of one device (no state, no read)."""
    agg = _agg()
    return json_response(agg.device(device_id).info(agg.clock()).model_dump())


@bp.delete("/devices/<device_id>")
@describe(responses={200: "removed", 404: "unknown device", 409: "not a run-time probe"})
def unregister(device_id: str) -> Response:
    """Remove a probe registered at run time; 409 for any other device."""
    try:
        _agg().unregister(device_id)
    except RegistryRefusal as exc:
        raise ApiError(exc.status, exc.error, exc.message) from exc
    return json_response({"device_id": device_id, "removed": True})


@bp.get("/devices")
@describe(responses={200: "every device's registry entry"})
def devices() -> Response:
    return _models_response({"devices": _agg().device_infos(), "timestamp": iso()})


@bp.get("/device/<device_id>")
@describe(responses={200: "the device's state (cached or read)", 404: "unknown device",
                     503: "the read failed"})
def device(device_id: str) -> Response:
    return json_response(_agg().cached_state(device_id))


@bp.post("/device/<device_id>/force-refresh")
@describe(body=RefreshRequest, body_required=False,
          responses={200: "the fresh state", 400: "not JSON", 404: "unknown device",
                     422: "not a refresh request", 503: "the read failed"})
def force_refresh(device_id: str) -> Response:
    body = parse_body(RefreshRequest, allow_empty=True)
    return json_response(_agg().refresh(device_id, body.properties))


@bp.post("/device/<device_id>/command")
@describe(body=CommandRequest, responses={200: "the command's result", 400: "not JSON",
                                      404: "unknown device", 422: "not a command"})
def command(device_id: str) -> Response:
    body = parse_body(CommandRequest)
    return json_response(_agg().command(device_id, body).model_dump(exclude_none=True))


@bp.get("/groups")
@describe(responses={200: "the instance's groups"})
def groups() -> Response:
    return json_response({"groups": _agg().groups})


@bp.get("/snapshot")
@describe(responses={200: "every device and its state, and the change log's position"})
def snapshot() -> Response:
    return Response(_agg().snapshot_json(), mimetype="application/json")


@bp.get("/changes")
@describe(query=CHANGES_QUERY, responses={200: "the changes since a position", 400: "bad argument"})
def changes() -> Response:
    """Long poll: ``?since=SEQ&epoch=E&wait=S&limit=N``."""
    agg = _agg()
    since = int_arg("since", 0, 0, 2**62)
    wait = int_arg("wait", 0, 0, 30)
    limit = int_arg("limit", 10_000, 1, 100_000)
    epoch = request.args.get("epoch")
    if epoch is not None and epoch != agg.changes.epoch:
        return json_response({"epoch": agg.changes.epoch, "seq": agg.changes.seq,
                              "resync": True, "changes": []})
    seq, resync, items = agg.changes.since_json(since, limit=limit, wait=wait)
    # The log keeps each change as its JSON: the page is those joined, nothing encoded again.
    head = to_json({"epoch": agg.changes.epoch, "seq": seq, "resync": resync})
    return Response(b"".join((head[:-1], b',"changes":[', b",".join(items), b"]}")),
                    mimetype="application/json")


@bp.get("/changes/devices")
@describe(query={"since": int, "until": int, "epoch": str},
          responses={200: "the devices changed in a range of the log", 400: "bad argument"})
def changed_devices() -> Response:
    """``?since=SEQ&until=SEQ&epoch=E``: the devices with a change after ``since`` up to
    ``until`` and the newest 1,000 events, errors and command results among those changes
    (``notes``), for the dashboard's feed when a browser reconnects with its Last-Event-ID; from
    memory or the durable log. ``complete: false`` when the log no longer holds the range (or
    the epoch is another): the browser reloads."""
    agg = _agg()
    since = int_arg("since", 0, 0, 2**62)
    until = int_arg("until", 2**62, 0, 2**62)
    epoch = request.args.get("epoch")
    found = None
    if epoch is None or epoch == agg.changes.epoch:
        found = agg.changes.changed_between(since, until)
    devices, notes = found if found is not None else ([], [])
    head = to_json({"epoch": agg.changes.epoch, "since": since, "until": until,
                    "complete": found is not None, "devices": devices})
    # The notes are kept as their JSON: joined as they are, as ``/changes`` does.
    return Response(b"".join((head[:-1], b',"notes":[', b",".join(notes), b"]}")),
                    mimetype="application/json")


@bp.get("/cursors/<reader>")
@describe(responses={200: "the reader's committed position and the log's head"})
def cursor(reader: str) -> Response:
    """A reader's committed position in the durable log (``seq`` null when it has none) and
    the log's newest position (``head``), where a new reader starts."""
    agg = _agg()
    seq = agg.outbox.cursor(reader) if agg.outbox is not None else None
    return json_response({"reader": reader, "epoch": agg.changes.epoch, "seq": seq,
                          "head": agg.changes.seq, "durable": agg.changes.durable})


@bp.post("/cursors/<reader>")
@describe(body=CursorCommit, responses={200: "committed", 400: "not JSON", 409: "another epoch",
                                        422: "invalid body", 503: "no durable log, or the "
                                        "disk refused the position"})
def commit_cursor(reader: str) -> Response:
    """Commit a reader's position: ``{"epoch": E, "seq": N}``, everything up to ``N``
    delivered. 409 when ``epoch`` is not this log's (the reader must resync)."""
    agg = _agg()
    body = parse_body(CursorCommit)
    if body.epoch != agg.changes.epoch:
        raise ApiError(409, "epoch_changed", f"the log's epoch is {agg.changes.epoch}, not "
                       f"{body.epoch}: resync from the snapshot")
    if agg.outbox is None:
        raise ApiError(503, "no_outbox", "this aggregator keeps no durable log")
    try:
        agg.outbox.commit(reader, body.seq)
    except sqlite3.Error as exc:
        raise ApiError(503, "outbox_unavailable", f"cannot store the position: {exc}") from exc
    return json_response({"reader": reader, "seq": body.seq})


@bp.get("/cache/stats")
@describe(responses={200: "the cache's figures"})
def cache_stats() -> Response:
    return json_response(_agg().cache_stats())


@bp.post("/cache/clear")
@describe(responses={200: "how many entries were dropped"})
def cache_clear() -> Response:
    return json_response({"cleared": _agg().cache_clear()})


@bp.get("/errors")
@describe(responses={200: "recent errors and counters"})
def errors() -> Response:
    agg = _agg()
    return json_response({"errors": list(agg.errors), "counters": agg.counters})
