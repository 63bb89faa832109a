"""A real sensor-hub instance for the firmware tests, inside a private network namespace: its own
mosquitto, the real supervisord with the real supervisord.conf, mDNS discovery on (the namespace's
``lo`` is private, so no other hub on this host can see or provision the test's probes).

Everything here must be created on the namespaced thread (see tests/probe_fixtures/netns.py):
call it from the body given to ``run_in_private_netns``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import Instance, instance_env, start_supervisord, stop_supervisord
from tests.helpers import Broker, Subscriber, internal_headers, start_broker, wait_for
from tests.probe_fixtures.netns import run_in_private_netns

TOKEN = "fw-token"


def isolated(body: Callable[[], None], *, timeout: float = 240.0) -> None:
    reason = run_in_private_netns(body, timeout=timeout)
    if reason is not None:
        pytest.skip(f"no private network namespace for the mDNS test: {reason}")


class NetnsHub:
    """mosquitto + the instance under supervisord + a subscriber, all in the namespace."""

    def __init__(self, tmp: Path, *, probe_interval_ms: int = 500,
                 extra_env: dict[str, str] | None = None) -> None:
        self.broker: Broker = start_broker(tmp)
        instances = tmp / "instances"
        instances.mkdir()
        (instances / "fw.json").write_text(json.dumps({
            "instance_id": "fw", "friendly_name": "firmware tests", "config": {"sensors": []}}))
        env = instance_env(self.broker, tmp, instances, "fw")
        env.update({"PROBE_DISCOVERY": "true", "MDNS_INTERFACES": "127.0.0.1",
                    "PUBLIC_BASE": f"http://127.0.0.1:{env['PORT']}", "SERVER_TOKEN": TOKEN,
                    "PROBE_INTERVAL_MS": str(probe_interval_ms), **(extra_env or {})})
        self.env = env
        self.api = f"http://127.0.0.1:{env['PORT']}/api"
        self.master = f"http://127.0.0.1:{env['STATE_AGGREGATOR_PORT']}/master"  # management
        self.internal = internal_headers(env)  # what the aggregator's REST asks for
        self.sub = Subscriber(self.broker.host, self.broker.port)
        proc, output = start_supervisord(env)
        self.instance = Instance(env, f"{env['MQTT_BASE_TOPIC']}/v1/instances/fw", proc, output)
        self.root = self.instance.root_topic
        try:
            self.sub.subscribe(f"{self.root}/#")
            self.sub.wait(f"{self.root}/status", timeout=60, where=lambda m: m.text == "online")
            wait_for(self.api_up, timeout=30, what="the LAN API")
        except AssertionError:
            self.stop()
            raise AssertionError("the instance never came up:\n" + self.instance.log()) from None

    def api_up(self) -> bool:
        try:
            return requests.get(f"{self.api}/health", timeout=2).ok
        except requests.RequestException:  # not listening yet, or busy starting
            return False

    def lan_program(self) -> str:
        """The supervisord program that serves the LAN API (``web`` once it exists)."""
        listed = self.instance.supervisorctl("status").stdout
        return "web" if any(line.startswith("web ") for line in listed.splitlines()) else "http-poller"

    def states(self, device_id: str) -> list[dict[str, object]]:
        return [m.json() for m in self.sub.on(f"{self.root}/devices/{device_id}/state")]

    def csv_rows(self) -> list[dict[str, str]]:
        path = Path(self.env["DATA_DIR"]) / "temperature_log.csv"
        with path.open() as f:
            return list(csv.DictReader(f))

    def stop(self) -> None:
        self.sub.close()
        stop_supervisord(self.instance.proc)
        self.broker.stop()
