"""The real instance under test: a generated instance file in a temporary INSTANCES_DIR, free
service ports, a unique HUB_RUN_DIR and base topic, the real supervisord with the repository's
real supervisord.conf. ``Hub.pids()`` finds each program's process tree (gunicorn's master and
worker count together) through /proc."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from shared.internal import HEADER, new_secret

from . import procs
from .broker import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = {
    "state-aggregator": "-m services.state_aggregator",
    "serial-handler": "-m services.serial_handler",
    "http-poller": "-m services.http_poller",
    "mqtt-bridge": "-m connector",
    "web": "-m services.web",
}
INSTANCE = "bench"


def serial_sensor(sensor_id: str, port: str, *, interval: float = 3600) -> dict[str, Any]:
    return {"sensor_id": sensor_id, "sensor_type": "climate", "interval": interval,
            "properties": {"temperature": {"unit": "°C", "device_class": "temperature"}},
            "source": {"type": "serial", "port": port, "mode": "stream", "read_timeout": 1.0}}


def http_sensor(sensor_id: str, url: str) -> dict[str, Any]:
    return {"sensor_id": sensor_id, "sensor_type": "climate",
            "properties": {"temperature": {"path": "temperature", "type": "float", "unit": "°C"}},
            "source": {"type": "http", "url": url, "timeout": 3.0}}


def instance_doc(sensors: list[dict[str, Any]], *, name: str = INSTANCE) -> dict[str, Any]:
    return {"instance_id": name, "connector_type": "sensor-hub", "friendly_name": "benchmark",
            "update_interval": 10, "config": {"cache_ttl": 10, "sensors": sensors}}


@dataclass
class Hub:
    instance: dict[str, Any]
    mqtt_port: int
    env_extra: dict[str, str] = field(default_factory=dict)
    name: str = INSTANCE
    base_topic: str = field(default_factory=lambda: f"bench{uuid.uuid4().hex[:8]}")
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def __post_init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="sensor-hub-bench-"))
        (self.workdir / "instances").mkdir()
        (self.workdir / "data").mkdir()
        # The internal REST answers only with the instance's secret: made here, as ./hub run does.
        self.secret = new_secret(self.workdir / "run")
        (self.workdir / "instances" / f"{self.name}.json").write_text(json.dumps(self.instance))
        self.ports = {"serial": free_port(), "http": free_port(), "aggregator": free_port(),
                      "ingest": free_port()}
        if "STATE_AGGREGATOR_PORT" in self.env_extra:  # e.g. behind the counting relay
            self.ports["aggregator"] = int(self.env_extra["STATE_AGGREGATOR_PORT"])

    @property
    def base(self) -> str:
        """``B`` of the contract."""
        return f"{self.base_topic}/v1/instances/{self.name}"

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def env(self) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MQTT_", "INSTANCE", "STATE_AGGREGATOR", "SERIAL_HANDLER",
                                    "HTTP_POLLER", "HUB_", "PORT", "POLL_", "UPDATE_"))}
        env.update({
            "PATH": f"{venv_bin}:/usr/sbin:{env.get('PATH', '/usr/bin:/bin')}",
            "INSTANCE_NAME": self.name,
            "INSTANCES_DIR": str(self.workdir / "instances"),
            "DATA_DIR": str(self.workdir / "data"),
            "HUB_RUN_DIR": str(self.workdir / "run"),
            "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(self.mqtt_port),
            "MQTT_BASE_TOPIC": self.base_topic,
            "SERIAL_HANDLER_PORT": str(self.ports["serial"]),
            "HTTP_POLLER_PORT": str(self.ports["http"]),
            "STATE_AGGREGATOR_PORT": str(self.ports["aggregator"]),
            "PORT": str(self.ports["ingest"]), "HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            "PROBE_DISCOVERY": "false",  # never pick up probes of other instances on the LAN
        })
        env.update(self.env_extra)
        return env

    def start(self) -> None:
        supervisord = str(Path(sys.executable).parent / "supervisord")
        log = (self.workdir / "supervisord.out").open("wb")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [supervisord, "-c", str(ROOT / "supervisord.conf"), "-n"], env=self.env(),
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        # an interrupted harness must not leave an instance behind (its serial handler would
        # keep reopening its /dev/pts paths, and grab the ptys of the next run)
        atexit.register(self.stop, graceful=False)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        session = requests.Session()
        session.trust_env = False
        session.headers[HEADER] = self.secret

        def ok(port: int) -> bool:
            try:
                return session.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        for service in ("aggregator", "serial", "http"):
            wait_until(lambda s=service: self._alive() and ok(self.ports[s]), timeout=timeout,
                       what=f"{service} /health", interval=0.05)
        wait_until(lambda: "mqtt-bridge" in self.pids(), timeout=timeout, what="the bridge")

    def _alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"supervisord exited; see {self.workdir / 'supervisord.out'}:\n"
                               + self.log_tail())
        return True

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = (self.workdir / "supervisord.out").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def pids(self) -> dict[str, list[int]]:
        """Each program's process tree, plus supervisord itself."""
        if self.proc is None:
            return {}
        found: dict[str, list[int]] = {"supervisord": [self.proc.pid]}
        for child in procs.children(self.proc.pid):
            cmd = procs.cmdline(child)
            for name, marker in PROGRAMS.items():
                if cmd.endswith(marker) or f"{marker} " in cmd:
                    found[name] = procs.tree(child)
        return found

    def cpu(self) -> dict[str, float]:
        return {name: procs.cpu_of(pids) for name, pids in self.pids().items()}

    def memory(self) -> dict[str, dict[str, float]]:
        out = {name: procs.memory_of(pids) for name, pids in self.pids().items()}
        out["total"] = {"rss_mb": round(sum(m["rss_mb"] for m in out.values()), 1),
                        "pss_mb": round(sum(m["pss_mb"] for m in out.values()), 1)}
        return out

    def memory_split(self) -> dict[str, list[float]]:
        """PSS MB of each process of each program, parent first (a gunicorn program: its
        master, then its worker)."""
        return {name: [procs.smaps_rollup(pid)["pss_mb"] for pid in pids]
                for name, pids in self.pids().items()}

    def get(self, service: str, path: str) -> Any:
        headers = {HEADER: self.secret} if service != "ingest" else {}
        resp = requests.get(f"{self.url(service)}{path}", timeout=5, headers=headers)
        resp.raise_for_status()
        return resp.json()

    def stop(self, *, graceful: bool = True) -> None:
        """SIGTERM to supervisord (it stops the programs in order), or, where the shutdown is
        not what is measured, SIGKILL to the whole session at once."""
        if self.proc is None:
            return
        if not graceful and self.proc.poll() is None:
            # supervisord puts each program in a process group of its own: kill them one by one
            for pid in [p for tree in self.pids().values() for p in tree]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait(5)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
