"""The dashboard's keys over the Flask test client, against a real aggregator on a real socket
(``support.start_hub``): with ``DASHBOARD_AUTH=true`` reading needs the management key too;
a change needs the key and this session's CSRF token; the session cookie is HttpOnly and
SameSite=Strict and holds no key."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from services.web.dashboard import build_dashboard, install
from services.web.dashboard.routes import Dashboard
from shared.rest import RestClient
from shared.settings import Settings

from .support import Hub, start_hub

KEY = "auth-test-key"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    started = start_hub(tmp_path, poller=False)
    yield started
    started.stop()


def dashboard(hub: Hub, *, auth: bool) -> tuple[FlaskClient, Dashboard]:
    """The hub's web app with a dashboard pointed at its aggregator (the app the fixture built
    has none: it was built for the probe API's tests)."""
    agg_url = hub.ctx.upstream.aggregator.base_url
    settings = Settings(state_aggregator_url=agg_url, master_api_key=KEY, dashboard_auth=auth,
                        hub_run_dir=Path("/nonexistent"))
    dash = build_dashboard(settings, RestClient(agg_url, name="state-aggregator"))
    dash.feed.start()
    app = hub.app
    install_only_context(app, dash)
    return app.test_client(), dash


def install_only_context(app: object, dash: Dashboard) -> None:
    """``install`` registers the blueprint once; here it is registered already."""
    dash.keys.configure(app)  # type: ignore[arg-type]
    app.extensions["dashboard"] = dash  # type: ignore[attr-defined]


def csrf(client: FlaskClient) -> str:
    """This session's CSRF token, as the login form carries it."""
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/ui/login").text)
    assert found
    return found.group(1)


def test_with_dashboard_auth_reading_needs_the_key(hub: Hub) -> None:
    client, dash = dashboard(hub, auth=True)
    try:
        page = client.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 302 and "/ui/login" in page.headers["Location"]
        assert client.get("/ui/events").status_code == 401
        token = csrf(client)
        assert client.post("/ui/login", data={"key": "wrong", "csrf_token": token}).status_code == 401
        answer = client.post("/ui/login", data={"key": KEY, "csrf_token": token, "next": "/"})
        assert answer.status_code == 302
        cookie = answer.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and KEY not in cookie
        assert client.get("/").status_code == 200
    finally:
        dash.feed.stop()


def test_without_dashboard_auth_reading_is_open_and_changes_are_not(hub: Hub) -> None:
    client, dash = dashboard(hub, auth=False)
    try:
        assert client.get("/").status_code == 200
        token = csrf(client)
        body = {"values": {"state": "on"}}
        no_token = client.post("/ui/device/temp_living_room/command", json=body)
        assert no_token.status_code == 403  # CSRF first
        no_key = client.post("/ui/device/temp_living_room/command", json=body,
                             headers={"X-CSRF-Token": token})
        assert no_key.status_code == 401 and (no_key.json or {})["error"] == "key_required"
        assert client.post("/ui/login", data={"key": KEY, "csrf_token": token}).status_code == 302
        token = csrf(client)  # a new token comes with the key
        done = client.post("/ui/device/temp_living_room/command", json=body,
                           headers={"X-CSRF-Token": token})
        assert done.status_code == 200 and (done.json or {})["status"] in ("rejected", "error")
    finally:
        dash.feed.stop()


def test_install_without_a_dashboard_answers_503(tmp_path: Path) -> None:
    from flask import Flask

    from shared.web import install_error_handlers

    app = Flask(__name__)
    install(app, None)
    install_error_handlers(app)
    assert app.test_client().get("/").status_code == 503
