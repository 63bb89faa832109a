"""Virtual probes: the firmware's own code on the host HAL, one thread per probe.

    python -m firmware.host --id probe-1 --state DIR [--hub URL] [--http-port N] [--count N]

Each probe keeps its files in ``DIR/<id>/``, listens on its own port (``--http-port`` for the
first, the next ones above it; 0 picks free ports) and advertises ``_temps-probe._tcp`` over mDNS,
so a hub discovers and provisions it exactly as a real one. ``--hub`` is where it sends readings
before any hub provisioned it. A probe that resets (a ``restart`` command, an OTA switch) boots
again in the same thread with a new boot id, as a device would.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from zeroconf import InterfaceChoice, Zeroconf

from .hal import Reboot
from .hal.host import HostHal
from .master import MasterClient
from .probe import Probe
from .sensors import SimulatedSensor
from .transport import HttpTransport

log = logging.getLogger(__name__)


class VirtualProbe:
    """One probe in a thread; ``probe`` is the running boot's ``Probe`` (new after a reset)."""

    def __init__(self, probe_id: str, state_dir: Path, *, hub: str | None = None,
                 http_port: int = 0, zeroconf: Zeroconf | None = None, bind: str = "0.0.0.0",
                 advertise_ip: str | None = None, interval_ms: int = 10000,
                 buffer_slots: int = 200, setup: Any = None, master: bool = True,
                 masters: list[str] | None = None, sensor_type: str = "esp32_probe",
                 master_options: dict[str, Any] | None = None, speed: float = 1.0) -> None:
        self.id = probe_id
        self.hal = HostHal(state_dir / probe_id, probe_id=probe_id, bind=bind,
                           advertise_ip=advertise_ip, zeroconf=zeroconf, speed=speed)
        self.hub = hub
        self.interval_ms = interval_ms
        self.buffer_slots = buffer_slots
        self.setup = setup  # called with each new Probe, before it starts
        self.master = master
        self.masters = [{"name": f"master-{i}", "api_endpoint": url, "priority": i}
                        for i, url in enumerate(masters or [], start=1)]
        self.sensor_type = sensor_type
        self.master_options = master_options or {}
        self.boots = 0
        self.port = http_port
        self.probe: Probe | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"probe-{probe_id}", daemon=True)
        self.crashed: BaseException | None = None

    def _boot(self) -> Probe:
        probe = Probe(self.hal, self.id, sensor=SimulatedSensor(), http_port=self.port,
                      hub=self.hub, buffer_slots=self.buffer_slots, interval_ms=self.interval_ms)
        if self.master:
            probe.master = MasterClient(probe, HttpTransport(self.hal), masters=self.masters,
                                        sensor_type=self.sensor_type, **self.master_options)
        if self.setup is not None:
            self.setup(probe)
        probe.start()
        self.port = probe.http_port  # a reboot listens on the same port again
        self.boots += 1
        return probe

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.probe = self._boot()
                self._ready.set()
                while not self._stop.is_set() and not self.probe.stopping:
                    self.probe.step()
                if self.probe.stopping and not self._stop.is_set():
                    self.probe.close()
                    continue  # the setup page saved credentials: boot again
            except Reboot:
                log.info("probe %s resets", self.id)
            except BaseException as exc:  # a crash is a reboot on a device, and a test finding
                log.exception("probe %s crashed; booting again", self.id)
                self.crashed = exc
            finally:
                if self.probe is not None:
                    self.probe.close()
        self.hal.withdraw()

    def start(self) -> VirtualProbe:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"virtual probe {self.id} did not start")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def probe_ids(base: str, count: int) -> list[str]:
    return [base] if count == 1 else [f"{base}-{i}" for i in range(1, count + 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware.host", description=__doc__.split("\n")[0])
    parser.add_argument("--id", default="probe-1", help="probe id (with --count: the prefix)")
    parser.add_argument("--state", required=True, type=Path, help="directory for the probes' files")
    parser.add_argument("--hub", help="hub base URL to send readings to before provisioning")
    parser.add_argument("--http-port", type=int, default=0, help="first probe's port (0: free ports)")
    parser.add_argument("--count", type=int, default=1, help="how many probes to run")
    parser.add_argument("--interval-ms", type=int, default=10000, help="interval before provisioning")
    parser.add_argument("--bind", default="0.0.0.0", help="address the probes listen on")
    parser.add_argument("--advertise-ip", help="address advertised over mDNS (default: the LAN IP)")
    parser.add_argument("--mdns-interface", action="append",
                        help="interface address for mDNS (repeatable; default: all)")
    parser.add_argument("--no-mdns", action="store_true", help="do not advertise")
    parser.add_argument("--master", action="append", metavar="URL",
                        help="master control endpoint, first = highest priority (repeatable; "
                             "default: the hub that provisions the probe)")
    parser.add_argument("--no-master", action="store_true", help="no master control client")
    parser.add_argument("--sensor-type", default="esp32_probe", help="sensor_type to register")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="the probes' clock runs this many times as fast as the host's "
                             "(intervals, backoff, check-ins; reading timestamps stay real)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    if not args.speed > 0:
        parser.error("--speed must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    zc = None if args.no_mdns else Zeroconf(
        interfaces=args.mdns_interface or InterfaceChoice.All)
    probes = []
    for i, pid in enumerate(probe_ids(args.id, args.count)):
        port = args.http_port + i if args.http_port else 0
        probes.append(VirtualProbe(pid, args.state, hub=args.hub, http_port=port, zeroconf=zc,
                                   bind=args.bind, advertise_ip=args.advertise_ip,
                                   interval_ms=args.interval_ms, master=not args.no_master,
                                   masters=args.master, sensor_type=args.sensor_type,
                                   speed=args.speed).start())
        print(f"{pid} listening on {args.bind}:{probes[-1].port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with contextlib.suppress(KeyboardInterrupt):
        done.wait()
    for p in probes:
        p.stop()
    if zc is not None:
        zc.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
