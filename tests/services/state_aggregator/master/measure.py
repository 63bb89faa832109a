"""Measure master control on a real aggregator process (not a test; run by hand):

    python -m tests.services.state_aggregator.master.measure [sensors] [threads] [paced_s]

registers ``sensors`` sensors of one type, heart-beats each once from ``threads`` client threads
as fast as they go, then for ``paced_s`` seconds at the issue's cadence (every sensor every 10 s,
spread evenly), over the internal REST (keep-alive sessions); prints heartbeat latency
percentiles and the time a type-wide template change takes (every sensor's config recomputed in
one transaction).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from shared.internal import HEADER, new_secret
from tests.helpers import free_port, wait_for


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    paced_s = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="master-measure-"))
    env = {**os.environ, "INSTANCE_NAME": "demo", "DATA_DIR": str(data), "LOG_LEVEL": "WARNING",
           "STATE_AGGREGATOR_PORT": str(port), "SERIAL_HANDLER_PORT": str(free_port()),
           "HTTP_POLLER_PORT": str(free_port()), "HUB_RUN_DIR": str(data / "run")}
    secret = {HEADER: new_secret(data / "run")}  # the internal REST's, as ./hub run makes it
    proc = subprocess.Popen([sys.executable, "-m", "services.state_aggregator"], env=env)
    base = f"http://127.0.0.1:{port}/master"
    local = requests.Session()
    local.trust_env = False
    local.headers.update(secret)
    try:
        wait_for(lambda: _up(local, base), timeout=30, what="the aggregator")
        sessions: dict[int, requests.Session] = {}

        def session() -> requests.Session:
            import threading
            s = sessions.get(threading.get_ident())
            if s is None:
                s = sessions[threading.get_ident()] = requests.Session()
                s.trust_env = False
                s.headers.update(secret)
            return s

        def register(i: int) -> None:
            session().post(f"{base}/register", json={"sensor_id": f"s{i:05d}",
                                                      "sensor_type": "esp32"}).raise_for_status()

        def beat(i: int) -> float:
            t0 = time.perf_counter()
            session().post(f"{base}/heartbeat", json={"sensor_id": f"s{i:05d}",
                                                       "metrics": {"uptime": i}}).raise_for_status()
            return (time.perf_counter() - t0) * 1000

        with ThreadPoolExecutor(threads) as pool:
            t0 = time.perf_counter()
            list(pool.map(register, range(n)))
            reg_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            lat = sorted(pool.map(beat, range(n)))
            beat_s = time.perf_counter() - t0
            q = statistics.quantiles(lat, n=100)
            print(f"{n} sensors, {threads} client threads, load average {os.getloadavg()[0]:.2f}")
            print(f"register: {n / reg_s:.0f}/s; heartbeat flat out: {n / beat_s:.0f}/s, "
                  f"p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, max {lat[-1]:.1f} ms")
            rss_before = _rss_kib(proc.pid)
            step = 10.0 / n  # every sensor every 10 s
            t_start = time.perf_counter()
            futures = []
            i = 0
            while (due := t_start + i * step) < t_start + paced_s:
                time.sleep(max(0.0, due - time.perf_counter()))  # pacing the load, not a wait
                futures.append(pool.submit(beat, i % n))
                i += 1
            paced = sorted(f.result() for f in futures)
            q = statistics.quantiles(paced, n=100)
            print(f"heartbeat paced at {n / 10:.0f}/s for {paced_s:.0f} s ({len(paced)} beats): "
                  f"p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, max {paced[-1]:.1f} ms, "
                  f"load average {os.getloadavg()[0]:.2f}")
            print(f"aggregator RSS (its gunicorn worker): {rss_before / 1024:.1f} MiB before, "
                  f"{_rss_kib(proc.pid) / 1024:.1f} MiB after the paced run")
        t0 = time.perf_counter()
        made = local.post(f"{base}/configs", json={"config_name": "all", "sensor_type": "esp32",
                                                   "config_data": {"polling_interval": 30}}).json()
        print(f"template for the type: {made['sensors_changed']} configs changed in "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms")
        t0 = time.perf_counter()
        configs = local.get(f"{base}/sensor-configs").json()["configs"]
        print(f"all {len(configs)} current configs read in {(time.perf_counter() - t0) * 1000:.0f} ms")
    finally:
        proc.terminate()
        proc.wait(10)


def _rss_kib(pid: int) -> int:
    """RSS of the process tree's largest member (gunicorn's worker holds the state)."""
    best = 0
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for p in [pid, *(int(c) for c in children.read_text().split())] if children.exists() else [pid]:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                best = max(best, int(line.split()[1]))
    return best


def _up(session: requests.Session, base: str) -> bool:
    try:
        return session.get(f"{base}/sensors", timeout=1).status_code == 200
    except requests.RequestException:
        return False


if __name__ == "__main__":
    main()
