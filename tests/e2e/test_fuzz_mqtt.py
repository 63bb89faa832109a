"""Fuzzing every inbound MQTT topic of a running instance (the real supervisord, the real
mosquitto): hypothesis publishes random bytes, JSON of the wrong types, huge and deeply nested
JSON, retained or not, on every topic kind the bridge subscribes to (``shared.topics.ROUTE_KINDS``
and Home Assistant's ``status``: a new kind is fuzzed without touching this file), with real ids
and odd topic segments. Between them a ``meta/request/info`` is asked every 25 messages and each
must be answered; afterwards the bridge has the same pid, ``status`` never said ``offline``, the errors
the contract promises still come, and a normal command still round-trips.

Bounded: ``FUZZ_MESSAGES`` messages (default 300), derandomized, so a run is repeatable.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from shared.processes import PROCESS_NAMES
from shared.topics import ID_RE, ROUTE_KINDS, RouteKind, Topics
from tests.e2e.conftest import Instance, demo_instance
from tests.helpers import Broker, Subscriber, retained, unique_base, wait_for

pytestmark = pytest.mark.e2e

MESSAGES = int(os.environ.get("FUZZ_MESSAGES", "300"))
PING_EVERY = 25  # fuzzed messages between two pings
PING_DEADLINE_S = 30.0  # a loaded CI machine; the answers usually take milliseconds
DEVICES = ("temp_living_room", "temp_bedroom", "heater_relay", "motion_hallway", "hub_system")
META_KINDS = ("devices_list", "info", "health", "rebirth", "history")


@dataclass
class Fuzzed:
    instance: Instance
    topics: Topics
    ha_prefix: str
    bridge_pid: int


def pids(inst: Instance) -> dict[str, int]:
    found = {}
    for line in inst.supervisorctl("status").stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "RUNNING" and parts[2] == "pid":
            found[parts[0]] = int(parts[3].rstrip(","))
    return found


@pytest.fixture(scope="module")
def fuzzed(mosquitto: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    # Home Assistant's status topic of this instance alone: other tests share the broker.
    ha_prefix = f"{unique_base()}-ha"
    with demo_instance(mosquitto, tmp_path_factory.mktemp("fuzz-mqtt"),
                       HA_DISCOVERY_PREFIX=ha_prefix) as inst:
        running = wait_for(lambda: (p := pids(inst)) and set(p) == set(PROCESS_NAMES) and p,
                           timeout=30, what="every program RUNNING")
        base, _, _ = inst.root_topic.partition("/v1/instances/")
        yield Fuzzed(inst, Topics(base, "demo", ha_prefix=ha_prefix), ha_prefix,
                     running["mqtt-bridge"])


# --- what is published ---------------------------------------------------------------------------

def segments() -> st.SearchStrategy[str]:
    """A topic segment: a real id, any valid id, or an odd one (spaces, dots, unicode, too long,
    empty); never ``+``, ``#``, control characters or noncharacters, which MQTT forbids in a
    topic name (the broker drops a client that sends them)."""
    odd = st.text(st.characters(blacklist_characters="+#/", blacklist_categories=["Cs", "Cc", "Cn"]),
                  max_size=80)
    return st.one_of(st.sampled_from((*DEVICES, "climate", "unknown_dev")),
                     st.from_regex(ID_RE, fullmatch=True), odd, st.just("a" * 65),
                     st.just(".."), st.just(""))


def topic_for(kind: RouteKind, topics: Topics, segment: str) -> str:
    return topics.filter(kind).replace("+", segment)


JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40))
JSON = st.recursive(JSON_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=20), inner, max_size=5)),
    max_leaves=20)
# Field names the inbound models know, so the JSON reaches their validation with wrong types.
FIELDS = ("id", "values", "timeout", "timestamp", "properties", "device_id", "start", "end",
          "limit", "sensor_id", "sensor_type", "status", "config_hash", "metrics", "command_id",
          "result", "readings", "batch", "capabilities")


def payloads() -> st.SearchStrategy[bytes]:
    shaped = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6)
    return st.one_of(
        st.binary(max_size=200),
        JSON.map(orjson.dumps),
        shaped.map(orjson.dumps),
        st.integers(1, 1_000_000).map(lambda n: b'{"values": {"x": "' + b"a" * n + b'"}}'),
        st.integers(100, 100_000).map(lambda n: b"[" * n + b"]" * n),  # deeply nested
        st.integers(100, 50_000).map(lambda n: orjson.dumps({"values": {f"p{i}": i for i in range(n)}})),
        st.sampled_from([b"", b"null", b"[]", b"{}", b'"online"', b"online", b"offline",
                         b"\xff\xfe", b'{"values": {"state": "on"}, "timeout": 1e308}']),
    )


@dataclass
class Pinger:
    """Asks ``meta/request/info`` between the fuzzer's messages (every ``PING_EVERY``-th); every
    question must be answered: the bridge serves while it is flooded, not only afterwards."""

    client: paho.Client
    topics: Topics
    asked: list[str] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ask(self) -> None:
        ping = f"ping-{uuid.uuid4().hex[:8]}"
        self.asked.append(ping)
        self.client.publish(f"{self.topics.root}/meta/request/info", orjson.dumps({"id": ping}),
                            qos=1)

    def on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        try:
            answer = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        if isinstance(answer, dict) and isinstance(answer.get("id"), str):
            with self.lock:
                self.answered.add(answer["id"])

    def unanswered(self) -> list[str]:
        with self.lock:
            return [p for p in self.asked if p not in self.answered]


def publisher(broker: Broker) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"fuzz-{uuid.uuid4().hex[:8]}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


# --- the tests ------------------------------------------------------------------------------------

def test_fuzzing_every_inbound_topic_leaves_the_bridge_up_and_answering(
        fuzzed: Fuzzed, mosquitto: Broker) -> None:
    topics = fuzzed.topics
    kinds: list[RouteKind] = [*ROUTE_KINDS, "ha_status"]
    status = Subscriber(mosquitto.host, mosquitto.port).subscribe(topics.status)
    answers = Subscriber(mosquitto.host, mosquitto.port)
    client = publisher(mosquitto)
    pinger = Pinger(client, topics)
    answers.client.on_message = pinger.on_message
    answers.subscribe(topics.meta("info"))
    sent: dict[str, int] = {}
    try:
        @settings(max_examples=MESSAGES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(kind=st.sampled_from(kinds), segment=segments(), payload=payloads(),
               retain=st.booleans())
        def publish(kind: RouteKind, segment: str, payload: bytes, retain: bool) -> None:
            topic = topic_for(kind, topics, segment) if kind != "ha_status" else \
                f"{fuzzed.ha_prefix}/status"
            if kind == "meta_request" and segment in ("", "a"):
                topic = topic_for(kind, topics, META_KINDS[len(payload) % len(META_KINDS)])
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
            sent[kind] = sent.get(kind, 0) + 1
            if sum(sent.values()) % PING_EVERY == 0:
                pinger.ask()

        publish()
        pinger.ask()
        wait_for(lambda: not pinger.unanswered(), timeout=PING_DEADLINE_S,
                 what=f"answers to the {len(pinger.asked)} pings asked during the fuzzing")
    finally:
        # Clear what the fuzzer left retained under this instance's root (never acted upon).
        for kind in kinds:
            for seg in DEVICES:
                client.publish(topic_for(kind, topics, seg) if kind != "ha_status"
                               else f"{fuzzed.ha_prefix}/status", b"", qos=1, retain=True)
        client.loop_stop()
        client.disconnect()
        answers.close()
        status.close()
    assert set(sent) == set(kinds), sent  # every kind was fuzzed
    assert sum(sent.values()) >= MESSAGES * 0.8, sent  # hypothesis skips only duplicates
    assert len(pinger.asked) > MESSAGES * 0.8 // PING_EVERY
    assert [m.text for m in status.messages if m.text != "online"] == []
    assert pids(fuzzed.instance).get("mqtt-bridge") == fuzzed.bridge_pid
    assert retained(mosquitto.host, mosquitto.port, topics.status).text == "online"


@pytest.fixture
def sub(fuzzed: Fuzzed, mosquitto: Broker) -> Iterator[Subscriber]:
    s = Subscriber(mosquitto.host, mosquitto.port)
    root = fuzzed.topics.root
    for topic in (f"{root}/devices/+/cmd/response", f"{root}/devices/+/error", f"{root}/meta/+"):
        s.subscribe(topic)
    yield s
    s.close()


def send(mosquitto: Broker, topic: str, payload: bytes) -> None:
    client = publisher(mosquitto)
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def test_after_the_fuzzing_bad_input_still_gets_the_contracts_errors(
        fuzzed: Fuzzed, mosquitto: Broker, sub: Subscriber) -> None:
    root = fuzzed.topics.root
    send(mosquitto, f"{root}/devices/heater_relay/cmd", b'{"id": "bad-1", "values": 5')
    answer = sub.wait(f"{root}/devices/heater_relay/cmd/response", timeout=20).json()
    assert answer["status"] == "error"
    send(mosquitto, f"{root}/devices/a b/cmd", b'{"id": "bad-2", "values": {}}')
    error = sub.wait(f"{root}/meta/error", timeout=20,
                     where=lambda m: m.json().get("topic") == f"{root}/devices/a b/cmd").json()
    assert error["error_code"] == "INVALID_TOPIC"
    send(mosquitto, f"{root}/sensors/never_registered/heartbeat", b'{"status": "ok"}')
    unknown = sub.wait(f"{root}/devices/never_registered/error", timeout=20).json()
    assert unknown["error_code"] == "UNKNOWN_SENSOR"


def test_after_the_fuzzing_a_normal_command_round_trips(
        fuzzed: Fuzzed, mosquitto: Broker, sub: Subscriber) -> None:
    root = fuzzed.topics.root
    send(mosquitto, f"{root}/devices/heater_relay/cmd",
         orjson.dumps({"id": "after-fuzz", "values": {"state": "on"}, "timeout": 5000}))
    answer = sub.wait(f"{root}/devices/heater_relay/cmd/response", timeout=20,
                      where=lambda m: m.json().get("cmd_id") == "after-fuzz"
                      and m.json().get("status") != "accepted").json()
    assert answer["status"] == "success", answer
    assert pids(fuzzed.instance).get("mqtt-bridge") == fuzzed.bridge_pid


def test_the_bridge_logged_no_crash(fuzzed: Fuzzed) -> None:
    crashes = [line for line in fuzzed.instance.output
               if "Traceback" in line or "unhandled" in line.lower()]
    assert crashes == [], "\n".join(crashes[:20])
