"""A full disk under the real instance: DATA_DIR on a tmpfs of 16 MB (root only), filled to the
last byte while the demo's sensors report. Live states keep reaching MQTT, the aggregator's
``/health`` says degraded with the reason, and once space returns the history stores again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import Instance, demo_instance
from tests.helpers import Broker, Subscriber, tmpfs, wait_for

pytestmark = pytest.mark.e2e
DEVICE = "temp_living_room"


@pytest.fixture
def small(mosquitto: Broker, tmp_path: Path) -> Iterator[Instance]:
    with tmpfs(tmp_path / "data", "16m"), demo_instance(mosquitto, tmp_path) as inst:
        yield inst


def test_a_full_disk_degrades_the_history_not_the_live_data(
        small: Instance, mosquitto: Broker, subscriber: Subscriber) -> None:
    data = Path(small.env["DATA_DIR"])
    wait_for(lambda: small.aggregator_health()["history"]["stored"] > 0, timeout=30,
             what="a stored reading")
    ballast = data / "ballast"
    with ballast.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass  # ENOSPC: the disk is full to its last block
    # Both stores on the disk say so: the history, and the durable change log (the outbox).
    degraded = wait_for(lambda: (h := small.aggregator_health())["history"]["state"] == "degraded"
                        and h["outbox"]["state"] == "degraded" and h,
                        timeout=60, what="the aggregator degraded by the full disk")
    assert degraded["status"] == "degraded"
    assert any("database or disk is full" in r for r in degraded["history"]["reasons"])
    assert any("disk is full" in r for r in degraded["outbox"]["reasons"])
    # The probe API takes a reading on the full disk: never a 500 for what it published.
    api = f"http://127.0.0.1:{small.env['PORT']}/api"
    answer = requests.post(f"{api}/ingest", json={"probe_id": "probe_full", "temperature_c": 20.5},
                           timeout=10, headers={"X-Token": small.hub_token})
    assert answer.status_code == 200, answer.text
    assert answer.json()["ok"] is True and answer.json()["csv"] is False
    told_api = requests.get(f"{api}/health", timeout=10).json()
    assert told_api["status"] == "degraded" and any("disk is full" in r or "No space" in r
                                                    for r in told_api["reasons"]), told_api
    # Live data still flows: new states reach MQTT while the disk is full.
    topic = f"{small.root_topic}/devices/{DEVICE}/state"
    subscriber.subscribe(topic)
    first = subscriber.wait(topic, timeout=30).json()
    subscriber.wait(topic, timeout=30, where=lambda m: m.json()["seq"] > first["seq"])
    # MQTT consumers are told too: meta/health says degraded and why.
    health_topic = f"{small.root_topic}/meta/health"
    subscriber.subscribe(health_topic)
    told = subscriber.wait(health_topic, timeout=30,
                           where=lambda m: m.json()["state"] == "degraded").json()
    assert any(r.startswith("history: ") and "disk is full" in r for r in told["reasons"])
    ballast.unlink()
    wait_for(lambda: small.aggregator_health()["history"]["state"] == "ok", timeout=60,
             what="the history storing again")
    wait_for(lambda: small.aggregator_health()["outbox"]["state"] == "ok", timeout=60,
             what="the outbox storing again")
    # One log line when a condition starts and one when it ends, not one per batch. The two
    # stores share the disk: pages one gives back (the outbox thins on a full disk) can let the
    # other store a batch, so a condition may end and start again while the disk is full.
    for store in ("history", "outbox"):
        started = [ln for ln in small.output if f"{store} degraded (disk_full)" in ln]
        ended = [ln for ln in small.output if f"{store} recovered (disk_full)" in ln]
        assert 1 <= len(started) == len(ended) <= 5, (started, ended)
