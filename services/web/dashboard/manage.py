"""The master-control changes the dashboard makes: create and edit config templates (with a
preview of the sensors a save would change and their new config hash), queue and cancel sensor
commands, create, change and delete groups. Each needs the management key and the form's CSRF
token; the JSON is validated here (the shared pydantic models) before anything reaches the
aggregator, whose own refusals come back to the page as they are. Plain HTML forms: each answers
with a redirect to the master page and a one-line outcome, so a reload never sends a form
twice."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import Response, redirect, render_template, request
from pydantic import ValidationError

from shared.errors import ServiceError
from shared.jsonutil import JSONDecodeError, loads
from shared.master_models import CommandCreate, GroupIn, GroupPatch, TemplateIn
from shared.openapi import describe
from shared.topics import ID_RE
from shared.web import validation_message

from .routes import GATE, _dash, bp

TARGETS = ("sensor_id", "group", "sensor_type")
TEMPLATE_FORM = {"type": "object", "properties": {
    name: {"type": "string"} for name in ("template_id", "config_name", "applies_to", "target",
                                          "config_data", "priority", "is_active", "csrf_token")}}
GROUP_FORM = {"type": "object", "properties": {
    name: {"type": "string"} for name in ("group_name", "description", "sensors", "csrf_token")}}
COMMAND_FORM = {"type": "object", "properties": {
    name: {"type": "string"} for name in ("sensor_id", "command_type", "command_data", "priority",
                                          "csrf_token")}}


def _back(message: str, *, ok: bool, page: str = "/ui/master") -> Response:
    query = urlencode({"ok" if ok else "problem": message})
    return redirect(f"{page}?{query}#outcome")  # type: ignore[return-value]


def _json_object(field: str) -> dict[str, Any]:
    raw = request.form.get(field, "").strip() or "{}"
    try:
        value = loads(raw)
    except JSONDecodeError as exc:
        raise ValueError(f"{field} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{field} must be a JSON object")
    return value


def _call(method: str, path: str, body: dict[str, Any] | None) -> tuple[bool, Any]:
    try:
        return True, _dash().aggregator.request(method, path, body=body, timeout=10.0)
    except ServiceError as exc:
        message = exc.body.get("message") if isinstance(exc.body, dict) else None
        return False, message or "the hub's aggregator did not answer; try again"


def _template_body() -> dict[str, Any]:
    """The form as a template (``TemplateIn`` checks it whole: one target, a JSON object)."""
    target = request.form.get("applies_to", "")
    if target not in TARGETS:
        raise ValueError("applies_to must be sensor_id, group or sensor_type")
    body: dict[str, Any] = {t: None for t in TARGETS}
    body.update(config_name=request.form.get("config_name", "").strip(),
                config_data=_json_object("config_data"),
                priority=int(request.form.get("priority") or 100),
                is_active=request.form.get("is_active") == "on")
    body[target] = request.form.get("target", "").strip()
    TemplateIn.model_validate(body)
    return body


@bp.post("/ui/master/templates")
@describe(form=TEMPLATE_FORM, responses={302: "back to the master page, with the outcome", **GATE})
def save_template() -> Response:
    """A new template, or (``template_id`` given) a new version of that one."""
    _dash().keys.require_management()
    try:
        raw_id = request.form.get("template_id", "").strip()
        template_id = int(raw_id) if raw_id else None
        body = _template_body()
    except ValidationError as exc:
        return _back(validation_message(exc), ok=False)
    except ValueError as exc:
        return _back(str(exc), ok=False)
    if template_id is None:
        ok, answer = _call("POST", "/master/configs", {k: v for k, v in body.items()
                                                        if v is not None})
    else:
        ok, answer = _call("PATCH", f"/master/configs/{template_id}", body)
    if not ok:
        return _back(str(answer), ok=False)
    return _back(f"template {body['config_name']!r} saved as #{answer.get('id')}; "
                 f"{answer.get('sensors_changed', 0)} sensor(s) get a new config", ok=True)


@bp.post("/ui/master/templates/preview")
@describe(form=TEMPLATE_FORM, produces="text/html",
          responses={200: "an HTML fragment: the sensors the save would change, their new hash",
                     422: "the template is not valid (the fragment says why)", **GATE})
def preview_template() -> tuple[str, int]:
    """The sensors the form's template would give a new config, and their new hash: an HTML
    fragment the editor shows before the save (the aggregator computes it with the saving code,
    in a transaction it rolls back)."""
    _dash().keys.require_management()
    problem, answer = None, None
    try:
        raw_id = request.form.get("template_id", "").strip()
        template_id = int(raw_id) if raw_id else None
        body = _template_body()
    except ValidationError as exc:
        problem = validation_message(exc)
    except ValueError as exc:
        problem = str(exc)
    else:
        path = ("/master/configs/preview" if template_id is None
                else f"/master/configs/{template_id}/preview")
        ok, answer = _call("POST", path, body if template_id is not None
                           else {k: v for k, v in body.items() if v is not None})
        if not ok:
            problem, answer = str(answer), None
    return render_template("dashboard/preview.html", preview=answer,
                           problem=problem), 200 if problem is None else 422


@bp.post("/ui/master/command")
@describe(form=COMMAND_FORM, responses={302: "back to the master page, with the outcome", **GATE})
def queue_command() -> Response:
    _dash().keys.require_management()
    try:
        cmd = CommandCreate.model_validate({
            "sensor_id": request.form.get("sensor_id", "").strip(),
            "command_type": request.form.get("command_type", "").strip(),
            "command_data": _json_object("command_data"),
            "priority": int(request.form.get("priority") or 5)})
    except ValidationError as exc:
        return _back(validation_message(exc), ok=False)
    except ValueError as exc:
        return _back(str(exc), ok=False)
    ok, answer = _call("POST", "/master/command", cmd.model_dump(exclude_none=True))
    if not ok:
        return _back(str(answer), ok=False)
    return _back(f"command {answer.get('command_id')} queued for {cmd.sensor_id}", ok=True)


@bp.post("/ui/master/commands/<command_id>/cancel")
@describe(responses={302: "back to the master page, with the outcome", **GATE})
def cancel_command(command_id: str) -> Response:
    _dash().keys.require_management()
    if not ID_RE.fullmatch(command_id):
        return _back("no such command", ok=False)
    ok, answer = _call("POST", f"/master/commands/{command_id}/cancel", {})
    return _back(f"command {command_id} canceled" if ok else str(answer), ok=ok)


# --- groups ----------------------------------------------------------------------------------------


def _members() -> list[str]:
    """The form's sensor ids: separated by commas, spaces or lines."""
    return [m for m in request.form.get("sensors", "").replace(",", " ").split() if m]


