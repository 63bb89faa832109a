"""Tells probes where to send their readings. A background thread checks every known probe's
``/status`` and POSTs ``{server_url, interval_ms, token}`` to its ``/provision`` (by IP, never by
``.local`` name) when the hub has not provisioned it during this run, when it reports a
different ``server_url``, or when it rebooted (uptime went down or the boot id changed).
Failures back off per probe; ``provision()`` does one probe at once for ``POST /api/provision``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from shared.errors import HubError
from shared.timeutil import iso

from .probes import Probe, ProbeDirectory, shown

log = logging.getLogger(__name__)

MAX_BACKOFF = 300.0


class ProvisionError(HubError):
    """Raised when a probe cannot be provisioned: unreachable, or it refused the settings."""


def detect_lan_ip() -> str:
    """The address this host uses to reach the LAN (no packet is sent: a UDP ``connect`` only
    picks the route); ``127.0.0.1`` on a host without a default route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere, only looked up
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def public_base(configured: str | None, *, host: str, port: int) -> str:
    """``PUBLIC_BASE``, else ``http://<LAN IP>:<PORT>`` (the bind address when it is specific)."""
    if configured:
        return configured.rstrip("/")
    ip = host if host not in ("0.0.0.0", "", "::") else detect_lan_ip()
    return f"http://{ip}:{port}"


def reprovision_reason(probe: Probe, status: dict[str, Any], server_url: str) -> str | None:
    """Why ``probe`` needs our settings again, given what its ``/status`` says; ``None``: it
    does not."""
    if status.get("boot_id") and probe.boot_id and status["boot_id"] != probe.boot_id:
        return "rebooted"
    uptime = status.get("uptime_s")
    if isinstance(uptime, int | float) and probe.uptime_s is not None and uptime < probe.uptime_s:
        return "rebooted"
    if status.get("server_url") != server_url:
        return f"its server_url is {status.get('server_url')!r}"
    if not probe.provisioned:
        return "not provisioned by this hub yet"  # also refreshes the token after a hub restart
    return None


class Provisioner:
    def __init__(self, directory: ProbeDirectory, *, server_url: str, interval_ms: int,
                 token: str | None, check_every: float = 30.0, timeout: float = 3.0,
                 on_reboot: Callable[[Probe], None] | None = None) -> None:
        self.directory = directory
        self.server_url = server_url
        self.interval_ms = interval_ms
        self._token = token
        self.check_every = check_every
        self.timeout = timeout
        self._on_reboot = on_reboot
        self._session = requests.Session()
        self._session.trust_env = False  # probes are on the LAN: never through a proxy
        self._lock = threading.Lock()  # one conversation with the probes at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.provisioned = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="provisioner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.directory.changed.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.directory.changed.clear()
            now = time.monotonic()
            for probe in self.directory.all():
                if probe.next_check <= now and not self._stop.is_set():
                    self.check(probe)
            self.directory.changed.wait(1.0)

    def check(self, probe: Probe) -> None:
        """One round for one probe: read ``/status``, provision when needed, plan the next."""
        try:
            status = self._get_status(probe)
            reason = reprovision_reason(probe, status, self.server_url)
            if reason == "rebooted" and self._on_reboot is not None:
                self._on_reboot(probe)
            if probe.whoami is None or reason == "rebooted":
                self._whoami(probe)
            if reason is not None:
                log.info("provisioning probe %s at %s: %s", probe.probe_id, probe.base_url, reason)
                self._provision(probe)
                status = self._get_status(probe)
            probe.uptime_s = status.get("uptime_s") if isinstance(
                status.get("uptime_s"), int | float) else None
            probe.boot_id = status.get("boot_id") or None
        except ProvisionError as exc:
            probe.attempts += 1
            probe.last_error = str(exc)
            delay = min(2.0 ** probe.attempts, MAX_BACKOFF)
            probe.next_check = time.monotonic() + delay
            if probe.attempts in (1, 5) or delay >= MAX_BACKOFF:
                log.warning("probe %s: %s; trying again in %.0f s", probe.probe_id, exc, delay)
            return
        probe.attempts, probe.last_error = 0, None
        probe.next_check = time.monotonic() + self.check_every

    def provision(self, probe_id: str) -> Probe:
        """Provision one probe now (``POST /api/provision``); ``ProvisionError`` when it fails."""
        probe = self.directory.get(probe_id)
        if probe is None:
            raise ProvisionError(f"unknown probe {probe_id!r}")
        self._provision(probe)
        probe.attempts, probe.last_error = 0, None
        probe.next_check = time.monotonic() + self.check_every
        return probe

    def _provision(self, probe: Probe) -> None:
        body = {"server_url": self.server_url, "interval_ms": self.interval_ms,
                "token": self._token or ""}
        try:
            self._call(probe, "POST", "/provision", body)
        except ProvisionError as exc:
            probe.last_provision = {"at": iso(), "ok": False, "message": str(exc)}
            raise
        probe.last_provision = {"at": iso(), "ok": True,
                                "message": f"sent {self.server_url}, every {self.interval_ms} ms"}
        probe.provisioned = True
        self.provisioned += 1

    def _get_status(self, probe: Probe) -> dict[str, Any]:
        status = self._call(probe, "GET", "/status", None)
        if not isinstance(status, dict):
            raise ProvisionError(f"{probe.base_url}/status did not answer a JSON object")
        probe.status, probe.status_at = shown(status), time.time()
        return status

    def _whoami(self, probe: Probe) -> None:
        """What the probe says it is; optional in practice (an old firmware may lack it), so a
        failure is noted on the probe and does not fail the round."""
        try:
            answer = self._call(probe, "GET", "/whoami", None)
        except ProvisionError as exc:
            probe.whoami = {"error": str(exc)[:200]}
            return
        probe.whoami = (shown(answer) if isinstance(answer, dict)
                        else {"error": "/whoami did not answer a JSON object"})

    def _call(self, probe: Probe, method: str, path: str, body: dict[str, Any] | None) -> Any:
        url = probe.base_url + path
        with self._lock:
            try:
                resp = self._session.request(method, url, json=body, timeout=self.timeout)
            except requests.RequestException as exc:
                raise ProvisionError(f"{url} is unreachable: {exc}") from exc
        if resp.status_code >= 400:
            raise ProvisionError(f"{url} answered {resp.status_code}: {resp.text[:120]!r}")
        try:
            return resp.json()
        except ValueError as exc:
            raise ProvisionError(f"{url} answered with non-JSON: {resp.text[:80]!r}") from exc
