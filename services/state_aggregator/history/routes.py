"""The history's internal REST on the aggregator (127.0.0.1), under ``/history``: thin routes
over ``History``. The web program serves the same as ``/api/readings...`` on the LAN.

- ``GET /history/readings?start_date&end_date&device_id&limit&cursor``: ISO 8601 bounds (start
  inclusive, end exclusive), time order, keyset pagination (``next_cursor``).
- ``GET /history/readings/latest?device_id``: the newest reading of one device or of each.
- ``POST /history/readings`` (one reading) and ``/history/readings/bulk`` (``{readings: [...]}``
  or a bare list, up to 1,000): idempotent on (device_id, reading_id or timestamp).
- ``GET /history/readings/export.csv?...``: the same selection as CSV, streamed page by page.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request, stream_with_context
from pydantic import ValidationError

from shared.history_models import (
    BULK_MAX,
    PAGE_MAX,
    READINGS_QUERY,
    ReadingIn,
    ReadingsBulkIn,
    csv_chunks,
)
from shared.jsonutil import JSONDecodeError, loads
from shared.openapi import describe
from shared.timeutil import parse_iso
from shared.topics import ID_RE
from shared.web import ApiError, int_arg, json_object_body, json_response, validation_message

from .service import History, HistoryUnavailable
from .store import CursorError, Page, StoreError

bp = Blueprint("history", __name__, url_prefix="/history")
EXPORT_PAGE = 5000


def _history() -> History:
    found: History | None = current_app.extensions.get("history")
    if found is None:
        raise ApiError(503, "history_disabled", "the readings history is not running "
                       "(HISTORY_ENABLED=false)")
    return found


@bp.errorhandler(HistoryUnavailable)
def _unavailable(exc: HistoryUnavailable) -> Response:
    return json_response({"error": "history_unavailable", "message": str(exc)}, 503)


@bp.errorhandler(CursorError)
def _cursor(exc: CursorError) -> Response:
    return json_response({"error": "invalid_argument", "message": str(exc)}, 400)


def _time_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse_iso(raw)
    except ValueError as exc:
        raise ApiError(400, "invalid_argument", f"{name} must be an ISO 8601 date or time "
                       f"(2026-11-23 or 2026-11-23T12:00:00Z), got {raw!r}") from exc


def _device_arg() -> str | None:
    raw = request.args.get("device_id")
    if raw is None or raw == "":
        return None
    if not ID_RE.fullmatch(raw):
        raise ApiError(400, "invalid_argument", f"device_id must match [A-Za-z0-9_-]{{1,64}}, "
                       f"got {raw!r}")
    return raw


def selection() -> dict[str, Any]:
    start, end = _time_arg("start_date"), _time_arg("end_date")
    if start is not None and end is not None and end <= start:
        raise ApiError(400, "invalid_argument", "end_date must be after start_date")
    return {"start": start, "end": end, "device_id": _device_arg()}


@bp.get("/readings")
@describe(query=READINGS_QUERY, responses={200: "a page of readings, oldest first",
                                          400: "bad argument", 503: "history unavailable"})
def readings() -> Response:
    page: Page = _history().query(**selection(), limit=int_arg("limit", 1000, 1, PAGE_MAX, strict=True),
                                  cursor=request.args.get("cursor") or None)
    return json_response({"readings": page.readings, "count": len(page.readings),
                          "next_cursor": page.next_cursor})


@bp.get("/readings/latest")
@describe(query={"device_id": str}, responses={200: "the newest reading of each device",
                                              400: "bad argument", 503: "history unavailable"})
def latest() -> Response:
    found = _history().latest(_device_arg())
    return json_response({"readings": found, "count": len(found)})


def _store(items: list[ReadingIn]) -> Response:
    try:
        result = _history().post(items)
    except StoreError as exc:
        raise ApiError(507, "not_stored", f"the history could not store these readings "
                       f"({exc}); nothing of this request was stored, send it again later") from exc
    return json_response(result)


@bp.post("/readings")
@describe(body=ReadingIn, responses={200: "stored (or a duplicate)", 400: "not JSON",
                                 422: "not a reading", 503: "history unavailable",
                                 507: "not stored (disk)"})
def post_one() -> Response:
    try:
        item = ReadingIn.from_body(json_object_body(required="a reading"))
    except ValidationError as exc:
        raise ApiError(422, "invalid_body", validation_message(exc)) from exc
    return _store([item])


def bulk_items(raw: bytes) -> list[ReadingIn]:
    """``{readings: [...]}`` or a bare list; ``ApiError`` naming the first bad reading."""
    try:
        data = loads(raw) if raw.strip() else None
    except JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from exc
    if isinstance(data, list):
        data = {"readings": data}
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_body", f"a JSON object {{readings: [...]}} of 1..{BULK_MAX} "
                       "readings is required")
    try:
        return ReadingsBulkIn.model_validate(data).parsed()
    except ValidationError as exc:
        raise ApiError(422, "invalid_body", validation_message(exc)) from exc
    except ValueError as exc:
        raise ApiError(422, "invalid_body", str(exc)) from exc


@bp.post("/readings/bulk")
@describe(body=ReadingsBulkIn, responses={200: "stored (duplicates counted)", 400: "not JSON",
                                      422: "not readings", 503: "history unavailable",
                                      507: "not stored (disk)"})
def post_bulk() -> Response:
    return _store(bulk_items(request.get_data()))


@bp.get("/readings/export.csv")
@describe(query={k: v for k, v in READINGS_QUERY.items() if k not in ("limit", "cursor")},
          produces="text/csv", responses={200: "the readings as CSV, streamed",
                                          400: "bad argument", 503: "history unavailable"})
def export_csv() -> Response:
    history, chosen = _history(), selection()

    def pages() -> Iterator[list[dict[str, Any]]]:
        cursor: str | None = None
        while True:
            page: Page = history.query(**chosen, limit=EXPORT_PAGE, cursor=cursor)
            yield page.readings
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    return Response(stream_with_context(csv_chunks(pages())), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=readings.csv"})
