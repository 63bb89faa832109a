"""``python -m bench [--full | --smoke] [--only SECTIONS]``: run the harness, print the table,
write ``latest.json`` and ``latest.md`` into ``bench/results/`` (the committed figures), or, for
``--smoke``, into the git-ignored ``bench/results/smoke/``: a smoke run only checks that the
harness works and must not replace the measured results."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import e2e, master, polling, procs, report, scale, serial_polling, startup
from .broker import start_broker
from .modes import MODES
from .mqttload import ceiling_run
from .stats import median

log = logging.getLogger("bench")
SECTIONS = ("ceiling", "e2e", "scale", "polling", "serial", "startup", "master")
PAYLOAD = 150


def ceiling(broker: Any, runs: int, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"payload_bytes": PAYLOAD}
    for qos in (0, 1):
        # paho's in-flight limit off and a send window of 1,000: the fastest bare paho set-up
        # on this machine (a limit makes paho walk its list on every PUBACK); the bridge's
        # wrapper (shared/mqtt.py) publishes the same way.
        rs = [ceiling_run(broker.host, broker.port, qos=qos, n=n, size=PAYLOAD,
                          inflight=0, window=1000) for _ in range(runs)]
        out[f"qos{qos}_runs"] = rs
        out[f"qos{qos}_msgs_per_s"] = round(median([x["msgs_per_s"] for x in rs]))
        log.info("ceiling QoS %d: %s msgs/s", qos, out[f"qos{qos}_msgs_per_s"])
    return out


def analysis(r: dict[str, Any]) -> list[str]:
    """Figures derived from the measured ones that say what limits what."""
    notes = []
    q1 = r.get("ceiling", {}).get("qos1_msgs_per_s")
    if "e2e" in r:
        tp = r["e2e"]["throughput"]
        bridge = tp["cpu_s_per_1k_readings"].get("mqtt-bridge", 0)
        if bridge and tp["msgs_per_reading"]:
            per_msg = bridge / 1000 / tp["msgs_per_reading"] * 1e6
            notes.append(f"throughput: the bridge spends {per_msg:.0f} us of CPU per MQTT message "
                         f"(paho, REST long poll, JSON); one Python thread group caps it near "
                         f"{1e6 / per_msg:,.0f} msgs/s on an idle core")
    if "scale" in r and r["scale"]["sizes"] and q1:
        big = r["scale"]["sizes"][-1]
        msgs = big["devices"] * 3  # state + state/temperature + state/seq
        share = big["cpu_s"].get("mqtt-bridge", 0) / big["cpu_s_total"] if big["cpu_s_total"] else 0
        notes.append(f"scale: a cycle of {big['devices']:,} devices is {msgs:,} messages (the "
                     f"state at MQTT_QOS 1, one per sampled property at MQTT_PROPERTY_QOS 0); "
                     f"at this run's bare-paho QoS 1 ceiling ({q1:,} msgs/s) they would take "
                     f"{msgs / q1:.2f} s, an upper bound; the bridge used "
                     f"{share * 100:.0f} % of the cycle's CPU")
    return notes


def run_sections(results: dict[str, Any], mode: Any, only: list[str],
                 profile: Path | None = None) -> None:
    """Each chosen section against one mosquitto of the harness's own."""
    workdir = Path(tempfile.mkdtemp(prefix="sensor-hub-bench-broker-"))
    broker = start_broker(workdir)
    try:
        if "ceiling" in only:
            results["ceiling"] = ceiling(broker, mode.runs, mode.ceiling_msgs)
        if "e2e" in only:
            log.info("end to end: throughput and latency")
            results["e2e"] = e2e.run(broker, mode, results["ceiling"]["qos1_msgs_per_s"])
            results["e2e"]["throughput_s"] = mode.throughput_s
            if not results["e2e"]["ingest_api"]:
                results["notes"].append("the LAN ingest API did not answer: serial ptys only")
        if "scale" in only:
            log.info("scale: %s devices", mode.scale_sizes)
            results["scale"] = scale.run(broker, mode, profile=profile)
        if "polling" in only:
            log.info("HTTP polling: %d sensors", mode.poll_sensors)
            results["polling"] = polling.run(broker, mode)
        if "serial" in only:
            log.info("serial polling: one shared bus")
            results["serial"] = serial_polling.run(mode)
        if "startup" in only:
            log.info("start-up and idle memory")
            results["startup"] = startup.run(broker, mode)
        if "master" in only:
            log.info("master control: %d MQTT + %d HTTP sensors", mode.master_mqtt,
                     mode.master_http)
            results["master"] = master.run(broker, mode)
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./hub bench", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--full", action="store_true", help="the full run (about 15 minutes)")
    group.add_argument("--smoke", action="store_true", help="a tiny run that checks the harness")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections (default: all of {','.join(SECTIONS)})")
    parser.add_argument("--runs", type=int, help="repetitions behind each median")
    parser.add_argument("--sizes", default=None, metavar="N,N",
                        help="scale: these device counts instead of the mode's")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="scale: each process writes where its memory goes (tracemalloc) "
                             "into DIR/<devices>/ after the cycles; its figures are inflated by "
                             "the tracing")
    parser.add_argument("--out", type=Path, default=None,
                        help="where latest.json and latest.md go (default: bench/results/, "
                             "bench/results/smoke/ with --smoke)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [bench] %(message)s")
    # SIGTERM (a timeout, Ctrl-C from a wrapper) unwinds like SystemExit: instances get stopped
    signal.signal(signal.SIGTERM, lambda *_a: sys.exit(143))
    mode = MODES["full" if args.full else "smoke" if args.smoke else "quick"]
    results_dir = Path(__file__).parent / "results"
    out: Path = args.out or (results_dir / "smoke" if args.smoke else results_dir)
    from dataclasses import replace
    if args.runs:
        mode = replace(mode, runs=args.runs)
    if args.sizes:
        mode = replace(mode, scale_sizes=tuple(int(n) for n in args.sizes.split(",")))
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    if "e2e" in only and "ceiling" not in only:
        only.insert(0, "ceiling")  # every throughput is a ratio to a ceiling of the same run

    started = time.monotonic()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "mode": mode.name,
        "runs": mode.runs, "command": ("./hub bench " + shlex.join(argv if argv is not None
                                                                   else sys.argv[1:])).strip(),
        "machine": procs.machine(), "notes": [],
    }
    run_sections(results, mode, only, args.profile)
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["targets"] = report.targets(results)
    results["notes"] += analysis(results)
    jpath, mpath = report.write(results, out)
    print(mpath.read_text())
    print(f"written: {jpath}, {mpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
