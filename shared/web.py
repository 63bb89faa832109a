"""What every Flask service shares: JSON responses through orjson, request bodies validated by a
pydantic model (400 for bad JSON, 422 for a body of the wrong shape), and JSON error answers
``{error, message, timestamp}`` instead of HTML pages or 500s."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from flask import Blueprint, Flask, Response, request
from pydantic import BaseModel, Field, ValidationError
from werkzeug.exceptions import HTTPException

from shared.errors import ReadError, ServiceError, UnknownDevice
from shared.jsonutil import NotAJsonObject, dumps, loads_object
from shared.models import ReadingObs, to_json
from shared.openapi import describe
from shared.timeutil import iso

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

# A handler's ``GET /readings`` (``ReadingsPage``): its sensors' last readings, a page at a time.
# Out-of-range numbers are clamped, not refused.
READINGS_PAGE = 1_000
READINGS_PAGE_MAX = 10_000
READINGS_QUERY = {"offset": Annotated[int, Field(ge=0)],
                  "limit": Annotated[int, Field(ge=1, le=READINGS_PAGE_MAX)]}


class ApiError(Exception):
    """An error answer: ``status``, a short ``error`` code and a human ``message``."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


def int_arg(name: str, default: int, lo: int, hi: int, *, strict: bool = False) -> int:
    """The query argument ``name`` as an integer clamped to ``[lo, hi]`` (``default`` when
    absent); 400 when it is not an integer, or (``strict``) outside ``[lo, hi]``."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ApiError(400, "invalid_argument", f"{name} must be an integer, got {raw!r}") from exc
    if strict and not lo <= value <= hi:
        raise ApiError(400, "invalid_argument", f"{name} must be {lo}..{hi}, got {value}")
    return max(lo, min(hi, value))


PageOf = Callable[[int, int], tuple[list[ReadingObs], int]]


def add_readings_route(bp: Blueprint, source: Callable[[], PageOf]) -> None:
    """A handler's ``GET /readings?offset=N&limit=M``: the last reading of the sensors
    ``offset`` to ``offset + M`` and the next page's offset, what the aggregator's warm-up takes
    (``/sensors`` says much more about each sensor, and all of them at once). ``source()`` gives
    the handler's ``last_readings(offset, limit)``."""

    @describe(query=READINGS_QUERY,
              responses={200: "the sensors' last readings, a page of them", 400: "bad argument"})
    def readings() -> Response:
        offset = int_arg("offset", 0, 0, 2**62)
        limit = int_arg("limit", READINGS_PAGE, 1, READINGS_PAGE_MAX)
        page, total = source()(offset, limit)
        following = offset + limit
        return Response(to_json({"readings": page,
                                 "next": following if following < total else None,
                                 "total": total, "timestamp": iso()}),
                        mimetype="application/json")

    bp.add_url_rule("/readings", "readings", readings, methods=["GET"])


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(dumps(obj), status=status, mimetype="application/json")


def error_response(status: int, error: str, message: str, **extra: Any) -> Response:
    return json_response({"error": error, "message": message, "timestamp": iso(), **extra}, status)


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def json_object_body(*, required: str | None = None) -> dict[str, Any]:
    """The request body as a JSON object (``{}`` when empty, unless ``required`` names what is
    required), or an ``ApiError``: 400 for bad JSON, 422 for JSON that is not an object."""
    try:
        return loads_object(request.get_data(cache=True), what="body")
    except NotAJsonObject as exc:
        if exc.reason == "empty":
            if required:
                raise ApiError(400, "empty_body", f"a JSON object is required ({required})") from exc
            return {}
        if exc.reason == "invalid_json":
            raise ApiError(400, "invalid_json", str(exc)) from exc
        raise ApiError(422, "invalid_body", str(exc)) from exc


def parse_body(model: type[M], *, allow_empty: bool = False) -> M:
    """The request body as ``model``, or an ``ApiError`` that says what is wrong with it."""
    data = json_object_body(required=None if allow_empty else model.__name__)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_body", validation_message(exc)) from exc


def install_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api(exc: ApiError) -> Response:
        return error_response(exc.status, exc.error, exc.message)

    @app.errorhandler(UnknownDevice)
    def _unknown(exc: UnknownDevice) -> Response:
        return error_response(404, "unknown_device", str(exc))

    @app.errorhandler(ReadError)
    def _read(exc: ReadError) -> Response:
        return error_response(503, exc.code, exc.message)

    @app.errorhandler(ServiceError)
    def _service(exc: ServiceError) -> Response:
        return error_response(502, "upstream_error", str(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        name = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, name, exc.description or name)

    @app.errorhandler(Exception)
    def _crash(exc: Exception) -> Response:
        # The traceback goes to the log; the answer carries no exception text, which can hold
        # paths, addresses or data that a client (on the LAN, for the web program) must not see.
        log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
        return error_response(500, "internal_error",
                              "internal error; the hub's log has the details")
