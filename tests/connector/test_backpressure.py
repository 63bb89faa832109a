"""Bad input and slow devices cannot stall the bridge: a flood of malformed commands is answered
from a bounded queue (never a thread per message) while states keep flowing and meta requests
are answered; commands are capped in time and per device, and a device whose board never
acknowledges holds its own slots, not the meta path or a fresh read of another device."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

from shared.models import ReadingObs
from tests.connector.conftest import Hub
from tests.helpers import Broker, Subscriber, publish, wait_for

FLOOD = 3000


def test_a_flood_of_malformed_commands_does_not_stall_states_or_meta(
        broker: Broker, hub: Hub, tmp_path: Path) -> None:
    root = hub.root
    sub = Subscriber(broker.host, broker.port).subscribe(f"{root}/#")
    try:
        bridge = hub.bridge(broker, tmp_path)
        wait_for(lambda: bridge.ctx.mirror.synced and bridge.client.connected.is_set(),
                 what="the bridge up")
        baseline = threading.active_count()
        peak = [baseline]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak[0] = max(peak[0], threading.active_count())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # As the stress test did it: mosquitto_pub -l sends one message per line, QoS 1.
        flood = subprocess.run(
            ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1", "-l",
             "-t", f"{root}/devices/relay/cmd"],
            input=b'{"values":\n' * FLOOD + b"[]\n" * FLOOD, capture_output=True, timeout=60,
            check=False)
        assert flood.returncode == 0, flood.stderr
        # While the answers drain: a reading reaches the subscriber and meta/health answers.
        hub.agg.ingest([ReadingObs(device_id="s1", ts=time.time(), values={"temperature": 7.5})])
        sub.wait(f"{root}/devices/s1/state", timeout=5,
                 where=lambda m: m.json().get("temperature") == 7.5)
        publish(broker.host, broker.port, f"{root}/meta/request/health", b'{"id":"h-flood"}')
        health = sub.wait(f"{root}/meta/health", timeout=5,
                          where=lambda m: m.json().get("id") == "h-flood").json()
        assert health["outbox"]["pending"] >= 0
        sampling.set()
        sampler.join()
        # A few threads of the test HTTP server come and go; nothing per message.
        assert peak[0] - baseline < 10, (baseline, peak[0])
        answers = sub.on(f"{root}/devices/relay/cmd/response")
        assert answers and all(a.json()["status"] == "error" for a in answers)
        assert "not valid JSON" in answers[0].json()["error"]
        # Every bad command that reached the bridge got its answer published or was counted as
        # dropped (mosquitto drops what exceeds its queue for a slow client, on the way to the
        # bridge and to this subscriber alike, so neither sees all 6,000).
        answered = bridge.ctx.answers
        wait_for(lambda: answered.published == answered.offered - answered.dropped,
                 what="every answer not dropped published")
    finally:
        sub.close()


def test_a_timeout_over_the_cap_is_rejected_with_the_reason(
        broker: Broker, hub: Hub, tmp_path: Path) -> None:
    sub = Subscriber(broker.host, broker.port).subscribe(f"{hub.root}/devices/relay/cmd/response")
    try:
        bridge = hub.bridge(broker, tmp_path, command_timeout_max=5)
        wait_for(lambda: bridge.ctx.mirror.synced and bridge.client.connected.is_set(),
                 what="the bridge up")
        publish(broker.host, broker.port, f"{hub.root}/devices/relay/cmd",
                json.dumps({"id": "c-long", "values": {"state": "on"}, "timeout": 3_600_000}))
        answer = sub.wait(f"{hub.root}/devices/relay/cmd/response").json()
        assert answer["cmd_id"] == "c-long" and answer["status"] == "rejected"
        assert "COMMAND_TIMEOUT_MAX (5000 ms)" in answer["error"]
    finally:
        sub.close()


def test_commands_to_a_board_that_never_acks_block_neither_meta_nor_other_devices(
        broker: Broker, hub: Hub, tmp_path: Path) -> None:
    root = hub.root
    sub = Subscriber(broker.host, broker.port).subscribe(f"{root}/#")
    try:
        bridge = hub.bridge(broker, tmp_path)
        wait_for(lambda: bridge.ctx.mirror.synced and bridge.client.connected.is_set(),
                 what="the bridge up")
        for i in range(8):
            publish(broker.host, broker.port, f"{root}/devices/relay/cmd",
                    json.dumps({"id": f"c{i}", "values": {"state": "on"}, "timeout": 30_000}))
        response = f"{root}/devices/relay/cmd/response"
        busy = wait_for(lambda: len(got := sub.on(response)) >= 6 and got, timeout=5,
                        what="the commands over the per-device limit refused")
        assert all(m.json()["status"] == "rejected" and "busy" in m.json()["error"]
                   for m in busy), [m.json() for m in busy]
        assert {m.json()["cmd_id"] for m in busy} == {f"c{i}" for i in range(2, 8)}

        began = time.monotonic()
        publish(broker.host, broker.port, f"{root}/meta/request/health", b'{"id":"h1"}')
        sub.wait(f"{root}/meta/health", timeout=5, where=lambda m: m.json().get("id") == "h1")
        publish(broker.host, broker.port, f"{root}/devices/s1/get", b"")
        # s1 is an HTTP sensor that no handler polls here: its fresh read fails at once, and
        # the failure arriving shows the get was not stuck behind the relay's commands.
        sub.wait(f"{root}/devices/s1/error", timeout=5,
                 where=lambda m: m.json()["error_code"] == "REFRESH_FAILED")
        assert time.monotonic() - began < 5
        assert len(sub.on(response)) == 6  # the two in flight are still waiting for the board
    finally:
        sub.close()
