"""Each service's OpenAPI description, built from its own routes and the pydantic models.

A route declares what it takes and answers with ``@describe(...)`` (the body model, its query
arguments, the statuses it answers); ``document(app)`` walks ``app.url_map`` and writes one
OpenAPI 3.1 document with apispec, the component schemas coming from pydantic
(``models_json_schema``), and every service serves it at ``GET /openapi.json``
(``install(app, title)``; the LAN port's at ``/api/openapi.json``, its paths staying apart
from the internal services'). The description is what the fuzz tests (schemathesis) exercise, so a
route without one is missing from ``document`` and the coverage test fails.

Why not flask-smorest, spectree or flask-openapi3: flask-smorest describes bodies in marshmallow
(a second schema language beside pydantic); spectree and flask-openapi3 wrap every view and
rebuild its answer (spectree reads the whole body of each response, which breaks the streamed CSV
exports and the dashboard's event stream, and copies every long-poll page), and validate requests
with their own error format. ``describe`` only sets an attribute: nothing runs per request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from apispec import APISpec
from flask import Flask, Response
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema
from werkzeug.routing import Rule

from shared.jsonutil import dumps

F = TypeVar("F", bound=Callable[..., Any])
Body = type[BaseModel] | Mapping[str, Any]  # a model, or a JSON schema for a body no model holds

ATTRIBUTE = "__openapi__"
SPEC_PATH = "/openapi.json"
REF_TEMPLATE = "#/components/schemas/{model}"
ANY_JSON: Mapping[str, Any] = {}  # any JSON value: what a forwarding route passes on unread
ERROR_SCHEMA: Mapping[str, Any] = {
    "type": "object", "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                   "timestamp": {"type": "string"}}}
_CONVERTERS: Mapping[str, Mapping[str, Any]] = {
    # werkzeug's converters: ``default`` and ``string`` match one non-empty segment, ``int`` an
    # unsigned integer, ``path`` the rest of the path (slashes included).
    "default": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
    "string": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
    "int": {"type": "integer", "minimum": 0},
    "path": {"type": "string", "minLength": 1},
}
_PARAM = re.compile(r"<(?:(?P<kind>[a-z]+)(?:\([^)]*\))?:)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)>")


@dataclass(frozen=True)
class Operation:
    """What one view takes and answers (every method of its rule)."""

    body: Body | None = None
    form: Body | None = None
    query: Mapping[str, Any] = field(default_factory=dict)
    responses: Mapping[int, str] = field(default_factory=dict)
    produces: str = "application/json"
    body_required: bool = True


def describe(*, body: Body | None = None, form: Body | None = None,
             query: Mapping[str, Any] | None = None, responses: Mapping[int, str] | None = None,
             produces: str = "application/json", body_required: bool = True) -> Callable[[F], F]:
    """Declare a view's request and answers for the description; nothing changes per request.

    ``query`` maps each (optional) argument to a type pydantic understands (``int``,
    ``Literal[...]``, ``Annotated[int, Field(ge=0)]``); ``responses`` maps each status the route
    answers to what it means (the 2xx answer first)."""
    op = Operation(body=body, form=form, query=dict(query or {}),
                   responses=dict(responses or {200: "OK"}), produces=produces,
                   body_required=body_required)

    def mark(view: F) -> F:
        setattr(view, ATTRIBUTE, op)
        return view
    return mark


def operation_of(view: Callable[..., Any]) -> Operation | None:
    found = getattr(view, ATTRIBUTE, None)
    return found if isinstance(found, Operation) else None


def described_rules(app: Flask) -> list[tuple[Rule, Operation | None]]:
    """Every rule of the app (static files aside) and its view's description, if any."""
    return [(rule, operation_of(app.view_functions[rule.endpoint]))
            for rule in app.url_map.iter_rules() if rule.endpoint != "static"
            and not rule.endpoint.endswith(".static")]


