"""The dashboard in a real browser against the real instance: the pages load, a reading that
arrives changes the value on screen without a reload, a command sent from the page gets its
answer shown, changes need the management key (and a CSRF token), live streams are capped
without starving the LAN API, and the first page stays under 200 KB. Each main page is saved as
a screenshot (docs/screenshots/, shown in the README)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import Instance
from tests.helpers import Broker, internal_headers, wait_for
from tests.probe_fixtures.servers import FakeProbe

from . import sse
from .conftest import KEY, SCREENSHOTS, lan

pytestmark = pytest.mark.e2e

PROBE = "probe_ui"


def ingest(hub: Instance, temperature: float) -> None:
    answer = requests.post(f"{lan(hub)}/api/ingest", json={"probe_id": PROBE,
                                                           "temperature_c": temperature},
                           timeout=5, headers={"X-Token": hub.hub_token})
    assert answer.ok, answer.text


def log_in(page: Any, hub: Instance, key: str = KEY) -> None:
    page.goto(f"{lan(hub)}/ui/login")
    page.fill("input[name=key]", key)
    page.click("form button[type=submit] >> text=Enter")


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_devices_page_shows_every_device_and_a_new_reading_without_reload(
        hub: Instance, browser: Any) -> None:
    ingest(hub, 20.0)  # the probe exists before the page is rendered
    page = browser.new_page()
    page.goto(lan(hub) + "/")
    for device in ("temp_living_room", "heater_relay", "motion_hallway", PROBE):
        page.wait_for_selector(f"tr[data-id={device}]")
    page.wait_for_selector("#live.on")  # the SSE stream is open
    page.evaluate("window.__same_page = true")
    ingest(hub, 21.75)
    page.wait_for_selector(f"tr[data-id={PROBE}] .values >> text=temperature_c 21.75 °C",
                           timeout=10_000)
    assert page.evaluate("window.__same_page") is True  # updated in place, not reloaded
    # search filters the rows on the page
    page.fill("#search", "heater")
    wait_for(lambda: page.locator("tbody tr[data-id]:visible").count() == 1, what="one row")
    page.fill("#search", "")
    shot(page, "devices")
    page.close()


def test_a_command_from_the_device_page_gets_its_response_shown(hub: Instance,
                                                               browser: Any) -> None:
    browser.clear_cookies()
    page = browser.new_page()
    log_in(page, hub)
    page.goto(f"{lan(hub)}/ui/device/heater_relay")
    page.fill("textarea[name=values]", '{"state": "on"}')
    page.click("#command button")
    page.wait_for_selector("#response[data-status=success]", timeout=15_000)
    assert '"status": "success"' in page.inner_text("#response")
    shot(page, "device-command")
    # the relay's new state reaches the page by the live feed
    page.wait_for_selector("tr[data-id=heater_relay] .values >> text=/state \"?on/",
                           timeout=15_000)
    page.close()


def test_live_charts_draw_each_numeric_property(hub: Instance, browser: Any) -> None:
    page = browser.new_page()
    page.goto(f"{lan(hub)}/ui/device/{PROBE}")
    page.wait_for_selector("#live.on")
    for t in (22.25, 22.5):  # not whole numbers: the page shows those without decimals
        ingest(hub, t)
        page.wait_for_selector(f".values >> text=temperature_c {t:.2f} °C", timeout=10_000)
    page.wait_for_selector(".chart[data-prop=temperature_c] canvas")
    # the range's statistics roll on with the live readings, without a reload
    ingest(hub, 95.5)
    page.wait_for_selector("#stats tr[data-prop=temperature_c] td:nth-child(3):text-is('95.50')",
                           timeout=10_000)
    # reloaded, the chart starts from the readings history, with the range's min/max/mean
    page.goto(f"{lan(hub)}/ui/device/{PROBE}?range=6h")
    row = page.locator("#stats tr:has(td:text-is('temperature_c'))")
    row.wait_for()
    cells = row.locator("td").all_inner_texts()
    assert float(cells[2]) >= 95.5 and int(cells[4]) >= 4, cells
    shot(page, "device-chart")
    page.close()


def test_changes_need_the_management_key(hub: Instance, browser: Any) -> None:
    browser.clear_cookies()
    page = browser.new_page()
    page.goto(f"{lan(hub)}/ui/device/heater_relay")  # reading needs nothing
    page.click("#command button")
    page.wait_for_selector("#response[data-status=key_required]")
    assert "management key" in page.inner_text("#response")
    log_in(page, hub, key="not-the-key")
    assert "not the management key" in page.inner_text("#problem")
    # and no form without this session's CSRF token, even with the key's session
    log_in(page, hub)
    cookies = {c["name"]: c["value"] for c in browser.cookies()}
    forged = requests.post(f"{lan(hub)}/ui/device/heater_relay/command",
                           json={"values": {"state": "off"}}, cookies=cookies, timeout=5)
    assert forged.status_code == 403 and forged.json()["error"] == "csrf"
    cookie = next(c for c in browser.cookies() if c["name"] == "hub_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.close()


def test_hub_and_master_pages(hub: Instance, browser: Any) -> None:
    page = browser.new_page()
    page.goto(f"{lan(hub)}/ui/hub")
    page.wait_for_selector("#processes >> text=mqtt-bridge")
    wait_for(lambda: page.reload() and page.inner_text("#mqtt").strip() == "connected",
             timeout=20, what="the bridge's MQTT connection on the hub page")
    assert page.locator("#processes td:text-is('RUNNING')").count() == 5
    # the bridge's outbox (from its status file) and the readings history's retention figures
    assert page.inner_text("#outbox td[data-key=pending]").strip().isdigit()
    assert page.inner_text("#history-state").strip() == "ok"
    assert page.inner_text("#history td[data-key=stored]").strip().isdigit()
    assert page.locator("#last-retention").count() == 1
    shot(page, "hub")
    # a sensor that phones home shows on the master page with its status
    answer = requests.post(f"http://127.0.0.1:{hub.env['STATE_AGGREGATOR_PORT']}/master/register",
                           json={"sensor_id": "esp_ui", "sensor_name": "UI test sensor",
                                 "sensor_type": "climate"}, timeout=5,
                           headers=internal_headers(hub.env))
    assert answer.ok, answer.text
    page.goto(f"{lan(hub)}/ui/master")
    page.wait_for_selector("#sensors tr[data-id=esp_ui]")
    page.close()


def live_views(hub: Instance) -> str:
    found = re.search(r"live views</th><td>(\d+ of \d+)", requests.get(f"{lan(hub)}/ui/hub",
                                                                     timeout=5).text)
    return found.group(1) if found else "?"


def test_live_streams_are_capped_and_the_lan_api_still_answers(hub: Instance) -> None:
    # A closed tab's stream is noticed at its next write (a keep-alive at the latest).
    wait_for(lambda: live_views(hub) == "0 of 3", timeout=40, what="the pages' streams to end")
    streams = []
    try:
        for _ in range(3):  # DASHBOARD_STREAMS=3 in this instance
            r = requests.get(f"{lan(hub)}/ui/events", stream=True, timeout=10)
            assert r.status_code == 200
            streams.append(r)
        over = requests.get(f"{lan(hub)}/ui/events", timeout=5)
        assert over.status_code == 503 and over.headers["Retry-After"]
        assert requests.get(f"{lan(hub)}/api/health", timeout=5).ok
    finally:
        for r in streams:
            r.close()
    # closed streams give their slots back
    wait_for(lambda: live_views(hub) == "0 of 3", timeout=40, what="closed streams to end")


def test_first_page_is_under_200_kb(hub: Instance) -> None:
    html = requests.get(lan(hub) + "/", timeout=30)  # the first look waits for the feed's sync
    assets = re.findall(r'(?:href|src)="(/ui/static/[^"]+)"', html.text)
    total = len(html.content) + sum(len(requests.get(lan(hub) + a, timeout=5).content)
                                    for a in assets)
    print(f"first page: {len(html.content)} B HTML + {len(assets)} assets = {total / 1024:.1f} KB")
    assert assets and total < 200 * 1024
    # what a browser receives: the page gzipped (a 1,000-device table shrinks ~20x)
    zipped = requests.get(lan(hub) + "/", headers={"Accept-Encoding": "gzip"}, stream=True,
                          timeout=5)
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert len(zipped.raw.read()) < len(html.content)


SENSOR_TOKEN: dict[str, str] = {}  # the virtual sensor's token, from its register answer


def sensor_config(hub: Instance, etag: str | None = None) -> requests.Response:
    """A virtual sensor on the LAN fetching its config with its token, as the firmware does."""
    headers = {"If-None-Match": etag} if etag else {}
    headers["Authorization"] = f"Bearer {SENSOR_TOKEN['esp_tpl']}"
    return requests.get(f"{lan(hub)}/api/sensor-master/config/esp_tpl", headers=headers, timeout=5)


def test_a_template_edit_from_the_page_reaches_a_virtual_sensor(hub: Instance,
                                                               browser: Any) -> None:
    answer = requests.post(f"{lan(hub)}/api/sensor-master/register", timeout=5, json={
        "sensor_id": "esp_tpl", "sensor_name": "Template test", "sensor_type": "ui_climate"},
        headers={"X-Token": hub.hub_token})
    assert answer.ok, answer.text
    SENSOR_TOKEN["esp_tpl"] = answer.json()["token"]
    before = sensor_config(hub).json()
    assert sensor_config(hub, before["config_hash"]).status_code == 304
    browser.clear_cookies()
    page = browser.new_page()
    # without the key the form is refused
    page.goto(f"{lan(hub)}/ui/master")
    page.click("#template-form summary")
    page.fill("#template-form input[name=config_name]", "ui-interval")
    page.select_option("#template-form select[name=applies_to]", "sensor_type")
    page.fill("#template-form input[name=target]", "ui_climate")
    page.fill("#template-form textarea[name=config_data]", '{"report_interval": 42}')
    with page.expect_response(lambda r: r.url.endswith("/ui/master/templates")) as refused:
        page.click("#template-form button[type=submit]")
    assert refused.value.status == 401
    assert sensor_config(hub, before["config_hash"]).status_code == 304
    # with the key: JSON checked first, then saved, and the sensor's next fetch gets it
    log_in(page, hub)
    page.goto(f"{lan(hub)}/ui/master")
    page.click("#template-form summary")
    page.fill("#template-form input[name=config_name]", "ui-interval")
    page.fill("#template-form input[name=target]", "ui_climate")
    page.fill("#template-form textarea[name=config_data]", '{"report_interval": ')
    # checked as it is typed: the page says why and does not send the form
    page.wait_for_selector("#json-problem:visible >> text=not valid JSON")
    assert page.evaluate("document.querySelector('#template-form form').checkValidity()") is False
    # the hub checks it too (a form sent past the page's check: submit() skips it)
    page.evaluate("document.querySelector('#template-form form').submit()")
    page.wait_for_load_state()
    assert "not valid JSON" in page.inner_text("#outcome.problem")
    page.fill("#template-form input[name=config_name]", "ui-interval")
    page.fill("#template-form input[name=target]", "ui_climate")
    page.fill("#template-form textarea[name=config_data]", '{"report_interval": 42}')
    # the preview: which sensors the save would change, and their new config hash
    page.click("#preview-button")
    page.wait_for_selector("#preview-sensors tr[data-id=esp_tpl]")
    assert "1 sensor(s) a new config" in page.inner_text("#preview-summary")
    previewed = page.inner_text("#preview-sensors tr[data-id=esp_tpl] code.hash").strip()
    assert sensor_config(hub, before["config_hash"]).status_code == 304  # nothing saved yet
    shot(page, "master-preview")
    page.click("#template-form button[type=submit]")
    assert "1 sensor(s) get a new config" in page.inner_text("#outcome.ok")
    after = sensor_config(hub, before["config_hash"])
    assert after.status_code == 200, after.text
    assert after.json()["config"]["report_interval"] == 42
    assert after.json()["config_hash"] == previewed != before["config_hash"]
    # a command queued from the page, then canceled from it
    page.click("#command-form summary")
    page.fill("#command-form input[name=sensor_id]", "esp_tpl")
    page.fill("#command-form input[name=command_type]", "identify")
    page.click("#command-form button")
    assert "queued for esp_tpl" in page.inner_text("#outcome.ok")
    row = page.locator("#commands tr:has(td:text-is('esp_tpl'))").first
    row.locator("button:text-is('Cancel')").click()
    assert "canceled" in page.inner_text("#outcome.ok")
    page.wait_for_selector("#commands td.status.canceled")
    shot(page, "master")
    page.close()


def test_probes_page_lists_probe_devices_and_serves_the_csv_log(hub: Instance, browser: Any,
                                                                 probe: FakeProbe) -> None:
    ingest(hub, 19.5)
    browser.clear_cookies()
    page = browser.new_page()
    # the static probe: what it says it is (/whoami), its /status, the last provisioning
    wait_for(lambda: probe.provisions, timeout=30, what="the hub to provision the static probe")
    row = f"#probes tr[data-id={probe.probe_id}]"
    wait_for(lambda: page.goto(f"{lan(hub)}/ui/probes") and "fw 1.0.0-test" in page.inner_text(
        f"{row} .whoami").replace("\n", " "), timeout=20, what="the probe's whoami on the page")
    assert "mac 24:6F:28:00:00:01" in page.inner_text(f"{row} .whoami").replace("\n", " ")
    assert f"boot_id {probe.boot_id}" in page.inner_text(f"{row} .status-of").replace("\n", " ")
    assert page.inner_text(f"{row} .provision").startswith("ok: sent http://")
    # provisioning again is a change: with the key, the button does it and says so
    before = len(probe.provisions)
    log_in(page, hub)
    page.goto(f"{lan(hub)}/ui/probes")
    page.click(f"{row} button:text-is('Provision again')")
    assert f"{probe.probe_id} provisioned" in page.inner_text("#outcome.ok")
    assert len(probe.provisions) == before + 1
    page.wait_for_selector(f"#probe-devices a:text-is('{PROBE}')")
    with page.expect_download() as download:
        page.click("#csv")
    text = Path(download.value.path()).read_text()
    assert text.startswith("timestamp,probe_id,temperature_c") and f"{PROBE},19.5" in text
    # provisioning is a change: no CSRF token and no key, no provisioning
    refused = requests.post(f"{lan(hub)}/ui/probes/{PROBE}/provision", timeout=5)
    assert refused.status_code == 403
    shot(page, "probes")
    page.close()


def test_a_command_from_another_mqtt_client_shows_its_response_on_the_device_page(
        hub: Instance, browser: Any, mosquitto: Broker) -> None:
    page = browser.new_page()
    page.goto(f"{lan(hub)}/ui/device/heater_relay")
    page.wait_for_selector("#live.on")
    subprocess.run(["mosquitto_pub", "-h", mosquitto.host, "-p", str(mosquitto.port), "-q", "1",
                    "-t", f"{hub.root_topic}/devices/heater_relay/cmd",
                    "-m", '{"id": "from-mqtt-1", "values": {"state": "off"}}'],
                   check=True, timeout=10)
    page.wait_for_selector("#recent li.command[data-cmd=from-mqtt-1][data-status=success]",
                           timeout=15_000)
    assert '{"state":"off"}' in page.inner_text("#recent li[data-cmd=from-mqtt-1]")
    page.wait_for_selector("tr[data-id=heater_relay] .values >> text=/state \"?off/",
                           timeout=15_000)
    # and it is still there after a reload (the page renders what the feed kept)
    page.reload()
    page.wait_for_selector("#recent li.command[data-cmd=from-mqtt-1][data-status=success]")
    page.close()


def test_sensor_page_explains_its_config_rolls_back_and_edits_groups(hub: Instance,
                                                                     browser: Any) -> None:
    sensor = "esp_hist"
    answer = requests.post(f"{lan(hub)}/api/sensor-master/register", timeout=5, json={
        "sensor_id": sensor, "sensor_name": "History test", "sensor_type": "ui_hist"},
        headers={"X-Token": hub.hub_token})
    assert answer.ok, answer.text
    own = {"Authorization": f"Bearer {answer.json()['token']}"}  # the sensor's own token
    headers = {"X-API-Key": KEY}
    for interval in (10, 20):  # two template versions: the sensor gets v2, then v3
        made = requests.post(f"{lan(hub)}/api/sensor-master/configs", headers=headers, timeout=5,
                             json={"config_name": f"hist-{interval}", "sensor_type": "ui_hist",
                                   "config_data": {"report_interval": interval},
                                   "priority": 200 - interval})
        assert made.ok, made.text
    browser.clear_cookies()
    page = browser.new_page()
    log_in(page, hub)
    page.goto(f"{lan(hub)}/ui/master")
    page.click(f"#sensors tr[data-id={sensor}] a")
    # which template won, and why the other lost
    assert "'hist-20'" in page.inner_text("#reason")
    assert "priority 180 beats 190" in page.inner_text("#candidates")
    assert page.locator("#history tr[data-version]").count() == 3
    shot(page, "sensor")
    # roll back to the first version: pinned, and the sensor's next fetch gets it
    page.click("#history tr[data-version='2'] button:text-is('Roll back to this')")
    assert "rolled back to version 2" in page.inner_text("#outcome.ok")
    assert "pinned to version 4" in page.inner_text("#reason")
    fetched = requests.get(f"{lan(hub)}/api/sensor-master/config/{sensor}", timeout=5,
                           headers=own).json()
    assert fetched["config"]["report_interval"] == 10
    assert fetched["config_hash"] == page.inner_text("#hash").strip()
    page.click("#unpin")
    assert "follows its templates again" in page.inner_text("#outcome.ok")
    fetched = requests.get(f"{lan(hub)}/api/sensor-master/config/{sensor}", timeout=5,
                           headers=own).json()
    assert fetched["config"]["report_interval"] == 20
    # groups: made on the master page with a member, then left from the sensor's page
    page.goto(f"{lan(hub)}/ui/master")
    page.click("#group-form summary")
    page.fill("#group-form input[name=group_name]", "ui_floor")
    page.fill("#group-form input[name=sensors]", f"{sensor}, esp_tpl")
    page.click("#group-form button")
    assert "created with 2 sensor(s)" in page.inner_text("#outcome.ok")
    members = page.locator("#groups tr[data-id=ui_floor] input[name=sensors]")
    assert members.input_value() == f"{sensor} esp_tpl"
    members.fill(sensor)
    page.click("#groups tr[data-id=ui_floor] button:text-is('Save members')")
    assert "now has 1 sensor(s)" in page.inner_text("#outcome.ok")
    page.goto(f"{lan(hub)}/ui/master/sensor/{sensor}")
    assert page.inner_text("#groups").startswith("ui_floor")
    page.click("#groups button:text-is('Take out')")
    assert "taken out of group 'ui_floor'" in page.inner_text("#outcome.ok")
    assert page.inner_text("#groups").strip() == "In no group."
    page.close()


def test_a_reconnect_with_last_event_id_gets_what_changed_meanwhile(hub: Instance) -> None:
    """What a browser's EventSource does on a reconnect, by hand: ``Last-Event-ID`` is the id of
    the last event it had; it wins over the page's ``since`` (here from another epoch, which
    alone would ask for a reload)."""
    since = re.search(r'data-since="([^"]+)"', requests.get(lan(hub) + "/", timeout=30).text)
    assert since is not None
    # the other tests' pages are closed; their streams end at their next keep-alive
    wait_for(lambda: live_views(hub) == "0 of 3", timeout=40, what="the pages' streams to end")
    with requests.get(f"{lan(hub)}/ui/events", params={"since": since.group(1)}, stream=True,
                      timeout=30) as stream:
        assert stream.status_code == 200, stream.text
        ingest(hub, 30.25)
        seen = sse.first(stream, "devices")
    assert seen.id and seen.id.startswith(since.group(1).split(":")[0] + ":")
    ingest(hub, 31.5)  # while no stream is open; the dashboard's feed has it once its page does
    wait_for(lambda: re.search(r'"temperature_c": ?31\.5\b', requests.get(
        f"{lan(hub)}/ui/device/{PROBE}", timeout=30).text), timeout=20, what="the feed to have it")
    with requests.get(f"{lan(hub)}/ui/events", params={"since": "gone:1"}, stream=True,
                      headers={"Last-Event-ID": seen.id}, timeout=30) as again:
        assert again.status_code == 200, again.text
        replayed = sse.first(again, "devices")
    rows = {r["device_id"]: r for r in json.loads(replayed.data)["devices"]}
    assert rows[PROBE]["values"]["temperature_c"] == 31.5
    # an id the feed cannot replay (another epoch: the aggregator restarted) asks for a reload
    with requests.get(f"{lan(hub)}/ui/events", stream=True, timeout=30,
                      headers={"Last-Event-ID": "another-epoch:3"}) as stale:
        assert sse.first(stale, "reset").data == "{}"
