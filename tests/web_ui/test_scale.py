"""The dashboard with 1,000 devices, in a real browser against the real instance: the first page
stays under 200 KB on the wire, every row renders, three rounds of readings for every device
reach the screen, and no client gets more than one update per device per second. The figures
(page size, updates per device, long tasks of the page) are printed, not asserted: speed is
the bench's business."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Instance, demo_instance
from tests.helpers import Broker, internal_headers, wait_for

from .conftest import lan

pytestmark = pytest.mark.e2e

DEVICES = 1000
# The throttle sends a device at most once a second; arrivals may bunch by the network's and the
# page's jitter, never by half a second.
MIN_GAP_S = 0.5


@pytest.fixture(scope="module")
def big(mosquitto: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """The demo instance grown to 1,000 devices (probe devices registered at run time)."""
    with demo_instance(mosquitto, tmp_path_factory.mktemp("ui-scale"), MAX_DEVICES="2000",
                       DASHBOARD_STREAMS="3") as inst:
        agg = f"http://127.0.0.1:{inst.env['STATE_AGGREGATOR_PORT']}"
        have = len(requests.get(f"{agg}/devices", timeout=10,
                                headers=internal_headers(inst.env)).json()["devices"])
        with requests.Session() as s:
            s.headers.update(internal_headers(inst.env))
            for n in range(DEVICES - have):
                answer = s.post(f"{agg}/devices/register", timeout=10, json={
                    "device_id": f"load_{n:04d}", "source": "probe", "interval": 3600,
                    "units": {"temperature_c": "°C"}})
                assert answer.ok, answer.text
        assert len(requests.get(f"{agg}/devices", timeout=10,
                                headers=internal_headers(inst.env)).json()["devices"]) == DEVICES
        readings(inst, 0.5)
        yield inst


def load_ids(inst: Instance) -> list[str]:
    agg = f"http://127.0.0.1:{inst.env['STATE_AGGREGATOR_PORT']}"
    answer = requests.get(f"{agg}/devices", timeout=10, headers=internal_headers(inst.env))
    return [d["device_id"] for d in answer.json()["devices"] if d["device_id"].startswith("load_")]


def readings(inst: Instance, value: float) -> None:
    """One reading for every load device, in one batch (as a handler pushes them)."""
    agg = f"http://127.0.0.1:{inst.env['STATE_AGGREGATOR_PORT']}"
    now = time.time()
    items = [{"kind": "reading", "device_id": d, "ts": now, "values": {"temperature_c": value}}
             for d in load_ids(inst)]
    answer = requests.post(f"{agg}/ingest", json={"source": "probe", "items": items}, timeout=30,
                           headers=internal_headers(inst.env))
    assert answer.ok and answer.json()["accepted"] == len(items), answer.text


def test_the_first_page_of_1000_devices_is_under_200_kb(big: Instance) -> None:
    plain = requests.get(lan(big) + "/", timeout=30)
    assert plain.text.count("<tr data-id=") == DEVICES
    zipped = requests.get(lan(big) + "/", headers={"Accept-Encoding": "gzip"}, stream=True,
                          timeout=30)
    wire = len(zipped.raw.read())
    assets = re.findall(r'(?:href|src)="(/ui/static/[^"]+)"', plain.text)
    asset_bytes = sum(len(requests.get(lan(big) + a, timeout=5).content) for a in assets)
    print(f"1,000 devices: HTML {len(plain.content) / 1024:.1f} KB, {wire / 1024:.1f} KB "
          f"gzipped, + {len(assets)} assets {asset_bytes / 1024:.1f} KB")
    assert wire + asset_bytes < 200 * 1024


def test_1000_devices_render_and_update_at_most_once_a_second_each(big: Instance,
                                                                   browser: Any) -> None:
    page = browser.new_page()
    page.goto(lan(big) + "/", timeout=60_000)
    wait_for(lambda: page.locator("tr[data-id]").count() == DEVICES, timeout=60,
             what="every row")
    page.wait_for_selector("#live.on", timeout=30_000)
    page.evaluate("""() => {
        window.__arrivals = {}; window.__long = [];
        document.addEventListener("hub:devices", (e) => {
            const t = performance.now();
            for (const d of e.detail) (window.__arrivals[d.device_id] ||= []).push(t);
        });
        new PerformanceObserver((l) => { for (const x of l.getEntries()) window.__long.push(x.duration); })
            .observe({ entryTypes: ["longtask"] });
        window.__same_page = true;
    }""")
    for value in (1.25, 2.25, 3.25):  # three rounds back to back: coalesced, never queued
        readings(big, value)
    final, loads = "3.25", len(load_ids(big))

    def shown() -> int:
        return int(page.evaluate("""(v) => [...document.querySelectorAll("td.values")]
            .filter((td) => td.textContent.includes(`temperature_c ${v} `)).length""", final))
    wait_for(lambda: shown() == loads or None, timeout=90,
             what="the last round on every load device's row")
    assert page.evaluate("window.__same_page") is True  # updated in place, not reloaded
    arrivals: dict[str, list[float]] = page.evaluate("window.__arrivals")
    gaps = [(b - a) / 1000 for times in arrivals.values() for a, b in pairwise(times)]
    most = max(len(t) for t in arrivals.values())
    long_tasks: list[float] = page.evaluate("window.__long")
    print(f"updates: {sum(len(t) for t in arrivals.values())} for {len(arrivals)} devices, "
          f"at most {most} per device, smallest gap "
          f"{min(gaps) if gaps else float('nan'):.2f} s; long tasks {len(long_tasks)}, "
          f"longest {max(long_tasks, default=0):.0f} ms")
    assert len(arrivals) >= loads
    assert not gaps or min(gaps) >= MIN_GAP_S
    page.close()
