"""The dashboard's page of one master-control sensor: its effective config and why (which
template won, what every other matching template lost to, a rollback pin), its config history
with a rollback to any version and the release of a pin, its groups, and its commands. Changes
need the management key and the form's CSRF token, as every other change of the dashboard."""

from __future__ import annotations

from flask import Response, render_template, request

from shared.openapi import describe
from shared.topics import ID_RE
from shared.web import ApiError

from .manage import _back, _call
from .routes import GATE, _aggregator, _dash, bp

# A config-history entry: these fields, then the document the sensor received.
VERSION_FIELDS = ("sensor_id", "config_version", "config_hash", "template_id", "reason",
                  "created_at")


def _sensor_id(raw: str) -> str:
    if not ID_RE.fullmatch(raw):
        raise ApiError(404, "not_found", "no such sensor")
    return raw


def _page(sensor_id: str) -> str:
    return f"/ui/master/sensor/{sensor_id}"


@bp.get("/ui/master/sensor/<sensor_id>")
@describe(query={"ok": str, "problem": str}, produces="text/html",
          responses={200: "the sensor's page", 302: "to the login page", 404: "no such sensor",
                     **GATE})
def page_sensor(sensor_id: str) -> str:
    dash = _dash()
    sensor_id = _sensor_id(sensor_id)
    sensor = _aggregator(dash, f"/master/sensors/{sensor_id}")
    if not sensor:
        raise ApiError(404, "not_found", f"no sensor {sensor_id!r} in master control")
    groups = [str(g["group_name"]) for g in _aggregator(dash, "/master/groups").get("groups", [])
              if isinstance(g, dict) and "group_name" in g]
    why = _aggregator(dash, f"/master/sensors/{sensor_id}/effective-config")
    member_of = list(why.get("groups") or [])
    versions = _aggregator(dash, f"/master/sensors/{sensor_id}/config-history",
                           params={"limit": 50}).get("versions", [])
    # What the sensor receives is its newest version (a rollback pins an older document there);
    # the explanation's own document is what its templates give.
    current = ({k: v for k, v in versions[0].items() if k not in VERSION_FIELDS}
               if versions else None)
    return render_template(
        "dashboard/sensor.html", sensor=sensor, why=why, member_of=member_of,
        others=[g for g in groups if g not in member_of], versions=versions,
        current_document=current,
        commands=_aggregator(dash, "/master/commands",
                             params={"sensor_id": sensor_id, "limit": 20}).get("commands", []))


@bp.post("/ui/master/sensor/<sensor_id>/rollback")
@describe(form={"type": "object", "properties": {"version": {"type": "string"},
                                                 "csrf_token": {"type": "string"}}},
          responses={302: "back to the sensor's page, with the outcome", 404: "bad sensor id",
                     **GATE})
def rollback(sensor_id: str) -> Response:
    """Pin the sensor to an earlier version's config (a new version with the old document)."""
    _dash().keys.require_management()
    sensor_id = _sensor_id(sensor_id)
    raw = request.form.get("version", "")
    if not raw.isdigit() or int(raw) < 1:
        return _back("version must be a version number", ok=False, page=_page(sensor_id))
    ok, answer = _call("POST", f"/master/sensors/{sensor_id}/rollback", {"version": int(raw)})
    return _back(f"rolled back to version {raw}: now version {answer.get('config_version')}, "
                 f"pinned until released" if ok else str(answer), ok=ok, page=_page(sensor_id))


@bp.post("/ui/master/sensor/<sensor_id>/unpin")
@describe(responses={302: "back to the sensor's page, with the outcome", 404: "bad sensor id",
                     **GATE})
def unpin(sensor_id: str) -> Response:
    """Release a rollback's pin: the sensor follows its templates again."""
    _dash().keys.require_management()
    sensor_id = _sensor_id(sensor_id)
    ok, answer = _call("PATCH", f"/master/sensors/{sensor_id}", {"unpin": True})
    return _back("released: the sensor follows its templates again" if ok else str(answer),
                 ok=ok, page=_page(sensor_id))


@bp.post("/ui/master/sensor/<sensor_id>/groups")
@describe(form={"type": "object", "properties": {"group": {"type": "string"},
                                                 "member": {"type": "string"},
                                                 "csrf_token": {"type": "string"}}},
          responses={302: "back to the sensor's page, with the outcome", 404: "bad sensor id",
                     **GATE})
def membership(sensor_id: str) -> Response:
    """Add the sensor to a group (``member=on``) or take it out."""
    _dash().keys.require_management()
    sensor_id = _sensor_id(sensor_id)
    group = request.form.get("group", "")
    if not ID_RE.fullmatch(group):
        return _back("choose a group", ok=False, page=_page(sensor_id))
    member = request.form.get("member") == "on"
    ok, answer = _call("PUT" if member else "DELETE",
                       f"/master/groups/{group}/sensors/{sensor_id}", None)
    return _back((f"added to group {group!r}" if member else f"taken out of group {group!r}")
                 if ok else str(answer), ok=ok, page=_page(sensor_id))
