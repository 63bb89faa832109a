"""Every service describes itself: ``GET /openapi.json`` holds every route of its Flask app
(``app.url_map``), so a new route cannot escape the fuzz tests (tests/e2e/test_fuzz_rest.py),
and the document is one schemathesis loads."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from schemathesis.core.result import Err, Ok

from services.http_poller.app import create_app as poller_app
from services.http_poller.core import HttpPoller
from services.serial_handler.app import create_app as serial_app
from services.serial_handler.core import SerialHandler
from services.state_aggregator.app import create_app as aggregator_app
from services.state_aggregator.core import Aggregator
from services.web.app import build_context
from services.web.app import create_app as web_app
from services.web.master import PREFIX
from shared.instance import parse_instance
from shared.openapi import described_rules, document, methods_of, openapi_path
from shared.settings import Settings
from tests.conftest import ROOT
from tests.helpers import Recorder

INSTANCE = parse_instance(json.loads((ROOT / "instances" / "demo.json").read_text()))
NOWHERE = "http://127.0.0.1:9"  # no request reaches a handler while a description is built


def _aggregator(_tmp: Path) -> Flask:
    return aggregator_app(Aggregator(INSTANCE, handlers={}, cache_ttl=10, poll_interval=5))


def _serial(_tmp: Path) -> Flask:
    return serial_app(SerialHandler(INSTANCE, Recorder()))


def _poller(_tmp: Path) -> Flask:
    return poller_app(HttpPoller(INSTANCE, Recorder(), poll_interval=5))


def _web(tmp: Path) -> Flask:
    ctx, _pusher = build_context(Settings(state_aggregator_url=NOWHERE, http_poller_url=NOWHERE,
                                          data_dir=tmp))
    return web_app(ctx)


SERVICES: dict[str, Callable[[Path], Flask]] = {
    "state-aggregator": _aggregator, "serial-handler": _serial, "http-poller": _poller,
    "web": _web}


@pytest.fixture(params=sorted(SERVICES))
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Flask:
    return SERVICES[request.param](tmp_path)


def served(app: Flask) -> dict[str, Any]:
    lan = "probe_api.health" in app.view_functions
    resp = app.test_client().get("/api/openapi.json" if lan else "/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    doc: dict[str, Any] = resp.get_json()
    return doc


def test_every_route_of_the_app_is_in_its_description(app: Flask) -> None:
    doc = served(app)
    assert doc["openapi"] == "3.1.0"
    rules = described_rules(app)
    assert len(rules) > 3
    undescribed = [rule.rule for rule, op in rules if op is None]
    assert not undescribed, f"routes without @describe (the fuzzer would miss them): {undescribed}"
    for rule, _op in rules:
        path = openapi_path(rule)
        assert path in doc["paths"], f"{rule.rule} is not in the description"
        described = set(doc["paths"][path])
        assert set(methods_of(rule)) <= described, (rule.rule, described)


def test_bodies_and_arguments_come_from_the_pydantic_models(tmp_path: Path) -> None:
    doc = served(_aggregator(tmp_path))
    command = doc["paths"]["/device/{device_id}/command"]["post"]
    ref = command["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"cmd_id", "values"} <= set(schema["required"])
    changes = {p["name"]: p for p in doc["paths"]["/changes"]["get"]["parameters"]}
    assert changes["wait"]["schema"] == {"type": "integer", "minimum": 0, "maximum": 30}
    instance = doc["paths"]["/master/instances/{master_id}"]
    assert instance["parameters"][0]["schema"]["type"] == "integer"
    assert {"patch", "delete"} <= set(instance)


def test_the_lan_port_describes_each_forwarded_master_route_but_no_bridge_route(
        tmp_path: Path) -> None:
    paths = served(_web(tmp_path))["paths"]
    register = paths[f"{PREFIX}/register"]["post"]
    assert "$ref" in register["requestBody"]["content"]["application/json"]["schema"]
    assert {"patch", "delete"} <= set(paths[f"{PREFIX}/groups/{{name}}"])
    assert f"{PREFIX}/{{path}}" in paths  # the catch-all itself is fuzzed too
    internal = [p for p in paths if not (p.startswith(("/api/", "/ui/")) or p == "/")]
    assert internal == []
    for bridge_only in ("changes", "sensor-configs", "sensors/{sensor_id}/deliver"):
        assert f"{PREFIX}/{bridge_only}" not in paths


def test_schemathesis_loads_every_description(app: Flask) -> None:
    schema = schemathesis.openapi.from_dict(served(app))
    results = list(schema.get_all_operations())
    problems = [r.err() for r in results if isinstance(r, Err)]
    assert problems == []
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) >= sum(len(methods_of(rule)) for rule, _ in described_rules(app))


def test_a_route_without_a_description_is_found(tmp_path: Path) -> None:
    app = _serial(tmp_path)
    app.add_url_rule("/new", "new", lambda: "x")
    assert [rule.rule for rule, op in described_rules(app) if op is None] == ["/new"]
    assert "/new" not in document(app, title="t")["paths"]
