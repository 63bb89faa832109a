"""Browser tests of the dashboard: the real instance under the real supervisord (the demo
instance, a real mosquitto, the web program under gunicorn on its LAN port) and a real headless
Chromium from Debian's ``chromium`` package, driven by Playwright. Playwright never downloads a
browser of its own here: it is pointed at /usr/bin/chromium; without it the tests skip and say
how to install it (``./hub test`` installs it)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Instance, demo_instance
from tests.helpers import Broker
from tests.probe_fixtures.servers import FakeProbe

CHROMIUM = Path("/usr/bin/chromium")
KEY = "ui-test-management-key"
# Where the browser tests keep a screenshot of each page: a test artifact, outside the checkout
# unless asked (SCREENSHOT_DIR=docs/screenshots refreshes the README's pictures).
SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR") or
                   Path(tempfile.gettempdir()) / "sensor-hub-screenshots")
# Flags for a browser that stays on the LAN: no GPU, no QUIC, no background calls home.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def probe() -> Iterator[FakeProbe]:
    """A probe on this host (a real HTTP server speaking the probe protocol), which the
    instance knows from its instance file."""
    p = FakeProbe(probe_id="probe_static", name="Static probe")
    yield p
    p.close()


@pytest.fixture(scope="module")
def hub(mosquitto: Broker, probe: FakeProbe,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """The demo instance with a management key, room for 3 live views and a static probe."""
    static = {"sensor_id": probe.probe_id, "sensor_type": "temperature",
              "source": {"type": "probe", "ip": "127.0.0.1", "port": probe.port}}
    with demo_instance(mosquitto, tmp_path_factory.mktemp("ui"), extra_sensors=[static],
                       MASTER_API_KEY=KEY, DASHBOARD_STREAMS="3") as inst:
        yield inst


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: apt-get install chromium (./hub test does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as pw:
        # A persistent context is the way to give Chromium a fresh user-data-dir of our own.
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 860})
        yield context
        context.close()


def lan(hub: Instance) -> str:
    return f"http://127.0.0.1:{hub.env['PORT']}"
