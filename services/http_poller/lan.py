"""The poller's side of the ESP32 probes on the LAN, put together: the directory, mDNS discovery
and the provisioner, all outbound HTTP to devices. The probes' own requests (``/api/...``) are
served by the ``web`` program, which asks this process about the probes over its internal REST
(``/probes``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.errors import ServiceError
from shared.hub_token import hub_token
from shared.instance import Instance, ProbeSource
from shared.models import EventObs
from shared.processes import STATE_AGGREGATOR
from shared.rest import RestClient
from shared.settings import Settings

from .probes import Probe, ProbeDirectory
from .provisioner import Provisioner, public_base

if TYPE_CHECKING:
    from .discovery import ProbeBrowser

log = logging.getLogger(__name__)


@dataclass
class ProbeSide:
    directory: ProbeDirectory
    provisioner: Provisioner | None
    browser: ProbeBrowser | None
    started: list[str] = field(default_factory=list)

    def start(self) -> None:
        """Start discovery and provisioning; a part that cannot start is logged and reported on
        ``/health``, the HTTP polling goes on without it."""
        for name, part in (("discovery", self.browser), ("provisioner", self.provisioner)):
            if part is None:
                continue
            try:
                part.start()
                self.started.append(name)
            except Exception:
                log.exception("probe %s failed to start", name)

    def stop(self) -> None:
        for part in (self.provisioner, self.browser):
            if part is not None:
                part.stop()

    def status(self) -> dict[str, Any]:
        return {"running": self.started, "probes": len(self.directory.all()),
                "provisioned": self.provisioner.provisioned if self.provisioner else 0}


def reboot_announcer(aggregator: RestClient, emit: Callable[[EventObs], None],
                     clock: Callable[[], float] = time.time) -> Callable[[Probe], None]:
    """What the provisioner calls when a probe rebooted: a ``probe_rebooted`` event, but only
    for a probe that is a registered probe device (an event for a device the registry does not
    hold would bounce, and one for a non-probe device with the same id must not be sent)."""

    def rebooted(probe: Probe) -> None:
        try:
            info = aggregator.get(f"/devices/{probe.probe_id}", timeout=2.0)
        except ServiceError as exc:
            log.info("probe %s rebooted; no event (%s)", probe.probe_id, exc)
            return
        if isinstance(info, dict) and info.get("source") == "probe":
            emit(EventObs(device_id=probe.probe_id, ts=clock(), event="probe_rebooted"))

    return rebooted


def build_probe_side(settings: Settings, instance: Instance,
                     emit: Callable[[EventObs], None]) -> ProbeSide:
    """Everything the probe side needs, from the environment and the instance file."""
    directory = ProbeDirectory()
    for sensor in instance.sensors_of("probe"):
        src = sensor.source
        if isinstance(src, ProbeSource) and src.ip:
            directory.upsert(sensor.sensor_id, name=sensor.friendly_name, host=None, ip=src.ip,
                             port=src.port, via="static")
    aggregator = RestClient(settings.state_aggregator, name=STATE_AGGREGATOR.name,
                            secret=settings.internal_secret)
    # The hub token every probe must send; generated and stored under DATA_DIR when
    # SERVER_TOKEN is unset (the web program reads the same one).
    token = hub_token(settings)
    url = public_base(settings.public_base, host=settings.host, port=settings.port)
    provisioner = Provisioner(directory, server_url=url, interval_ms=settings.probe_interval_ms,
                              token=token, on_reboot=reboot_announcer(aggregator, emit))
    browser = None
    if settings.probe_discovery:
        # zeroconf only where it browses: PROBE_DISCOVERY=false leaves it unloaded (3.7 MB)
        from .discovery import ProbeBrowser, interfaces_from

        browser = ProbeBrowser(directory, interfaces=interfaces_from(settings.mdns_interfaces))
    return ProbeSide(directory, provisioner, browser)
