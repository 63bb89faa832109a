"""The readings history on the LAN port, ``/api/readings...``: the aggregator keeps the history
(its internal ``/history/...`` routes); this blueprint checks the token, validates what the LAN
sends and forwards it. Storing readings needs the hub token, reading them the hub token or the
management key (``auth.py``).

- ``GET /api/readings?start_date&end_date&device_id&limit&cursor`` (keyset: ``next_cursor``)
- ``GET /api/readings/latest?device_id``
- ``POST /api/readings`` (one) and ``POST /api/readings/bulk`` (up to 1,000), idempotent
- ``GET /api/readings/export.csv?start_date&end_date&device_id``, streamed
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request, stream_with_context
from pydantic import ValidationError

from shared.errors import ServiceError
from shared.history_models import READINGS_QUERY, ReadingIn, ReadingsBulkIn, csv_chunks
from shared.jsonutil import JSONDecodeError, loads
from shared.openapi import describe
from shared.rest import RestClient
from shared.web import json_object_body, json_response, validation_message

from .auth import presented_key, presented_token
from .errors import LanError
from .routes import AUTH, WebContext

log = logging.getLogger(__name__)

bp = Blueprint("readings_api", __name__, url_prefix="/api/readings")
BULK_BODY_MAX = 1024 * 1024  # 1,000 readings of a few hundred bytes; the app's default is 64 KiB
QUERY_ARGS = ("start_date", "end_date", "device_id", "limit", "cursor")
EXPORT_PAGE = 5000


def _ctx() -> WebContext:
    ctx: WebContext = current_app.extensions["web"]
    return ctx


def _aggregator() -> RestClient:
    return _ctx().upstream.aggregator


def _forward(method: str, path: str, *, body: Any = None,
             params: dict[str, Any] | None = None) -> Any:
    """The aggregator's answer; its refusals (4xx, 507) reach the client with their message,
    its absence a 503 that says to retry (the internal address only in the log)."""
    try:
        return _aggregator().request(method, f"/history{path}", body=body, params=params)
    except ServiceError as exc:
        if 400 <= exc.status < 600 and exc.status != 500 and isinstance(exc.body, dict):
            raise LanError(exc.status, str(exc.body.get("error") or "refused"),
                           str(exc.body.get("message") or exc)) from exc
        log.warning("LAN readings request not served: %s", exc)
        raise LanError(503, "not_ready", "the hub's history is not answering right now; "
                       "send the request again") from exc


@bp.before_request
def _authorize() -> None:
    """Storing readings needs the hub token (a device-side client); reading them the hub token
    or the management key."""
    if request.endpoint == "readings_api.post_bulk":
        request.max_content_length = BULK_BODY_MAX
    token = presented_token() or request.args.get("token")
    if request.method == "POST":
        _ctx().creds.require_hub(token)
    else:
        _ctx().creds.require_hub(token, key=presented_key(), management_too=True)


def _query() -> dict[str, str]:
    return {k: v for k in QUERY_ARGS if (v := request.args.get(k)) is not None}


@bp.get("")
@describe(query=READINGS_QUERY, responses={200: "a page of readings", 400: "bad argument", **AUTH,
                                          503: "history unavailable"})
def readings() -> Response:
    return json_response({"ok": True, **_forward("GET", "/readings", params=_query())})


@bp.get("/latest")
@describe(query={"device_id": str}, responses={200: "the newest readings", 400: "bad argument",
                                              **AUTH, 503: "history unavailable"})
def latest() -> Response:
    return json_response({"ok": True, **_forward("GET", "/readings/latest", params=_query())})


def _dump(item: ReadingIn) -> dict[str, Any]:
    return {"device_id": item.device_id, "ts_utc": item.ts_utc, "reading_id": item.reading_id,
            "payload": item.payload}


@bp.post("")
@describe(body=ReadingIn, responses={200: "stored", 400: "not JSON", **AUTH, 422: "not a reading",
                                 503: "history unavailable", 507: "not stored (disk)"})
def post_one() -> Response:
    try:
        item = ReadingIn.from_body(json_object_body(required="a reading"))
    except ValidationError as exc:
        raise LanError(422, "invalid_body", validation_message(exc)) from exc
    return json_response({"ok": True, **_forward("POST", "/readings/bulk",
                                                  body={"readings": [_dump(item)]})})


@bp.post("/bulk")
@describe(body=ReadingsBulkIn, responses={200: "stored", 400: "not JSON", **AUTH,
                                      413: "body too large", 422: "not readings",
                                      503: "history unavailable", 507: "not stored (disk)"})
def post_bulk() -> Response:
    try:
        data = loads(request.get_data())
    except JSONDecodeError as exc:
        raise LanError(400, "invalid_json", f"body is not valid JSON: {exc}") from exc
    data = {"readings": data} if isinstance(data, list) else data
    if not isinstance(data, dict):
        raise LanError(422, "invalid_body", "a JSON object {readings: [...]} is required")
    try:
        items = ReadingsBulkIn.model_validate(data).parsed()
    except ValidationError as exc:
        raise LanError(422, "invalid_body", validation_message(exc)) from exc
    except ValueError as exc:
        raise LanError(422, "invalid_body", str(exc)) from exc
    return json_response({"ok": True, **_forward("POST", "/readings/bulk",
                                                  body={"readings": [_dump(i) for i in items]})})


@bp.get("/export.csv")
@describe(query={k: v for k, v in READINGS_QUERY.items() if k not in ("limit", "cursor")},
          produces="text/csv", responses={200: "the readings as CSV, streamed", 400: "bad argument",
                                          **AUTH, 503: "history unavailable"})
def export_csv() -> Response:
    params = {k: v for k, v in _query().items() if k not in ("limit", "cursor")}
    # The first page is asked before the answer starts, so a bad query is a clear 400, not a
    # broken stream.
    first = _forward("GET", "/readings", params={**params, "limit": EXPORT_PAGE})

    def pages() -> Iterator[list[dict[str, Any]]]:
        page = first
        while True:
            yield page["readings"]
            if not page.get("next_cursor"):
                return
            page = _forward("GET", "/readings", params={**params, "limit": EXPORT_PAGE,
                                                         "cursor": page["next_cursor"]})

    return Response(stream_with_context(csv_chunks(pages())), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=readings.csv"})