def openapi_path(rule: Rule | str) -> str:
    """``/a/<int:b>`` as OpenAPI writes it: ``/a/{b}``."""
    return _PARAM.sub(r"{\g<name>}", rule if isinstance(rule, str) else rule.rule)


def methods_of(rule: Rule) -> list[str]:
    return sorted(m.lower() for m in (rule.methods or ()) if m not in ("HEAD", "OPTIONS"))


def document(app: Flask, *, title: str, version: str = "1",
             extra: Mapping[str, Mapping[str, Operation]] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every described route of ``app``; ``extra`` adds paths that
    one catch-all rule serves (``{flask_rule: {method: Operation}}``), described one by one."""
    spec = APISpec(title=title, version=version, openapi_version="3.1.0")
    paths: dict[str, tuple[dict[str, Operation], list[dict[str, Any]]]] = {}
    for rule, op in described_rules(app):
        if op is None:
            continue
        ops, params = paths.setdefault(openapi_path(rule), ({}, _path_parameters(rule)))
        for method in methods_of(rule):
            ops[method] = op
    for rule_text, by_method in (extra or {}).items():
        paths[openapi_path(rule_text)] = (dict(by_method), _path_parameters(rule_text))
    models = sorted({m for ops, _ in paths.values() for op in ops.values()
                     for m in (op.body, op.form) if isinstance(m, type)},
                    key=lambda m: (m.__module__, m.__qualname__))
    refs, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF_TEMPLATE)
    for name, schema in sorted(defs.get("$defs", {}).items()):
        spec.components.schema(name, schema)
    spec.components.schema("Error", dict(ERROR_SCHEMA))
    for path, (ops, params) in sorted(paths.items()):
        spec.path(path=path, parameters=params, operations={
            method: _operation(op, method, refs) for method, op in sorted(ops.items())})
    return spec.to_dict()


def install(app: Flask, *, title: str, version: str = "1", path: str = SPEC_PATH,
            extra: Callable[[], Mapping[str, Mapping[str, Operation]]] | None = None) -> None:
    """Serve the app's description at ``GET path`` (built on the first request: every blueprint
    is registered by then)."""
    built: list[bytes] = []

    @describe(responses={200: "this service's OpenAPI 3.1 description"})
    def openapi() -> Response:
        if not built:
            built.append(dumps(document(app, title=title, version=version,
                                        extra=extra() if extra else None)))
        return Response(built[0], mimetype="application/json")

    app.add_url_rule(path, "openapi", openapi, methods=["GET"])


def _path_parameters(rule: Rule | str) -> list[dict[str, Any]]:
    return [_path_parameter(m["name"], m["kind"] if m["kind"] in _CONVERTERS else "default")
            for m in _PARAM.finditer(rule if isinstance(rule, str) else rule.rule)]


def _path_parameter(name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": dict(_CONVERTERS[kind])}


def _operation(op: Operation, method: str, refs: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"responses": {
        str(status): _response(status, text, op.produces) for status, text in op.responses.items()}}
    if op.query:
        out["parameters"] = [{"name": name, "in": "query", "required": False,
                              "schema": TypeAdapter(kind).json_schema(ref_template=REF_TEMPLATE)}
                             for name, kind in op.query.items()]
    content: dict[str, Any] = {}
    for kind, body in (("application/json", op.body), ("application/x-www-form-urlencoded", op.form)):
        if body is not None and method not in ("get", "delete"):
            content[kind] = {"schema": refs[(body, "validation")] if isinstance(body, type)
                             else dict(body)}
    if content:
        out["requestBody"] = {"required": op.body_required, "content": content}
    return out


def _response(status: int, text: str, produces: str) -> dict[str, Any]:
    if status >= 400:
        return {"description": text,
                "content": {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(
                    model="Error")}}}}
    if status in (204, 304) or 300 <= status < 400:
        return {"description": text}
    return {"description": text, "content": {produces: {"schema": {}}}}
