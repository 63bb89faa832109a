"""Inbound routing: one parse, one handler per kind; the subscribed filters and the handlers
match one to one (derived from the running bridge, not listed here); input the bridge cannot
serve gets an error answer on MQTT; and the bridge process loads neither Flask nor gunicorn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from paho.mqtt.client import topic_matches_sub

from shared.topics import Route
from tests.conftest import ROOT
from tests.connector.conftest import Hub
from tests.helpers import Broker, Subscriber, publish, wait_for


def test_every_subscribed_filter_has_a_handler_and_every_handler_a_filter(
        broker: Broker, hub: Hub, tmp_path: Path) -> None:
    bridge = hub.bridge(broker, tmp_path)
    topics = bridge.ctx.topics
    filters = [f for f, _qos in bridge.client.subscriptions]
    assert filters and len(set(filters)) == len(filters)
    for topic_filter in filters:
        # A concrete topic under the filter parses to a kind that has a handler.
        route = topics.parse(topic_filter.replace("+", "x1"))
        assert route is not None, f"{topic_filter} parses to nothing the bridge serves"
        assert route.kind in bridge.dispatch, f"nothing handles {topic_filter}"
    for kind in bridge.dispatch:
        topic = topics.build(Route(kind, "x1"))
        assert any(topic_matches_sub(f, topic) for f in filters), f"no filter brings {kind}"


def test_the_bridge_imports_neither_flask_nor_gunicorn() -> None:
    code = ("import sys, connector.__main__, connector.bridge; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'flask', 'gunicorn', 'werkzeug'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"


def test_bad_ids_unknown_groups_and_devices_get_answers_on_mqtt(
        broker: Broker, hub: Hub, tmp_path: Path) -> None:
    root = hub.root
    sub = Subscriber(broker.host, broker.port).subscribe(f"{root}/#")
    bridge = hub.bridge(broker, tmp_path)
    try:
        sub.wait(f"{root}/status", where=lambda m: m.text == "online")
        wait_for(lambda: bridge.ctx.mirror.synced, what="the device list loaded")
        bad = f"{root}/devices/bad.id/cmd"
        publish(broker.host, broker.port, bad, json.dumps({"id": "c-bad", "values": {"a": 1}}))
        error = sub.wait(f"{root}/meta/error", where=lambda m: m.json()["topic"] == bad).json()
        assert error["error_code"] == "INVALID_TOPIC" and error["id"] == "c-bad"
        assert "invalid device_id 'bad.id'" in error["message"]
        assert error["timestamp"].endswith("Z") and not sub.wait(f"{root}/meta/error").retain

        publish(broker.host, broker.port, f"{root}/groups/nogroup/cmd",
                json.dumps({"id": "g-x", "values": {"a": 1}}))
        error = sub.wait(f"{root}/meta/error",
                         where=lambda m: m.json()["error_code"] == "UNKNOWN_GROUP").json()
        assert error["id"] == "g-x" and "nogroup" in error["message"]

        publish(broker.host, broker.port, f"{root}/meta/request/what%3F", b"{}")
        sub.wait(f"{root}/meta/error", where=lambda m: m.json()["topic"].endswith("what%3F"))

        publish(broker.host, broker.port, f"{root}/devices/ghost/get", b"")
        error = sub.wait(f"{root}/devices/ghost/error").json()
        assert error["error_code"] == "UNKNOWN_DEVICE"
        publish(broker.host, broker.port, f"{root}/devices/ghost/cmd",
                json.dumps({"id": "c-ghost", "values": {"a": 1}}))
        answer = sub.wait(f"{root}/devices/ghost/cmd/response").json()
        assert answer["status"] == "rejected" and "unknown device" in answer["error"]
    finally:
        sub.close()
