"""Finds ESP32 probes on the LAN: a zeroconf browser for ``_temps-probe._tcp.local.`` that puts
each advertised probe into the ``ProbeDirectory`` under its TXT ``id`` and follows it when its
address changes. Where multicast does not pass, probes are listed statically instead."""

from __future__ import annotations

import logging
from typing import Any

from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceListener,
    Zeroconf,
)

from shared.topics import ID_RE

from .probes import ProbeDirectory

log = logging.getLogger(__name__)

SERVICE_TYPE = "_temps-probe._tcp.local."
RESOLVE_TIMEOUT_MS = 3000


def _text(props: dict[bytes, bytes | None], key: str) -> str | None:
    raw = props.get(key.encode())
    return raw.decode("utf-8", "replace").strip() if raw else None


class ProbeBrowser(ServiceListener):
    """Browses for probes; ``start()`` opens the multicast sockets, ``stop()`` closes them."""

    def __init__(self, directory: ProbeDirectory, *,
                 interfaces: Any = InterfaceChoice.All) -> None:
        self._directory = directory
        self._interfaces = interfaces
        self._zc: Zeroconf | None = None
        self._browser: ServiceBrowser | None = None
        self.ignored: list[str] = []  # service names without a usable id (for /api/probes)

    def start(self) -> None:
        self._zc = Zeroconf(interfaces=self._interfaces)
        self._browser = ServiceBrowser(self._zc, SERVICE_TYPE, self)

    def stop(self) -> None:
        if self._browser is not None:
            self._browser.cancel()
        if self._zc is not None:
            self._zc.close()

    # ServiceListener: called on the browser's thread, where blocking to resolve is allowed.
    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._resolve(zc, type_, name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._resolve(zc, type_, name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        # A probe that stops advertising may only be rebooting: keep it; availability on MQTT
        # comes from its readings, not from mDNS.
        log.info("probe service %s is no longer advertised", name)

    def _resolve(self, zc: Zeroconf, type_: str, name: str) -> None:
        try:
            info = zc.get_service_info(type_, name, timeout=RESOLVE_TIMEOUT_MS)
            if info is None:
                log.warning("probe service %s did not resolve", name)
                return
            self.record(info)
        except Exception:  # a malformed advertisement must not stop the browser
            log.exception("cannot read the advertisement of %s", name)

    def record(self, info: ServiceInfo) -> None:
        """Put one resolved advertisement into the directory."""
        props: dict[bytes, bytes | None] = dict(info.properties)
        probe_id = _text(props, "id")
        if not probe_id or not ID_RE.fullmatch(probe_id):
            log.warning("probe service %s has no valid TXT id (%r); ignored", info.name, probe_id)
            self.ignored.append(info.name)
            return
        addresses = info.parsed_addresses(IPVersion.V4Only) or info.parsed_addresses()
        if not addresses or not info.port:
            log.warning("probe %s (%s) advertises no address or port", probe_id, info.name)
            return
        label = info.name.removesuffix("." + SERVICE_TYPE)
        name = _text(props, "name") or label
        known = self._directory.get(probe_id)
        before = None if known is None else (known.ip, known.port)
        probe = self._directory.upsert(probe_id, name=name, host=info.server, ip=addresses[0],
                                       port=info.port, via="mdns")
        if before is None:
            log.info("discovered probe %s at %s", probe_id, probe.base_url)
        elif before != (probe.ip, probe.port):
            log.info("probe %s moved to %s", probe_id, probe.base_url)


def interfaces_from(setting: str | None) -> Any:
    """``MDNS_INTERFACES``: unset means every interface; else a comma-separated address list."""
    if not setting or setting.lower() == "all":
        return InterfaceChoice.All
    return [part.strip() for part in setting.split(",") if part.strip()]
