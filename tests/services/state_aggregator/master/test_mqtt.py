"""Master control over MQTT: the real bridge against a real mosquitto and a real aggregator with
master control served over HTTP; virtual sensors are MQTT clients of the test."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from werkzeug.serving import BaseWSGIServer

from connector.bridge import Bridge
from connector.features.master import MasterFeature
from services.state_aggregator.app import create_app
from services.state_aggregator.core import Aggregator
from services.state_aggregator.master.admin import MasterAdmin
from services.state_aggregator.master.db import Database
from services.state_aggregator.master.routes import MasterControl
from services.state_aggregator.master.service import MasterService
from shared.master_models import CommandCreate, SensorRegister, TemplateIn, TemplatePatch
from shared.settings import Settings
from shared.topics import Topics
from tests.connector.conftest import serve
from tests.helpers import Broker, Subscriber, publish, retained, unique_base, wait_for
from tests.services.state_aggregator.test_aggregator import INSTANCE

SID = "esp_mqtt_1"
MAPPINGS = [{"sensor_name": "sensor.temperature", "entry_field": "Temperature", "unit": "°C",
             "data_type": "float"}]


@dataclass
class Setup:
    broker: Broker
    service: MasterService
    admin: MasterAdmin
    agg: Aggregator
    topics: Topics
    bridge: Bridge
    sub: Subscriber

    def send(self, topic: str, payload: Any) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload)
        publish(self.broker.host, self.broker.port, topic, raw)


@pytest.fixture
def hub(mosquitto: Broker, tmp_path: Path) -> Iterator[Setup]:
    agg = Aggregator(INSTANCE, handlers={}, cache_ttl=10, poll_interval=5)
    service = MasterService(Database(tmp_path / "master.db"), sink=agg)
    service.start()
    admin = MasterAdmin(service)
    server: BaseWSGIServer = serve(create_app(agg, master=MasterControl(service, admin)))
    base = unique_base()
    topics = Topics(base, "t")
    sub = Subscriber(mosquitto.host, mosquitto.port).subscribe(f"{topics.root}/#")
    settings = Settings(instance_name="t", mqtt_host=mosquitto.host, mqtt_port=mosquitto.port,
                        mqtt_base_topic=base, hub_run_dir=tmp_path / "run", mqtt_keepalive=5,
                        state_aggregator_url=f"http://127.0.0.1:{server.server_port}",
                        data_dir=tmp_path / "data", ha_discovery_prefix=f"{base}-ha")
    bridge = Bridge(settings, INSTANCE)
    bridge.start()
    sub.wait(topics.status, where=lambda m: m.text == "online")
    yield Setup(mosquitto, service, admin, agg, topics, bridge, sub)
    bridge.stop()
    sub.close()
    service.stop()
    agg.stop()
    server.shutdown()
    service.db.close()


def test_a_virtual_mqtt_sensor_round_trip(hub: Setup) -> None:
    t, sub = hub.topics, hub.sub
    made = hub.admin.create_template(TemplateIn(config_name="t", sensor_type="esp32",
                                                config_data={"polling_interval": 60,
                                                             "sensor_mappings": MAPPINGS}))
    hub.send(t.sensor_register(SID), {"sensor_id": SID, "sensor_type": "esp32"})
    first = retained(hub.broker.host, hub.broker.port, t.sensor_config(SID)).json()
    assert (first["config_available"], first["config_version"]) == (True, 1)
    assert first["config"]["polling_interval"] == 60 and first["masters"] == []

    # a template edit is republished, retained, without the sensor asking
    hub.admin.update_template(made["id"], TemplatePatch(
        config_data={"polling_interval": 30, "sensor_mappings": MAPPINGS}))
    second = retained(hub.broker.host, hub.broker.port, t.sensor_config(SID),
                      where=lambda m: m.json()["config_version"] == 2).json()
    assert second["config"]["polling_interval"] == 30

    # a queued command goes out at once, and again on the next heartbeat until acknowledged
    cmd = hub.admin.create_command(CommandCreate(sensor_id=SID, command_type="set_target_temp",
                                                 command_data={"target": 18.5}))
    sent = sub.wait(t.sensor_commands(SID)).json()
    assert (sent["command_id"], sent["command_data"]) == (cmd["command_id"], {"target": 18.5})
    assert not sub.wait(t.sensor_commands(SID)).retain
    hub.send(t.sensor_heartbeat(SID), {"status": "online", "config_hash": first["config_hash"]})
    wait_for(lambda: len(sub.on(t.sensor_commands(SID))) >= 2, what="the command sent again")
    hub.send(t.sensor_ack(SID), {"command_id": cmd["command_id"], "status": "completed",
                                 "result": {"ok": True}})
    wait_for(lambda: hub.admin.command(cmd["command_id"])["status"] == "completed",
             what="the ack recorded")

    # data: a batch after an offline period becomes device state, mapped
    now = time.time()
    hub.send(t.sensor_data(SID), {"batch": [
        {"timestamp": now - 20, "readings": {"sensor.temperature": 18.0}},
        {"timestamp": now - 10, "readings": {"sensor.temperature": 18.5}}]})
    state = sub.wait(t.state(SID), where=lambda m: m.json().get("temperature") == 18.5).json()
    assert state["device_id"] == SID
    assert hub.admin.sensor(SID)["status"] == "online"


@pytest.mark.parametrize(("where", "payload", "code", "needle"), [
    ("register", b"{not json", "INVALID_REQUEST", "not valid JSON"),
    ("heartbeat", b"[1]", "INVALID_REQUEST", "must be a JSON object"),
    ("data", b"", "INVALID_REQUEST", "empty payload"),
    ("data", b'{"readings": {}}', "INVALID_BODY", "readings"),
    ("ack", b'{"status": "completed"}', "INVALID_REQUEST", "invalid command_id"),
    ("heartbeat", b'{"sensor_id": "other"}', "INVALID_REQUEST", "is not the topic's"),
])
def test_bad_input_on_every_topic_is_answered(hub: Setup, where: str, payload: bytes, code: str,
                                              needle: str) -> None:
    t = hub.topics
    topic = {"register": t.sensor_register, "heartbeat": t.sensor_heartbeat,
             "data": t.sensor_data, "ack": t.sensor_ack}[where](SID)
    hub.send(topic, payload)
    error = hub.sub.wait(t.error(SID)).json()
    assert error["error_code"] == code and needle in error["message"], error


def test_an_unknown_sensor_is_asked_to_register(hub: Setup) -> None:
    hub.send(hub.topics.sensor_heartbeat("ghost"), {"status": "online"})
    error = hub.sub.wait(hub.topics.error("ghost")).json()
    assert error["error_code"] == "UNKNOWN_SENSOR" and "register first" in error["message"]


def test_a_bad_sensor_id_in_the_topic_is_answered_on_meta_error(hub: Setup) -> None:
    topic = f"{hub.topics.root}/sensors/bad.id/heartbeat"
    hub.send(topic, {"status": "online"})
    error = hub.sub.wait(f"{hub.topics.root}/meta/error",
                         where=lambda m: m.json()["topic"] == topic).json()
    assert "invalid sensor_id 'bad.id'" in error["message"]


def test_a_type_wide_template_change_republishes_every_config(hub: Setup) -> None:
    n = 1000
    for i in range(n):
        hub.service.register(SensorRegister(sensor_id=f"fleet_{i:04d}", sensor_type="fleet"))
    made = hub.admin.create_template(TemplateIn(config_name="fleet", sensor_type="fleet",
                                                config_data={"v": 1}))
    wait_for(lambda: len([m for m in hub.sub.messages if m.topic.endswith("/config")]) >= n,
             timeout=60, what="the first configs")
    hub.sub.clear()
    hub.admin.update_template(made["id"], TemplatePatch(config_data={"v": 2}))

    def republished() -> int:
        with hub.sub.lock:
            return sum(1 for m in hub.sub.messages
                       if m.topic.endswith("/config") and m.json()["config"] == {"v": 2})

    # how fast is the bench's figure (./hub bench --only master); here: every one of them
    wait_for(lambda: republished() >= n, timeout=60, what=f"{n} configs republished")


def test_a_mapping_change_reaches_home_assistant_discovery(hub: Setup) -> None:
    """The unit of a mapped reading is the config's: a template edit that changes it changes
    the entity's ``unit_of_measurement`` without a restart."""
    t, sub = hub.topics, hub.sub
    prefix = hub.bridge.ctx.settings.ha_discovery_prefix
    ha = Subscriber(hub.broker.host, hub.broker.port).subscribe(f"{prefix}/#")
    try:
        made = hub.admin.create_template(TemplateIn(config_name="t", sensor_type="esp32",
                                                    config_data={"sensor_mappings": MAPPINGS}))
        hub.send(t.sensor_register(SID), {"sensor_id": SID, "sensor_type": "esp32"})
        sub.wait(t.sensor_config(SID))
        hub.send(t.sensor_data(SID), {"readings": {"sensor.temperature": 18.5}})
        entity = f"{prefix}/sensor/t_{SID}/temperature/config"
        first = ha.wait(entity, where=lambda m: bool(m.payload)).json()
        assert first["unit_of_measurement"] == "°C"
        hub.admin.update_template(made["id"], TemplatePatch(config_data={"sensor_mappings": [
            {**MAPPINGS[0], "unit": "°F"}]}))
        second = ha.wait(entity, where=lambda m: bool(m.payload)
                         and m.json().get("unit_of_measurement") == "°F").json()
        assert second["unique_id"] == first["unique_id"]
        assert hub.agg.devices[SID].units == {"temperature": "°F"}
    finally:
        ha.close()


