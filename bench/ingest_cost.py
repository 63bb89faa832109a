"""``python -m bench.ingest_cost``: what the aggregator spends on readings, without MQTT.

Three figures in CPU seconds of this process (``time.process_time``: steadier than wall time on
a machine other work shares), each the median of ``--runs`` runs on a fresh aggregator with 100
devices:

- core: ``Aggregator.ingest`` of already-built ``ReadingObs`` (the hub's own trusted data), in
  batches of ``--batch``;
- route: the same readings as JSON bodies through the real ``POST /ingest`` Flask route (the
  Flask test client: parse, validate, ingest, answer), as a handler's pusher sends them;
- drain: every change those readings made, read back through ``GET /changes`` in pages of
  10,000, as the bridge reads them (the serialisation edge; the client decodes only the head).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from services.state_aggregator.app import collect_less_often, create_app
from services.state_aggregator.core import Aggregator
from shared.instance import parse_instance
from shared.jsonutil import dumps, loads
from shared.models import ReadingObs

DEVICES = 100


def _aggregator() -> Aggregator:
    instance = parse_instance({
        "instance_id": "bench", "friendly_name": "bench", "update_interval": 10,
        "config": {"sensors": [
            {"sensor_id": f"t{i}", "sensor_type": "climate",
             "source": {"type": "serial", "port": f"sim://p{i}?ids=t{i}"}}
            for i in range(DEVICES)]},
    })
    return Aggregator(instance, handlers={}, cache_ttl=10, poll_interval=5)


def _readings(n: int) -> list[ReadingObs]:
    t0 = time.time()
    return [ReadingObs(device_id=f"t{i % DEVICES}", ts=t0 + i * 1e-4,
                       values={"temperature": 20.0 + (i % 50) / 10, "humidity": 40 + i % 20,
                               "seq": i})
            for i in range(n)]


def core(n: int, batch: int) -> float:
    agg, readings = _aggregator(), _readings(n)
    started = time.process_time()
    for i in range(0, n, batch):
        agg.ingest(readings[i:i + batch], source="bench")
    return time.process_time() - started


def route(n: int, batch: int) -> tuple[float, float]:
    agg, readings = _aggregator(), _readings(n)
    bodies = [dumps({"source": "bench", "items": [r.model_dump() for r in readings[i:i + batch]]})
              for i in range(0, n, batch)]
    client = create_app(agg).test_client()
    started = time.process_time()
    for body in bodies:
        resp = client.post("/ingest", data=body, content_type="application/json")
        assert resp.status_code == 200, resp.data
    ingest_s = time.process_time() - started
    started = time.process_time()
    since, total = 0, 0
    while True:
        data = client.get(f"/changes?since={since}&limit=10000").data
        # Only the page's head is decoded: decoding 10,000 changes would be the bridge's cost,
        # not the aggregator's (and would dominate the figure).
        head = loads(data[:data.index(b',"changes":')] + b"}")
        if head["seq"] == since:
            break
        total += head["seq"] - since
        since = head["seq"]
    drain_s = time.process_time() - started
    assert total >= n, total
    return ingest_s, drain_s


def _median(runs: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tuned-gc", action="store_true",
                        help="collect garbage as the aggregator process does (app.py)")
    args = parser.parse_args()
    if args.tuned_gc:
        collect_less_often()
    n, batch = args.readings, args.batch
    core_s = _median(args.runs, lambda: core(n, batch))
    routes = [route(n, batch) for _ in range(args.runs)]
    route_s = statistics.median(r[0] for r in routes)
    drain_s = statistics.median(r[1] for r in routes)
    print(f"{n} readings, batches of {batch}, {DEVICES} devices, median of {args.runs} runs, "
          f"{'tuned' if args.tuned_gc else 'default'} gc, CPU time")
    for name, secs in (("core ingest", core_s), ("POST /ingest route", route_s),
                       ("GET /changes drain", drain_s)):
        print(f"  {name:20s} {secs:7.3f} s  {secs / n * 1e6:6.2f} us/reading  "
              f"{n / secs:9,.0f} readings/s")


if __name__ == "__main__":
    main()
