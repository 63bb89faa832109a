"""The bridge through a locked broker: a real mosquitto with a password file and a TLS listener
whose certificates come from a CA these tests make. The bridge works through both (with a
client certificate too); a wrong password, a broker certificate from an unknown CA or no
certificate where one is required is one clear log line, never a loop of them nor a traceback,
and ``status`` is never claimed ``online``."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.bridge import Bridge
from shared.jsonutil import loads
from shared.models import ReadingObs
from tests.connector.conftest import Hub
from tests.helpers import LOCKED_USERS, Broker, Subscriber, TestCa, make_test_ca, wait_for


@pytest.fixture
def observer(locked: Broker) -> Iterator[Subscriber]:
    sub = Subscriber(locked.host, locked.port, username="observer",
                     password=LOCKED_USERS["observer"])
    yield sub
    sub.close()


def tls_settings(broker: Broker, ca: TestCa, **more: Any) -> dict[str, Any]:
    assert broker.tls_port is not None
    return {"mqtt_port": broker.tls_port, "mqtt_tls": True, "mqtt_ca_file": ca.ca,
            "mqtt_cert_file": ca.client_cert, "mqtt_key_file": ca.client_key,
            "mqtt_username": "hub", "mqtt_password": LOCKED_USERS["hub"], **more}


def status_file(bridge: Bridge) -> dict[str, object]:
    path = bridge.ctx.settings.hub_run_dir / "mqtt-bridge.json"
    found: dict[str, object] = loads(path.read_bytes())
    return found


def test_the_bridge_works_through_a_password_and_tls_with_a_client_certificate(
        hub: Hub, locked: Broker, ca: TestCa, observer: Subscriber, tmp_path: Path) -> None:
    observer.subscribe(f"{hub.root}/#")
    bridge = hub.bridge(locked, tmp_path, **tls_settings(locked, ca))
    observer.wait(f"{hub.root}/status", where=lambda m: m.text == "online")
    hub.agg.ingest([ReadingObs(device_id="s1", ts=time.time(), values={"temperature": 21.5})])
    observer.wait(f"{hub.root}/devices/s1/state",
                  where=lambda m: m.json().get("temperature") == 21.5)
    assert bridge.client.url == f"mqtts://127.0.0.1:{locked.tls_port}"
    wait_for(lambda: status_file(bridge).get("connected") is True, what="the status file")


def test_the_bridge_works_with_a_password_on_the_plain_listener(
        hub: Hub, locked: Broker, observer: Subscriber, tmp_path: Path) -> None:
    observer.subscribe(f"{hub.root}/status")
    hub.bridge(locked, tmp_path, mqtt_username="hub", mqtt_password=LOCKED_USERS["hub"])
    observer.wait(f"{hub.root}/status", where=lambda m: m.text == "online")


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "shared.mqtt" and r.levelno >= logging.WARNING]


def attempts(caplog: pytest.LogCaptureFixture) -> int:
    """Connection attempts that failed: the first logged as an error, each later one at DEBUG."""
    return sum(1 for r in caplog.records if r.name == "shared.mqtt"
               and (r.levelno >= logging.ERROR or r.getMessage().endswith("(again)")))


@pytest.mark.parametrize("where", ["plain", "tls"])
def test_a_wrong_password_is_one_clear_line_and_status_never_online(
        hub: Hub, locked: Broker, ca: TestCa, observer: Subscriber, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, where: str) -> None:
    caplog.set_level(logging.DEBUG, logger="shared.mqtt")
    observer.subscribe(f"{hub.root}/#")
    wrong = {"mqtt_username": "hub", "mqtt_password": "not-the-password"}
    settings = tls_settings(locked, ca, **wrong) if where == "tls" else wrong
    bridge = hub.bridge(locked, tmp_path, **settings)
    wait_for(lambda: attempts(caplog) >= 3, timeout=20, what="three refused attempts")
    lines = refusals(caplog)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    message = lines[0].getMessage()
    assert "refused the connection: Bad user name or password" in message or \
        "refused the connection: Not authorized" in message, message
    assert "MQTT_USERNAME and MQTT_PASSWORD" in message
    assert lines[0].exc_info is None  # no traceback
    assert not bridge.client.connected.is_set()
    assert status_file(bridge)["connected"] is False
    assert observer.on(f"{hub.root}/status") == []  # nothing at all, least of all "online"


def test_a_broker_certificate_from_an_unknown_ca_is_one_clear_line(
        hub: Hub, locked: Broker, ca: TestCa, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="shared.mqtt")
    other = make_test_ca(tmp_path / "other-ca")
    bridge = hub.bridge(locked, tmp_path, **tls_settings(locked, ca, mqtt_ca_file=other.ca))
    wait_for(lambda: attempts(caplog) >= 3, timeout=20, what="three failed handshakes")
    lines = refusals(caplog)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "certificate verify failed" in lines[0].getMessage()
    assert "check MQTT_CA_FILE" in lines[0].getMessage()
    assert not bridge.client.connected.is_set()


def test_tls_insecure_connects_to_a_broker_it_cannot_verify_only_when_asked(
        hub: Hub, locked: Broker, ca: TestCa, observer: Subscriber, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    other = make_test_ca(tmp_path / "other-ca")
    observer.subscribe(f"{hub.root}/status")
    hub.bridge(locked, tmp_path, **tls_settings(locked, ca, mqtt_ca_file=other.ca,
                                                 mqtt_tls_insecure=True))
    observer.wait(f"{hub.root}/status", where=lambda m: m.text == "online")
    assert any("MQTT_TLS_INSECURE" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)


def test_without_the_client_certificate_the_broker_that_wants_one_is_not_reached(
        hub: Hub, locked: Broker, ca: TestCa, observer: Subscriber, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="shared.mqtt")
    observer.subscribe(f"{hub.root}/status")
    bridge = hub.bridge(locked, tmp_path, **tls_settings(locked, ca, mqtt_cert_file=None,
                                                          mqtt_key_file=None))
    wait_for(lambda: attempts(caplog) >= 2, timeout=20, what="refused attempts")
    assert len(refusals(caplog)) == 1
    assert not bridge.client.connected.is_set()
    assert observer.on(f"{hub.root}/status") == []