def test_a_flood_on_the_sensor_topics_is_served_or_refused_and_nothing_grows(hub: Setup) -> None:
    """Many sensors register, heart-beat and send data as fast as one paho client publishes:
    every message the bridge gets is either served or refused (``BUSY`` on the sensor's error
    topic, or counted when even that answer cannot be queued); its queues never hold more than
    their bounds; afterwards both the bridge and the aggregator serve a new sensor at once."""
    t = hub.topics
    feature = next(f for f in hub.bridge.features if isinstance(f, MasterFeature))
    n_sensors, rounds = 100, 20
    deepest = [0]
    flooding = threading.Event()

    def watch() -> None:  # the bounds, sampled while the flood lasts
        while flooding.is_set():
            deepest[0] = max(deepest[0], *(w.pending for w in feature._workers))
            time.sleep(0.001)

    # The answers on a subscriber of their own: hub.sub gets the flood too, and the broker drops
    # for a subscriber that falls max_queued_messages (1,000) behind, answers among them.
    errors = Subscriber(hub.broker.host, hub.broker.port).subscribe(t.error("SID").replace("SID", "+"))
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-{uuid.uuid4().hex[:8]}")
    pub.max_inflight_messages_set(200)
    pub.connect(hub.broker.host, hub.broker.port)
    pub.loop_start()
    sent = 0
    flooding.set()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        messages: list[tuple[str, bytes]] = [
            (t.sensor_register(f"flood_{i:03d}"), b'{"sensor_type": "flood"}')
            for i in range(n_sensors)]
        for k in range(rounds):
            for i in range(n_sensors):
                sid = f"flood_{i:03d}"
                messages.append((t.sensor_heartbeat(sid), b'{"status": "online"}'))
                messages.append((t.sensor_data(sid), json.dumps(
                    {"batch": [{"id": f"{sid}-{k}", "readings": {"n": k}}]}).encode()))
        infos = [pub.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(30)
        sent = len(infos)

        def settled() -> bool:
            """Nothing queued and no message arrived for a second (the broker has sent all it
            will: past its own queue bound, max_queued_messages, it drops for a subscriber
            that is behind, and those never reach the bridge)."""
            now = (feature.received, sum(w.done for w in feature._workers))
            quiet = now == last[0] and not any(w.pending for w in feature._workers)
            if now != last[0]:
                last[:] = [now, time.monotonic()]
            return quiet and time.monotonic() - last[1] > 1.0

        last: list[Any] = [(-1, -1), time.monotonic()]
        wait_for(settled, timeout=120, what="the flood served or refused")
    finally:
        flooding.clear()
        watcher.join(5)
        pub.loop_stop()
        pub.disconnect()
    done = sum(w.done for w in feature._workers)
    refused = sum(w.refused for w in feature._workers)
    # each message the bridge got once: served or refused, none lost inside, none served twice
    assert done + refused == feature.received <= sent
    assert refused > 0, "the flood never filled the queue: it tested nothing"
    bound = max(w._queue.maxsize for w in feature._workers)
    assert 0 < deepest[0] <= bound
    # the refusals were answered, or counted where the answers' own queue was full
    def busy() -> int:
        with errors.lock:
            return len([m for m in errors.messages
                        if m.topic.endswith("/error") and b'"BUSY"' in m.payload])

    answers = hub.bridge.ctx.answers
    try:
        wait_for(lambda: busy() + answers.dropped >= refused,
                 what=lambda: f"every refusal answered or counted: {refused} refused, {busy()} "
                              f"BUSY received, {answers.dropped} dropped, {answers.published} "
                              f"answers published")
    finally:
        errors.close()
    # both keep serving: a new sensor registers and gets its config; a flood sensor's heartbeat
    # is served; the bridge is still connected
    hub.send(t.sensor_register("after_flood"), {"sensor_type": "flood"})
    assert hub.sub.wait(t.sensor_config("after_flood"), timeout=30).json()["config_version"] == 1
    registered = {s["sensor_id"] for s in hub.admin.sensors()}
    assert "after_flood" in registered and len(registered & {f"flood_{i:03d}" for i in
                                                              range(n_sensors)}) > 0
    assert hub.bridge.ctx.client.connected.is_set()
