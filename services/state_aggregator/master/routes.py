"""The aggregator's internal REST for master control, under ``/master/...`` on 127.0.0.1: thin
routes over ``MasterService`` (sensor side) and ``MasterAdmin`` (management). The ``web`` program
serves these to the LAN as ``/api/sensor-master/...`` (with the API key on management); the paths
after the prefix are the same, so forwarding is a prefix swap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from flask import Blueprint, Response, current_app, request
from pydantic import Field

from shared.errors import TopicError
from shared.master_models import (
    CommandAck,
    CommandCreate,
    CommandState,
    DataUpload,
    GroupIn,
    GroupPatch,
    Heartbeat,
    MasterInstanceIn,
    MasterInstancePatch,
    Rollback,
    SensorPatch,
    SensorRegister,
    TemplateIn,
    TemplatePatch,
)
from shared.openapi import describe
from shared.settings import Settings
from shared.topics import validate_id
from shared.web import ApiError, error_response, int_arg, json_response, parse_body

from .admin import MasterAdmin
from .db import Database
from .errors import MasterError
from .service import DeviceSink, MasterOptions, MasterService
from .tokens import SensorTokens, TokenOptions

bp = Blueprint("master", __name__, url_prefix="/master")
# A batch of 10,000 readings after a long offline period fits; a 10 MB body is refused unread.
MAX_BODY = 4 * 1024 * 1024
# Row ids are SQLite INTEGERs: a larger one in a path is no row (404), never an OverflowError.
# (Checked in the view: werkzeug's int(max=...) answers 405 when two methods share the rule.)
ROW_ID_MAX = 2**63 - 1
COMMAND_STATES: tuple[CommandState, ...] = ("pending", "sent", "delivered", "completed", "failed",
                                            "expired", "canceled")
BAD_BODY = {400: "not JSON, or a bad id", 413: "body too large", 422: "invalid body"}
FEED_QUERY = {"since": Annotated[int, Field(ge=0)], "epoch": str,
              "wait": Annotated[int, Field(ge=0, le=30)], "limit": Annotated[int, Field(ge=1, le=20_000)]}


@dataclass(frozen=True, slots=True)
class MasterControl:
    service: MasterService
    admin: MasterAdmin
    tokens: SensorTokens | None = None  # None: default options (see token_routes.py)


def build_master(settings: Settings, sink: DeviceSink) -> MasterControl:
    service = MasterService(
        Database(settings.master_db_path), sink=sink,
        options=MasterOptions(default_interval=settings.master_check_in_interval,
                              max_open_commands=settings.master_max_commands,
                              command_ttl=settings.master_command_ttl))
    tokens = SensorTokens(service.db, options=TokenOptions(ttl=settings.sensor_token_ttl,
                                                           overlap=settings.sensor_token_overlap))
    return MasterControl(service, MasterAdmin(service), tokens)


def _master() -> MasterControl:
    found: MasterControl | None = current_app.extensions.get("master")
    if found is None:
        raise ApiError(503, "master_disabled", "master control is not running in this aggregator")
    return found


def _id(value: str, what: str = "sensor_id") -> str:
    try:
        return validate_id(value, what)
    except TopicError as exc:
        raise ApiError(400, "invalid_id", str(exc)) from exc


def _row(value: int, what: str) -> int:
    if value > ROW_ID_MAX:
        raise ApiError(404, "not_found", f"no {what} {value}")
    return value


def _int_arg(name: str, default: int | None, lo: int, hi: int) -> int | None:
    if default is None and name not in request.args:
        return None
    return int_arg(name, lo if default is None else default, lo, hi, strict=True)


@bp.before_request
def _limit_body() -> Response | None:
    length = request.content_length
    if length is not None and length > MAX_BODY:
        return error_response(413, "body_too_large",
                              f"the body is {length} bytes; at most {MAX_BODY} are accepted")
    return None


@bp.errorhandler(MasterError)
def _error(exc: MasterError) -> Response:
    return error_response(exc.status, exc.error, exc.message)


def ok(obj: Any, status: int = 200) -> Response:
    return json_response(obj, status)


# --- sensor side ------------------------------------------------------------------------------


@bp.post("/register")
@describe(body=SensorRegister, responses={200: "registered", **BAD_BODY, 409: "refused"})
def register() -> Response:
    return ok(_master().service.register(parse_body(SensorRegister)))


@bp.get("/config/<sensor_id>")
@describe(query={"version": Annotated[int, Field(ge=1)], "if_none_match": str},
          responses={200: "the sensor's config", 304: "the sensor has it already",
                     400: "bad id or argument", 404: "unknown sensor"})
def config(sensor_id: str) -> Response:
    """``If-None-Match`` (or ``?if_none_match=``, for a forwarder whose client sends no
    headers) naming the current hash → 304."""
    answer = _master().service.config(
        _id(sensor_id), version=_int_arg("version", None, 1, 2**62),
        if_none_match=request.headers.get("If-None-Match") or request.args.get("if_none_match"))
    etag = f'"{answer.body["config_hash"]}"'
    if answer.not_modified:
        return Response(status=304, headers={"ETag": etag})
    resp = ok(answer.body)
    resp.headers["ETag"] = etag
    return resp


@bp.post("/heartbeat")
@describe(body=Heartbeat, query={"include_config": Literal["1", "true", "0", "false"]},
          responses={200: "acknowledged", **BAD_BODY, 404: "unknown sensor"})
def heartbeat() -> Response:
    include = request.args.get("include_config") in ("1", "true")
    return ok(_master().service.heartbeat(parse_body(Heartbeat), include_config=include))


@bp.post("/commands/<command_id>/ack")
@describe(body=CommandAck, responses={200: "acknowledged", **BAD_BODY, 404: "unknown command",
                                  409: "not open"})
def ack(command_id: str) -> Response:
    return ok(_master().service.ack(_id(command_id, "command_id"), parse_body(CommandAck)))


@bp.post("/data")
@describe(body=DataUpload, responses={200: "stored", **BAD_BODY, 404: "unknown sensor"})
def data() -> Response:
    return ok(_master().service.data(parse_body(DataUpload)))


# --- for the MQTT side: what to publish unasked ------------------------------------------------


@bp.get("/changes")
@describe(query=FEED_QUERY, responses={200: "the changes since a position", 400: "bad argument"})
def changes() -> Response:
    """Long poll of config changes and queued commands: ``?since=SEQ&epoch=E&wait=S&limit=N``."""
    feed = _master().service.feed
    since = _int_arg("since", 0, 0, 2**62) or 0
    wait = _int_arg("wait", 0, 0, 30) or 0
    limit = _int_arg("limit", 5_000, 1, 20_000) or 5_000
    epoch = request.args.get("epoch")
    if epoch is not None and epoch != feed.epoch:
        return ok({"epoch": feed.epoch, "seq": feed.seq, "resync": True, "changes": []})
    seq, resync, items = feed.since(since, limit=limit, wait=wait)
    return ok({"epoch": feed.epoch, "seq": seq, "resync": resync, "changes": items})


@bp.get("/sensor-configs")
@describe(query={"sensor_id": str}, responses={200: "the configs", 400: "bad id or too many"})
def sensor_configs() -> Response:
    """Every sensor's current ``sensors/{s}/config`` payload (or those of ``?sensor_id=a,b``, at
    most 500), and the feed position it is valid at (read the position first: a change in
    between is then seen twice, never missed)."""
    service = _master().service
    epoch, seq = service.feed.epoch, service.feed.seq
    wanted = request.args.get("sensor_id")
    ids = None if wanted is None else [_id(s) for s in wanted.split(",")]
    if ids is not None and len(ids) > 500:
        raise ApiError(400, "invalid_argument", "at most 500 sensor ids per request")
    return ok({"epoch": epoch, "seq": seq, "configs": service.current_configs(ids)})


@bp.post("/sensors/<sensor_id>/deliver")
@describe(responses={200: "the open commands, now sent", 400: "bad id"})
def deliver(sensor_id: str) -> Response:
    """The sensor's open commands, marked sent: what the MQTT side publishes on
    ``sensors/{s}/commands``."""
    return ok({"sensor_id": sensor_id, "commands": _master().service.pending_commands(_id(sensor_id))})


# --- management: master instances -------------------------------------------------------------


@bp.get("/instances")
@describe(responses={200: "the master instances"})
def instances() -> Response:
    return ok({"instances": _master().admin.instances()})


@bp.post("/instances")
@describe(body=MasterInstanceIn, responses={201: "created", **BAD_BODY, 409: "exists"})
def create_instance() -> Response:
    return ok(_master().admin.create_instance(parse_body(MasterInstanceIn)), 201)


@bp.patch("/instances/<int:master_id>")
@describe(body=MasterInstancePatch, responses={200: "updated", **BAD_BODY, 404: "unknown"})
def update_instance(master_id: int) -> Response:
    return ok(_master().admin.update_instance(_row(master_id, "master instance"),
                                              parse_body(MasterInstancePatch)))


@bp.delete("/instances/<int:master_id>")
@describe(responses={200: "deleted", 404: "unknown", 409: "in use"})
def delete_instance(master_id: int) -> Response:
    return ok(_master().admin.delete_instance(_row(master_id, "master instance")))


# --- management: sensors ----------------------------------------------------------------------


@bp.get("/sensors")
@describe(query={"status": Literal["online", "stale", "offline", "pending"], "sensor_type": str},
          responses={200: "the sensors", 400: "bad argument"})
def sensors() -> Response:
    status = request.args.get("status")
    if status is not None and status not in ("online", "stale", "offline", "pending"):
        raise ApiError(400, "invalid_argument",
                       f"status must be online, stale, offline or pending, not {status!r}")
    return ok({"sensors": _master().admin.sensors(status=status,
                                                  sensor_type=request.args.get("sensor_type"))})


@bp.get("/sensors/<sensor_id>")
@describe(responses={200: "the sensor", 400: "bad id", 404: "unknown sensor"})
def sensor(sensor_id: str) -> Response:
    return ok(_master().admin.sensor(_id(sensor_id)))


@bp.patch("/sensors/<sensor_id>")
@describe(body=SensorPatch, responses={200: "updated", **BAD_BODY, 404: "unknown sensor"})
def update_sensor(sensor_id: str) -> Response:
    return ok(_master().admin.update_sensor(_id(sensor_id), parse_body(SensorPatch)))


@bp.delete("/sensors/<sensor_id>")
@describe(responses={200: "deleted", 400: "bad id", 404: "unknown sensor"})
def delete_sensor(sensor_id: str) -> Response:
    return ok(_master().admin.delete_sensor(_id(sensor_id)))


@bp.get("/sensors/<sensor_id>/effective-config")
@describe(responses={200: "the config and where each part comes from", 400: "bad id",
                     404: "unknown sensor"})
def effective_config(sensor_id: str) -> Response:
    return ok(_master().admin.explain(_id(sensor_id)))


@bp.get("/sensors/<sensor_id>/config-history")
@describe(query={"limit": Annotated[int, Field(ge=1, le=10_000)]},
          responses={200: "the config versions", 400: "bad id or argument", 404: "unknown sensor"})
def config_history(sensor_id: str) -> Response:
    limit = _int_arg("limit", 100, 1, 10_000) or 100
    return ok({"sensor_id": sensor_id,
               "versions": _master().admin.history(_id(sensor_id), limit=limit)})


@bp.post("/sensors/<sensor_id>/rollback")
@describe(body=Rollback, responses={200: "rolled back", **BAD_BODY, 404: "unknown sensor or version"})
def rollback(sensor_id: str) -> Response:
    return ok(_master().admin.rollback(_id(sensor_id), parse_body(Rollback)))


# --- management: config templates -------------------------------------------------------------


@bp.get("/configs")
@describe(responses={200: "the config templates"})
def configs() -> Response:
    return ok({"configs": _master().admin.templates()})


@bp.post("/configs")
@describe(body=TemplateIn, responses={201: "created", **BAD_BODY, 409: "exists"})
def create_config() -> Response:
    return ok(_master().admin.create_template(parse_body(TemplateIn)), 201)


@bp.patch("/configs/<int:template_id>")
@describe(body=TemplatePatch, responses={200: "updated", **BAD_BODY, 404: "unknown", 409: "conflict"})
def update_config(template_id: int) -> Response:
    return ok(_master().admin.update_template(_row(template_id, "template"), parse_body(TemplatePatch)))


@bp.post("/configs/preview")
@describe(body=TemplateIn, responses={200: "the sensors it would change", **BAD_BODY})
def preview_config() -> Response:
    """What ``POST /configs`` with this body would change, changing nothing."""
    return ok(_master().admin.preview_template(parse_body(TemplateIn)))


@bp.post("/configs/<int:template_id>/preview")
@describe(body=TemplatePatch, responses={200: "the sensors it would change", **BAD_BODY,
                                     404: "unknown"})
def preview_config_update(template_id: int) -> Response:
    """What ``PATCH /configs/{id}`` with this body would change, changing nothing."""
    return ok(_master().admin.preview_template(parse_body(TemplatePatch),
                                                      _row(template_id, "template")))


@bp.delete("/configs/<int:template_id>")
@describe(responses={200: "deleted", 404: "unknown", 409: "in use"})
def delete_config(template_id: int) -> Response:
    return ok(_master().admin.delete_template(_row(template_id, "template")))


# --- management: commands ---------------------------------------------------------------------


@bp.post("/command")
@describe(body=CommandCreate, responses={201: "queued", **BAD_BODY, 404: "unknown target",
                                     409: "too many open commands"})
def create_command() -> Response:
    return ok(_master().admin.create_command(parse_body(CommandCreate)), 201)


@bp.get("/commands")
@describe(query={"sensor_id": str, "status": CommandState,
                 "limit": Annotated[int, Field(ge=1, le=10_000)]},
          responses={200: "the commands", 400: "bad argument"})
def commands() -> Response:
    sensor_id = request.args.get("sensor_id")
    status = request.args.get("status")
    if status is not None and status not in COMMAND_STATES:
        raise ApiError(400, "invalid_argument",
                       f"status must be one of {', '.join(COMMAND_STATES)}, not {status!r}")
    limit = _int_arg("limit", 500, 1, 10_000) or 500
    return ok({"commands": _master().admin.commands(
        sensor_id=None if sensor_id is None else _id(sensor_id), status=status, limit=limit)})


@bp.get("/commands/<command_id>")
@describe(responses={200: "the command", 400: "bad id", 404: "unknown command"})
def command(command_id: str) -> Response:
    return ok(_master().admin.command(_id(command_id, "command_id")))


@bp.post("/commands/<command_id>/cancel")
@describe(responses={200: "canceled", 400: "bad id", 404: "unknown command", 409: "not open"})
def cancel_command(command_id: str) -> Response:
    return ok(_master().admin.cancel_command(_id(command_id, "command_id")))


# --- management: groups -----------------------------------------------------------------------


@bp.get("/groups")
@describe(responses={200: "the groups"})
def groups() -> Response:
    return ok({"groups": _master().admin.groups()})


@bp.post("/groups")
@describe(body=GroupIn, responses={201: "created", **BAD_BODY, 409: "exists"})
def create_group() -> Response:
    return ok(_master().admin.create_group(parse_body(GroupIn)), 201)


@bp.get("/groups/<name>")
@describe(responses={200: "the group", 400: "bad name", 404: "unknown group"})
def group(name: str) -> Response:
    return ok(_master().admin.group(_id(name, "group_name")))


@bp.patch("/groups/<name>")
@describe(body=GroupPatch, responses={200: "updated", **BAD_BODY, 404: "unknown group"})
def update_group(name: str) -> Response:
    return ok(_master().admin.update_group(_id(name, "group_name"), parse_body(GroupPatch)))


@bp.delete("/groups/<name>")
@describe(responses={200: "deleted", 400: "bad name", 404: "unknown group"})
def delete_group(name: str) -> Response:
    return ok(_master().admin.delete_group(_id(name, "group_name")))


@bp.put("/groups/<name>/sensors/<sensor_id>")
@describe(responses={200: "a member now", 400: "bad name or id", 404: "unknown group or sensor"})
def add_member(name: str, sensor_id: str) -> Response:
    return ok(_master().admin.set_member(_id(name, "group_name"), _id(sensor_id), member=True))


@bp.delete("/groups/<name>/sensors/<sensor_id>")
@describe(responses={200: "no member now", 400: "bad name or id",
                     404: "unknown group or sensor"})
def remove_member(name: str, sensor_id: str) -> Response:
    return ok(_master().admin.set_member(_id(name, "group_name"), _id(sensor_id), member=False))