@bp.post("/ui/master/groups")
@describe(form=GROUP_FORM, responses={302: "back to the master page, with the outcome", **GATE})
def create_group() -> Response:
    _dash().keys.require_management()
    try:
        group = GroupIn.model_validate({"group_name": request.form.get("group_name", "").strip(),
                                        "description": request.form.get("description", ""),
                                        "sensors": _members()})
    except ValidationError as exc:
        return _back(validation_message(exc), ok=False)
    ok, answer = _call("POST", "/master/groups", group.model_dump(exclude_none=True))
    return _back(f"group {group.group_name!r} created with {len(group.sensors)} sensor(s)"
                 if ok else str(answer), ok=ok)


@bp.post("/ui/master/groups/<name>")
@describe(form=GROUP_FORM, responses={302: "back to the master page, with the outcome", **GATE})
def change_group(name: str) -> Response:
    """The group's members (the whole list, as the form shows it) and description."""
    _dash().keys.require_management()
    if not ID_RE.fullmatch(name):
        return _back("no such group", ok=False)
    try:
        patch = GroupPatch.model_validate({"description": request.form.get("description"),
                                           "sensors": _members()})
    except ValidationError as exc:
        return _back(validation_message(exc), ok=False)
    ok, answer = _call("PATCH", f"/master/groups/{name}", patch.model_dump(exclude_none=True))
    return _back(f"group {name!r} now has {len(answer.get('sensors', []))} sensor(s)"
                 if ok else str(answer), ok=ok)


@bp.post("/ui/master/groups/<name>/delete")
@describe(responses={302: "back to the master page, with the outcome", **GATE})
def delete_group(name: str) -> Response:
    _dash().keys.require_management()
    if not ID_RE.fullmatch(name):
        return _back("no such group", ok=False)
    ok, answer = _call("DELETE", f"/master/groups/{name}", None)
    return _back(f"group {name!r} deleted; {answer.get('sensors_changed', 0)} sensor(s) get a "
                 f"new config" if ok else str(answer), ok=ok)
