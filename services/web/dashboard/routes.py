"""The dashboard's pages on the LAN port: thin routes over the feed (live device rows), the
aggregator's internal REST (commands, master control) and the hub's run directory.

Paths live at ``/`` and under ``/ui/`` only: the LAN port must not answer any path of the
internal services (``/devices``, ``/master/...``; the web program's e2e test checks every one).

Every SSE stream holds one gunicorn thread while it is open, so streams are capped
(``DASHBOARD_STREAMS``, below ``WEB_THREADS``: past the cap, 503 and the page retries later) and
each lasts at most ``STREAM_S`` before the browser reconnects with ``Last-Event-ID``. The threads
the cap leaves free serve the probe and master API.
"""

from __future__ import annotations

import gzip
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from pydantic import ValidationError

from shared.errors import ServiceError
from shared.jsonutil import JSONDecodeError, dumps, loads
from shared.models import CommandIn, CommandRequest
from shared.openapi import describe
from shared.rest import RestClient
from shared.topics import ID_RE
from shared.web import ApiError, json_response, validation_message

from . import hub, series
from .auth import Keys
from .feed import RESET, Feed

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/ui/static")

# Each change needs the session's CSRF token (this header, or the form field) and, for management,
# a session logged in with the key; without a dashboard (an API-only app) every page is 503.
LOGIN_FORM = {"type": "object", "properties": {"key": {"type": "string"},
                                                "csrf_token": {"type": "string"}}}
GATE = {401: "the management key is needed", 403: "CSRF token missing or stale",
        503: "dashboard off, or the aggregator not answering"}
COMMAND_FORM = {"type": "object", "properties": {"values": {"type": "string"},
                                                  "timeout": {"type": "string"}}}
STREAM_S = 300.0  # a stream ends after this; the browser reconnects with Last-Event-ID
KEEPALIVE_S = 10.0  # a comment line this often: proxies stay open, a closed tab is noticed


@dataclass
class Dashboard:
    feed: Feed
    keys: Keys
    aggregator: RestClient
    run_dir: Path
    streams: int = 4
    command_timeout_max: float = 60.0
    _slots: threading.BoundedSemaphore = field(init=False)

    def __post_init__(self) -> None:
        self._slots = threading.BoundedSemaphore(self.streams)

    def take_slot(self) -> bool:
        return self._slots.acquire(blocking=False)

    def free_slot(self) -> None:
        self._slots.release()


def _dash() -> Dashboard:
    found: Dashboard | None = current_app.extensions.get("dashboard")
    if found is None:
        raise ApiError(503, "dashboard_disabled", "the dashboard is not running in this program")
    return found


def _device_id(raw: str) -> str:
    if not ID_RE.fullmatch(raw):
        raise ApiError(404, "not_found", "no such device")
    return raw


@bp.before_request
def _gate() -> Response | None:
    """``DASHBOARD_AUTH=true``: every page but the login (and its assets) needs the key."""
    dash = _dash()
    if not dash.keys.auth_required or dash.keys.logged_in():
        return None
    if request.endpoint in ("dashboard.login", "dashboard.static"):
        return None
    if request.endpoint == "dashboard.page_devices" or request.accept_mimetypes.accept_html:
        return redirect(url_for("dashboard.login", next=request.full_path))  # type: ignore[return-value]
    raise ApiError(401, "key_required", "this dashboard needs the management key")


@bp.after_request
def _compress(response: Response) -> Response:
    """gzip the pages (a 1,000-device table is ~10x smaller), never the event stream."""
    if (response.mimetype != "text/html" or response.direct_passthrough
            or "gzip" not in request.headers.get("Accept-Encoding", "")
            or response.content_length is None or response.content_length < 2048):
        return response
    response.set_data(gzip.compress(response.get_data(), compresslevel=5))
    response.headers["Content-Encoding"] = "gzip"
    response.vary.add("Accept-Encoding")
    return response


@bp.app_context_processor
def _common() -> dict[str, Any]:
    dash: Dashboard | None = current_app.extensions.get("dashboard")
    if dash is None:
        return {}
    return {"logged_in": dash.keys.logged_in(), "csrf_token": dash.keys.csrf_token,
            "management_enabled": dash.keys.management_enabled}


def _synced(dash: Dashboard) -> None:
    if not dash.feed.watch():
        raise ApiError(503, "not_ready", "the hub's aggregator is not answering yet; reload soon")


