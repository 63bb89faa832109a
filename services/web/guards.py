"""What every LAN request passes before its route sees it: the client's rate budget (429 with
``Retry-After``), the body size this route allows (413), and a JSON body's nesting depth (422).
The fields themselves (string lengths, list lengths, numbers) are checked by the routes'
pydantic models; a slow client never gets this far (``worker.py`` closes it).

Runs before any credential is checked, so guessing tokens spends the same budget."""

from __future__ import annotations

from flask import Flask, Response, request

from shared.jsonutil import JSONDecodeError, loads
from shared.web import error_response

from . import master
from .ratelimit import Budget, RateLimits

MAX_JSON_DEPTH = 32  # deeper than any payload of the contract (a config template: a few levels)
DEFAULT_BODY = 64 * 1024  # a probe's reading is a few hundred bytes
BULK_BODY = 1024 * 1024  # POST /api/readings/bulk: 1,000 readings
WRITES = ("POST", "PUT", "PATCH", "DELETE")
FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")  # the dashboard's forms


def budget_of(path: str, method: str) -> Budget | None:
    """Which rate budget a request spends (``None``: reading pages and the health check)."""
    if path == "/api/ingest" or (path.startswith("/api/readings") and method == "POST"):
        return "ingest"
    if path.startswith(master.PREFIX + "/"):
        sub = path[len(master.PREFIX) + 1:]
        return "ingest" if master.is_sensor_side(method, sub) else "management"
    if (path.startswith("/api/probes") and method == "DELETE") or path == "/api/provision":
        return "management"
    if path.startswith("/ui/") and method in WRITES:  # the dashboard's login and forms
        return "management"
    return None


def body_limit_of(path: str) -> int:
    if path.startswith(master.PREFIX + "/"):
        return master.MAX_BODY
    if path == "/api/readings/bulk":
        return BULK_BODY
    return DEFAULT_BODY


def json_depth(value: object, limit: int) -> int:
    """The nesting depth of a parsed JSON value, counted up to ``limit + 1`` at most (no
    recursion: a hostile document cannot exhaust the stack)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: list[object] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))
    return deepest


def install(app: Flask, limits: RateLimits) -> None:
    @app.before_request
    def _guard() -> Response | None:
        budget = budget_of(request.path, request.method)
        if budget is not None:
            refused = limits.hit(budget, request.remote_addr or "?")
            if refused is not None:
                resp = error_response(429, "rate_limited",
                                      f"too many {budget} requests from this client (at most "
                                      f"{refused.limit}); retry in {refused.retry_after} s",
                                      ok=False)
                resp.headers["Retry-After"] = str(refused.retry_after)
                return resp
        request.max_content_length = body_limit_of(request.path)
        if request.method in WRITES and request.content_length and request.mimetype not in FORMS:
            try:  # 413 here when the body is too large (the app's handler answers it)
                parsed = loads(request.get_data(cache=True))
            except JSONDecodeError:
                return None  # the route answers 400 with what is wrong
            depth = json_depth(parsed, MAX_JSON_DEPTH)
            if depth > MAX_JSON_DEPTH:
                return error_response(422, "too_deep", f"the JSON body nests deeper than "
                                      f"{MAX_JSON_DEPTH} levels", ok=False)
        return None
