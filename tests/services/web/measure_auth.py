"""What a sensor token costs a check-in: heartbeat round trips on the real demo instance
(supervisord, mosquitto), one after the other, on the aggregator's internal route and on the LAN
port with the sensor's token (the web program verifies it with the aggregator, then forwards),
and the verification alone. ``python -m tests.services.web.measure_auth [N]``."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from tests.e2e.conftest import demo_instance
from tests.helpers import internal_headers, start_broker


def timed(session: requests.Session, url: str, n: int, **kw: Any) -> tuple[float, float]:
    """``(p50, p99)`` in ms of ``n`` POSTs to ``url``."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        answer = session.post(url, timeout=10, **kw)
        times.append((time.perf_counter() - start) * 1000)
        assert answer.status_code == 200, answer.text
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.99) - 1)]


def main(n: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_broker(Path(tmp))
        (Path(tmp) / "instance").mkdir()
        # one client sends everything here: a budget it cannot reach
        with demo_instance(broker, Path(tmp) / "instance",
                           RATE_LIMIT_INGEST="1000000/minute") as hub:
            lan = f"http://127.0.0.1:{hub.env['PORT']}/api/sensor-master"
            inner = f"http://127.0.0.1:{hub.env['STATE_AGGREGATOR_PORT']}/master"
            http = requests.Session()
            http.trust_env = False
            token = http.post(f"{lan}/register", json={"sensor_id": "measure"}, timeout=10,
                              headers={"X-Token": hub.hub_token}).json()["token"]
            beat = {"sensor_id": "measure", "metrics": {"uptime": 1}}
            own = {"Authorization": f"Bearer {token}"}
            timed(http, f"{lan}/heartbeat", n, json=beat, headers=own)  # warm-up
            direct = timed(http, f"{inner}/heartbeat", n, json=beat,
                           headers=internal_headers(hub.env))
            via_lan = timed(http, f"{lan}/heartbeat", n, json=beat, headers=own)
            verify = timed(http, f"{inner}/tokens/verify", n, json={"token": token},
                           headers=internal_headers(hub.env))
    return (f"N={n}: aggregator heartbeat p50 {direct[0]:.2f} ms, p99 {direct[1]:.2f} ms; "
            f"LAN heartbeat with a sensor token p50 {via_lan[0]:.2f} ms, p99 {via_lan[1]:.2f} ms; "
            f"token verification alone p50 {verify[0]:.2f} ms, p99 {verify[1]:.2f} ms")


if __name__ == "__main__":
    print(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