# --- pages ---------------------------------------------------------------------------------------


@bp.get("/")
@describe(produces="text/html", responses={200: "the devices page", 302: "to the login page",
                                              **GATE})
def page_devices() -> str:
    dash = _dash()
    _synced(dash)
    rows = sorted(dash.feed.all_rows(), key=lambda r: r["device_id"])
    return render_template("dashboard/devices.html", rows=rows, since=dash.feed.position(),
                           sources=sorted({str(r["source"]) for r in rows}))


@bp.get("/ui/device/<device_id>")
@describe(query={"range": str}, produces="text/html",
          responses={200: "the device page", 302: "to the login page", 404: "no such device", **GATE})
def page_device(device_id: str) -> str:
    dash = _dash()
    _synced(dash)
    since = dash.feed.position()
    row = dash.feed.device(_device_id(device_id))
    if row is None:
        raise ApiError(404, "not_found", f"no device {device_id!r}")
    errors = [e for e in _aggregator(dash, "/errors").get("errors", [])
              if e.get("device_id") == device_id][-20:]
    span = request.args.get("range", "1h")
    range_s = series.RANGES_S.get(span, 3600)
    now = time.time()
    stored = series.from_history(_aggregator(
        dash, "/history/readings", params=series.history_query(device_id, range_s, now))
        .get("readings", []))
    live = [(float(ts), vals) for ts, vals in row.pop("series")]
    points = series.merge(stored, live, since=now - range_s)
    chart = dumps(points).decode().replace("</", "<\\/")  # it sits in a <script> element
    return render_template("dashboard/device.html", row=row, since=since, errors=errors,
                           series=chart, stats=series.stats(points),
                           span=span, ranges=list(series.RANGES_S), stored=len(stored),
                           timeout_max=dash.command_timeout_max)


@bp.get("/ui/hub")
@describe(produces="text/html", responses={200: "the hub page", 302: "to the login page", **GATE})
def page_hub() -> str:
    dash = _dash()
    procs, problem = hub.processes(dash.run_dir)
    agg = hub.aggregator(dash.aggregator)
    return render_template("dashboard/hub.html", processes=procs, supervisor_problem=problem,
                           mqtt=hub.mqtt(dash.run_dir), agg=agg, history=hub.history(agg["health"]),
                           feed={"subscribers": len(dash.feed.subscribers),
                                 "streams_max": dash.streams, "applied": dash.feed.applied})


@bp.get("/ui/master")
@describe(query={"ok": str, "problem": str}, produces="text/html",
          responses={200: "the master control page", 302: "to the login page", **GATE})
def page_master() -> str:
    dash = _dash()
    sensors = _aggregator(dash, "/master/sensors").get("sensors", [])
    templates = _aggregator(dash, "/master/configs").get("configs", [])
    commands = _aggregator(dash, "/master/commands", params={"limit": 100}).get("commands", [])
    groups = _aggregator(dash, "/master/groups").get("groups", [])
    return render_template("dashboard/master.html", sensors=sensors, templates=templates,
                           commands=commands, groups=groups)


def _aggregator(dash: Dashboard, path: str, params: dict[str, Any] | None = None) -> Any:
    """A read of the aggregator for a page; a missing part shows as empty, not as a 500."""
    try:
        answer = dash.aggregator.get(path, params=params, timeout=5.0)
    except ServiceError as exc:
        if exc.status in (404, 503):  # master control or history not running in this aggregator
            return {}
        raise ApiError(503, "not_ready", "the hub's aggregator is not answering; reload soon") \
            from exc
    return answer if isinstance(answer, dict) else {}


# --- changes -------------------------------------------------------------------------------------


@bp.post("/ui/device/<device_id>/command")
@describe(body=CommandIn, form=COMMAND_FORM,
          responses={200: "the command's result", 404: "no such device", 422: "not a command",
                     **GATE})
