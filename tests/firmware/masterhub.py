"""The real hub's master control for the firmware tests: the instance under the real supervisord
(master control lives in the state aggregator; the test manages it on the aggregator's internal
REST under ``/master``, with the instance's secret), two master entries that reach its sensor
routes on the LAN port as ``/api/sensor-master`` (the primary through a TCP relay the test can
cut, the secondary directly), and a plain HTTP server for OTA images."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from tests.e2e.conftest import Instance, instance_env, start_supervisord, stop_supervisord
from tests.helpers import Broker, internal_headers, wait_for


def port_below_ephemeral() -> int:
    """A free port under the kernel's ephemeral range. While the relay is cut, the probe keeps
    connecting to its port; were that port in the ephemeral range, Linux would one day pick it
    as the source port of such a connect and the socket would connect to itself (TCP
    simultaneous open), holding the port so the relay cannot listen again."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 8000), low), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


class Relay:
    """A TCP relay on a fixed port to ``target``: ``cut()`` closes the port and every open
    connection (the master is gone), ``restore()`` listens again."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = port_below_ephemeral()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(16)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            # shutdown first: close() alone leaves the socket listening until the thread blocked
            # in accept() returns (it holds the file), so the port would still take connections.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for c in self._conns:
                c.close()
            self._conns.clear()


class Images:
    """OTA images served over plain HTTP from a directory; ``on_get`` runs after each download."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.on_get: Any = None
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                super().do_GET()
                if outer.on_get is not None:
                    outer.on_get()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, name: str, data: bytes) -> tuple[str, str]:
        (self.root / name).write_bytes(data)
        return (f"http://127.0.0.1:{self.server.server_address[1]}/{name}",
                hashlib.sha256(data).hexdigest())

    def close(self) -> None:
        self.server.shutdown()


class MasterHub:
    def __init__(self, broker: Broker, tmp: Path, *,
                 extra_env: dict[str, str] | None = None) -> None:
        instances = tmp / "instances"
        instances.mkdir()
        (instances / "mc.json").write_text(json.dumps({
            "instance_id": "mc", "friendly_name": "master control", "config": {"sensors": []}}))
        env = instance_env(broker, tmp, instances, "mc")
        env["MASTER_CHECK_IN_INTERVAL"] = "1"
        env.update(extra_env or {})
        self.env = env
        proc, output = start_supervisord(env)
        self.instance = Instance(env, f"{env['MQTT_BASE_TOPIC']}/v1/instances/mc", proc, output)
        self.root = self.instance.root_topic
        self.base = f"http://127.0.0.1:{env['STATE_AGGREGATOR_PORT']}/master"  # management
        self.internal = internal_headers(env)
        lan_port = int(env["PORT"])  # what the sensors reach, as on a real LAN
        try:
            wait_for(self.up, timeout=60, what="master control in the aggregator")
        except AssertionError:
            stop_supervisord(proc)
            raise AssertionError("no master control:\n" + self.instance.log()) from None
        self.relay = Relay(lan_port)
        self.primary_url = f"http://127.0.0.1:{self.relay.port}/api/sensor-master"
        self.call("POST", "/instances", {"name": "primary", "api_endpoint": self.primary_url,
                                         "priority": 1})
        self.secondary_url = f"http://127.0.0.1:{lan_port}/api/sensor-master"
        self.secondary_id = self.call("POST", "/instances", {
            "name": "secondary", "api_endpoint": self.secondary_url, "priority": 2})["id"]

    def up(self) -> bool:
        try:
            return requests.get(f"{self.base}/instances", headers=self.internal, timeout=2).ok
        except requests.RequestException:  # not listening yet, or busy starting
            return False

    def call(self, method: str, path: str, body: Any = None) -> Any:
        resp = requests.request(method, self.base + path, json=body, headers=self.internal,
                                timeout=10)
        assert resp.status_code < 300, f"{method} {path}: {resp.status_code} {resp.text}"
        return resp.json()

    def sensor(self, sensor_id: str) -> dict[str, Any] | None:
        resp = requests.get(f"{self.base}/sensors/{sensor_id}", headers=self.internal, timeout=5)
        return resp.json() if resp.ok else None

    def command(self, sensor_id: str, command_type: str, data: dict[str, Any]) -> str:
        made = self.call("POST", "/command", {"sensor_id": sensor_id, "command_type": command_type,
                                              "command_data": data})
        return str(made["command_id"])

    def command_done(self, command_id: str) -> dict[str, Any] | None:
        cmd = self.call("GET", f"/commands/{command_id}")
        return cmd if cmd["status"] in ("completed", "failed") else None

    def stop(self) -> None:
        self.relay.cut()
        stop_supervisord(self.instance.proc)
