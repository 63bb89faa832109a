"""A virtual probe's HTTP face over real sockets: /whoami, /status, /provision (persisted across
a reboot), and garbage refused with a clear error while the probe keeps running."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from firmware import VERSION
from firmware.host import VirtualProbe, probe_ids
from tests.helpers import wait_for


@pytest.fixture
def probe(tmp_path: Path) -> Iterator[VirtualProbe]:
    vp = VirtualProbe("probe-t", tmp_path, bind="127.0.0.1", interval_ms=200).start()
    yield vp
    vp.stop()


def test_whoami_and_status(probe: VirtualProbe) -> None:
    who = requests.get(probe.url + "/whoami", timeout=5).json()
    assert who["id"] == "probe-t" and who["fw"] == VERSION and len(who["mac"]) == 17
    status = requests.get(probe.url + "/status", timeout=5).json()
    assert status["provisioned"] is False and status["server_url"] is None
    for key in ("uptime_s", "boot_id", "interval_ms", "last_error", "buffered", "dropped",
                "free_memory", "rssi"):
        assert key in status


def test_provision_is_stored_and_survives_a_reboot(tmp_path: Path, probe: VirtualProbe) -> None:
    body = {"server_url": "http://127.0.0.1:9/", "interval_ms": 250, "token": "tok"}
    assert requests.post(probe.url + "/provision", json=body, timeout=5).json() == {"ok": True}
    first = requests.get(probe.url + "/status", timeout=5).json()
    assert (first["server_url"], first["interval_ms"], first["provisioned"]) == (
        "http://127.0.0.1:9", 250, True)
    probe.stop()
    again = VirtualProbe("probe-t", tmp_path, bind="127.0.0.1").start()
    try:
        status = requests.get(again.url + "/status", timeout=5).json()
        assert (status["server_url"], status["interval_ms"]) == ("http://127.0.0.1:9", 250)
        assert status["boot_id"] != first["boot_id"]
    finally:
        again.stop()


@pytest.mark.parametrize(("data", "status", "words"), [
    (b"{nope", 400, "not JSON"),
    (b"[1, 2]", 422, "JSON object"),
    (b'{"server_url": "ftp://x", "interval_ms": 1000}', 422, "server_url"),
    (b'{"server_url": "http://h:1", "interval_ms": "fast"}', 422, "interval_ms"),
    (b'{"server_url": "http://h:1", "interval_ms": 10}', 422, "interval_ms"),
    (b'{"server_url": "http://h:1", "interval_ms": 1000, "token": 5}', 422, "token"),
    (b"x" * 10_000, 413, "at most"),
])
def test_garbage_on_provision_is_refused_clearly(probe: VirtualProbe, data: bytes, status: int,
                                                 words: str) -> None:
    resp = requests.post(probe.url + "/provision", data=data, timeout=5)
    assert resp.status_code == status
    assert resp.json()["ok"] is False and words in resp.json()["message"]
    assert requests.get(probe.url + "/status", timeout=5).json()["provisioned"] is False


def test_broken_requests_do_not_stop_the_probe(probe: VirtualProbe) -> None:
    for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", b"\x00\xff" * 50):
        with socket.create_connection(("127.0.0.1", probe.port), timeout=5) as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100).startswith(b"HTTP/1.0 400")
    with socket.create_connection(("127.0.0.1", probe.port), timeout=5):
        pass  # a client that connects and says nothing costs one timeout, not the probe
    assert requests.get(probe.url + "/nope", timeout=5).status_code == 404
    assert requests.get(probe.url + "/whoami", timeout=5).ok


def test_setup_page_saves_wifi_credentials(probe: VirtualProbe) -> None:
    assert b"<form" in requests.get(probe.url + "/", timeout=5).content
    bad = requests.post(probe.url + "/setup", data={"password": "x"}, timeout=5)
    assert bad.status_code == 422 and "ssid" in bad.json()["message"]
    boots = probe.boots
    ok = requests.post(probe.url + "/setup", data={"ssid": "home net", "password": "p%ss",
                                                   "hub": "http://10.0.0.2:8088"}, timeout=5)
    assert ok.json()["ok"] is True
    assert probe.hal.read("wifi.json") == (
        b'{"ssid": "home net", "password": "p%ss", "hub": "http://10.0.0.2:8088"}')
    wait_for(lambda: probe.boots > boots, what="the probe to boot again after the setup")


def test_probe_ids_for_many() -> None:
    assert probe_ids("probe", 1) == ["probe"]
    assert probe_ids("probe", 3) == ["probe-1", "probe-2", "probe-3"]