def command(device_id: str) -> Response:
    """``{values, timeout?: ms}`` → the command's final result, through the aggregator's
    command route (the path an MQTT ``cmd`` takes from the bridge)."""
    dash = _dash()
    dash.keys.require_management()
    device_id = _device_id(device_id)
    try:
        body = loads(request.get_data()) if request.is_json else {
            "values": loads(request.form.get("values") or "{}"),
            "timeout": int(request.form["timeout"]) if request.form.get("timeout") else None}
        cmd = CommandIn.model_validate(body)
    except (JSONDecodeError, ValueError) as exc:
        raise ApiError(422, "invalid_body", f"values must be a JSON object: {exc}") from exc
    except ValidationError as exc:
        raise ApiError(422, "invalid_body", validation_message(exc)) from exc
    timeout_s = (cmd.timeout or 5000) / 1000
    if timeout_s > dash.command_timeout_max:
        return json_response({"cmd_id": None, "status": "rejected",
                              "error": f"timeout above COMMAND_TIMEOUT_MAX "
                                       f"({dash.command_timeout_max:g} s)"})
    cmd_id = cmd.id or f"ui-{uuid.uuid4().hex[:12]}"
    request_ = CommandRequest(cmd_id=cmd_id, values=cmd.values, timeout_s=timeout_s)
    try:
        result = dash.aggregator.post(f"/device/{device_id}/command", request_.model_dump(),
                                      timeout=timeout_s + 6.0)
    except ServiceError as exc:
        if exc.status == 404:
            raise ApiError(404, "not_found", f"no device {device_id!r}") from exc
        result = {"status": "error", "error": "the hub did not answer the command in time"}
    return json_response({"cmd_id": cmd_id, **result})


@bp.route("/ui/login", methods=["GET", "POST"])
@describe(form=LOGIN_FORM, query={"next": str}, produces="text/html",
          responses={200: "the login page", 302: "logged in", 401: "wrong key", 403: "stale form",
                     503: "dashboard off"})
def login() -> Response | str:
    dash = _dash()
    target = request.values.get("next") or "/"
    if not target.startswith("/") or target.startswith("//"):
        target = "/"  # only our own pages: no open redirect
    problem = None
    if request.method == "POST":
        dash.keys.check_csrf()
        if dash.keys.check(request.form.get("key", "")):
            dash.keys.log_in()
            return redirect(target)  # type: ignore[return-value]
        problem = ("management is disabled: MASTER_API_KEY is not set on this hub"
                   if not dash.keys.management_enabled else "that is not the management key")
    return render_template("dashboard/login.html", next=target, problem=problem), \
        401 if problem else 200  # type: ignore[return-value]


@bp.post("/ui/logout")
@describe(form={"type": "object", "properties": {"csrf_token": {"type": "string"}}},
          body_required=False, responses={302: "logged out", **GATE})
def logout() -> Response:
    dash = _dash()
    dash.keys.check_csrf()
    dash.keys.log_out()
    return redirect("/")  # type: ignore[return-value]


# --- the live stream -----------------------------------------------------------------------------


@bp.get("/ui/events")
@describe(query={"device": str, "since": str}, produces="text/event-stream",
          responses={200: "the live stream (ends after STREAM_S)", 404: "no such device",
                     **GATE})
def events() -> Response:
    """Server-Sent Events: ``devices`` messages with the changed rows (each device at most once a
    second), ``reset`` when the page must reload. ``?since=`` is the position the page was
    rendered at; a reconnect's ``Last-Event-ID`` wins over it."""
    dash = _dash()
    device = request.args.get("device")
    if device is not None:
        _device_id(device)
    if not dash.take_slot():
        return Response("too many live views at once; retrying\n", status=503,
                        headers={"Retry-After": "10"}, mimetype="text/plain")
    sub = dash.feed.subscribe(request.headers.get("Last-Event-ID") or request.args.get("since"),
                              device=device)

    def close() -> None:
        dash.feed.unsubscribe(sub)
        dash.free_slot()

    response = Response(_stream(dash, sub), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    response.call_on_close(close)
    return response


def _stream(dash: Dashboard, sub: Any) -> Iterator[bytes]:
    yield b"retry: 2000\n\n"
    clock = sub.clock
    end = clock() + STREAM_S
    while clock() < end:
        due = sub.take(min(KEEPALIVE_S, max(0.0, end - clock())))
        if due == RESET:
            yield b"event: reset\ndata: {}\n\n"
            return
        if not due:
            yield b": keep-alive\n\n"
            continue
        position, rows = dash.feed.rows_for(list(due))
        yield (b"id: " + position.encode() + b"\nevent: devices\ndata: "
               + dumps({"devices": rows}) + b"\n\n")
