"""The dashboard's probes page: the ESP32 probes the HTTP poller discovered (mDNS) or was given,
with what its provisioner knows of each, the probe devices in the registry, a button that
provisions one now (management key and CSRF), and the probe CSV log to download. It asks the
same ``Upstream`` the probe API uses, so the page and ``/api/probes`` never disagree."""

from __future__ import annotations

from urllib.parse import urlencode

from flask import Response, current_app, redirect, render_template, request, send_file
from werkzeug.exceptions import NotFound

from shared.openapi import describe
from shared.topics import ID_RE

from ..errors import LanError
from ..routes import WebContext
from .routes import GATE, _dash, bp


def _web() -> WebContext:
    ctx: WebContext = current_app.extensions["web"]
    return ctx


@bp.get("/ui/probes")
@describe(query={"ok": str, "problem": str}, produces="text/html",
          responses={200: "the probes page", 302: "to the login page", **GATE})
def page_probes() -> str:
    _dash()
    up = _web().upstream
    problem = None
    try:
        probes, devices = up.probes(), up.probe_devices()
    except LanError as exc:
        probes, devices, problem = [], [], exc.message
    return render_template("dashboard/probes.html", probes=probes, devices=devices,
                           problem=problem, csv_rows=_web().ingest.csv.rows,
                           outcome=request.args.get("ok"), failed=request.args.get("problem"))


@bp.post("/ui/probes/<probe_id>/provision")
@describe(responses={302: "back to the probes page, with the outcome", 404: "bad probe id", **GATE})
def provision(probe_id: str) -> Response:
    _dash().keys.require_management()
    if not ID_RE.fullmatch(probe_id):
        raise NotFound()
    try:
        _web().upstream.provision(probe_id)
        target = "/ui/probes?" + urlencode({"ok": f"{probe_id} provisioned"})
    except LanError as exc:
        target = "/ui/probes?" + urlencode({"problem": exc.message})
    return redirect(target)  # type: ignore[return-value]


@bp.get("/ui/probes/log.csv")
@describe(produces="text/csv", responses={200: "the probe readings' CSV log",
                                          404: "nothing logged yet", **GATE})
def probe_log() -> Response:
    _dash()
    path = _web().ingest.csv.path
    if not path.exists():
        raise NotFound("no probe reading has been logged yet")
    return send_file(path, mimetype="text/csv", as_attachment=True, download_name=path.name,
                     max_age=0)
