"""``python -m bench.history``: what the readings history costs and how fast it answers.

- ingest: ``Aggregator.ingest`` of ``--readings`` readings in batches of ``--batch`` (as
  ``bench.ingest_cost``'s core figure) without a history, with the history's writer thread (the
  hot path only queues; the time until the queue is on disk is reported apart), and with the
  batch written inside ingest (what "on the hot path" would cost).
- queries: ``--rows`` readings of ``--devices`` devices (100) over 10 days in a fresh SQLite
  file (insert rate in batches of 10,000), then medians of a one-day range of one device (the
  whole day, in pages of 1,000 by cursor), ``latest`` of one device and of every device, store
  and route.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.ingest_cost import _aggregator, _readings
from services.state_aggregator.app import create_app
from services.state_aggregator.history.retention import Limits
from services.state_aggregator.history.service import History
from services.state_aggregator.history.store import HistoryStore, Rows
from shared.models import ReadingObs

DEVICES = 100
DAYS = 10
T0 = 1_760_000_000.0


def _history(tmp: Path) -> History:
    hist = History(tmp / f"h{time.monotonic_ns()}.db", tz="Europe/Berlin",
                   limits=Limits(max_bytes=None, disk_percent=100), max_pending=10_000_000)
    hist.start()
    return hist


def ingest(n: int, batch: int, mode: str, tmp: Path) -> tuple[float, float]:
    """Seconds in ``ingest`` and seconds until the history has everything on disk."""
    agg, readings = _aggregator(), _readings(n)
    hist = _history(tmp) if mode != "off" else None
    if hist is not None and hist.writer is not None:
        writer = hist.writer
        def inline(readings: list[ReadingObs]) -> None:
            writer.write(readings)

        agg.history_sink = writer.offer if mode == "thread" else inline
    started = time.perf_counter()
    for i in range(0, n, batch):
        agg.ingest(readings[i:i + batch], source="bench")
    hot = time.perf_counter() - started
    if hist is not None and hist.writer is not None:
        hist.writer.flush(600)
        hist.stop()
    return hot, time.perf_counter() - started


def _ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def sql_fill(path: Path, rows: int, devices: int, step: float) -> None:
    """The same rows, made by SQLite itself with the indexes built after: a set of 10 million
    in minutes instead of most of an hour of Python inserts. The file is the store's own
    (schema, indexes), so the query figures are the product's."""
    HistoryStore(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    indexes = [r[0] for r in conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'readings' "
        "AND sql IS NOT NULL")]
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND "
                                "tbl_name = 'readings' AND sql IS NOT NULL").fetchall():
        conn.execute(f"DROP INDEX {name}")
    ts = "(:t0 + (i / :dev) * :step)"
    conn.execute("BEGIN")
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :rows - 1) "  # noqa: S608
        "INSERT INTO readings (device_id, ts_us, ts_local, rkey, payload) "
        f"SELECT printf('dev%03d', i % :dev), {ts}, "
        f"strftime('%Y-%m-%dT%H:%M:%S', {ts} / 1000000, 'unixepoch') || '.000+00:00', "
        f"'@' || {ts}, printf('{{\"temperature\":%.1f,\"humidity\":%d}}', "
        "20 + (i % 70) / 10.0, 40 + i % 30) FROM n",
        {"rows": rows, "dev": devices, "t0": int(T0 * 1e6), "step": int(step * 1e6)})
    conn.execute("INSERT OR IGNORE INTO devices SELECT DISTINCT device_id FROM readings")
    conn.execute("COMMIT")
    for sql in indexes:
        conn.execute(sql)
    conn.close()


def _query_set(rows: int, tmp: Path, devices: int, *, by_sql: bool,
               db: Path | None) -> tuple[HistoryStore, Path]:
    """The store of the query set: kept from an earlier run (``--db``), or made now."""
    step = DAYS * 86400 / (rows / devices)
    started = time.perf_counter()
    chunk = 10_000
    path = db or tmp / "q.db"
    if db is not None and db.exists():
        # A set made before: opening it, and the upgrade the writer would run after the start,
        # apply any newer migration, timed apart.
        store = HistoryStore(path)
        store.upgrade()
        print(f"opened {path}: migrations applied in {time.perf_counter() - started:.1f} s; "
              f"{store.count():,} readings; file {store.file_bytes() / 1e6:.0f} MB")
        return store, path
    if by_sql:
        sql_fill(path, rows, devices, step)
        store = HistoryStore(path)
        how = "made by SQL, indexes built after"
    else:
        store = HistoryStore(path)
        builder = Rows("Europe/Berlin")
        for lo in range(0, rows, chunk):
            store.add([builder.row(f"dev{i % devices:03d}", T0 + (i // devices) * step,
                                   {"temperature": 20 + i % 70 / 10, "humidity": 40 + i % 30})
                       for i in range(lo, min(rows, lo + chunk))])
        how = f"batches of {chunk:,}"
    took = time.perf_counter() - started
    print(f"{rows:,} readings of {devices} devices inserted in {took:.1f} s "
          f"({rows / took:,.0f}/s, {how}); file {store.file_bytes() / 1e6:.0f} MB")
    return store, path


def queries(rows: int, tmp: Path, devices: int = DEVICES, *, by_sql: bool = False,
            db: Path | None = None) -> None:
    store, path = _query_set(rows, tmp, devices, by_sql=by_sql, db=db)
    rnd = random.Random(1)

    def one_day() -> int:
        dev, day = f"dev{rnd.randrange(devices):03d}", rnd.randrange(DAYS - 1)
        start = T0 + day * 86400
        cursor, total = None, 0
        while True:
            page = store.query(start=start, end=start + 86400, device_id=dev, limit=1000,
                               cursor=cursor, raw=True)
            total += len(page.readings)
            if (cursor := page.next_cursor) is None:
                return total

    per_day = one_day()
    print(f"  one day, one device ({per_day} readings):   {_ms(one_day, 30):7.2f} ms (store)")
    hist = History(path, tz="Europe/Berlin", limits=Limits(None, 100))
    client = create_app(_aggregator(), history=hist).test_client()

    def one_day_route() -> None:
        dev, day = f"dev{rnd.randrange(devices):03d}", rnd.randrange(DAYS - 1)
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + day * 86400))
        end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + day * 86400 + 86400))
        resp = client.get(f"/history/readings?device_id={dev}&start_date={start}"
                          f"&end_date={end}&limit=10000")
        assert resp.status_code == 200

    print(f"  one day, one device, GET route:        {_ms(one_day_route, 30):7.2f} ms")
    print(f"  latest, one device (store):            "
          f"{_ms(lambda: store.latest(f'dev{rnd.randrange(devices):03d}', raw=True), 200):7.3f} ms")

    def latest_route() -> None:
        dev = f"dev{rnd.randrange(devices):03d}"
        assert client.get(f"/history/readings/latest?device_id={dev}").status_code == 200

    print(f"  latest, one device, GET route:         {_ms(latest_route, 200):7.3f} ms")
    print(f"  latest, all {devices} devices (store):        {_ms(store.latest, 20):7.2f} ms")
    if db is not None:
        return  # a kept set is not thinned
    started = time.perf_counter()
    deleted = store.thin(0.25)
    print(f"  thin 25 % of the older days: {deleted:,} deleted in "
          f"{time.perf_counter() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--devices", type=int, default=DEVICES, help="devices of the query set")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--sql-fill", action="store_true",
                        help="make the query set in SQL (for 10 million: minutes, not an hour)")
    parser.add_argument("--db", type=Path, default=None,
                        help="keep the query set in this file and use it again when it exists "
                             "(no thinning then): before/after figures on one set")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_ingest:
            n = args.readings
            print(f"ingest: {n:,} readings, batches of {args.batch}, median of {args.runs} runs")
            for mode, label in (("off", "no history"), ("thread", "history, writer thread"),
                                ("inline", "history, written in ingest")):
                runs = [ingest(n, args.batch, mode, tmp) for _ in range(args.runs)]
                hot = statistics.median(r[0] for r in runs)
                disk = statistics.median(r[1] for r in runs)
                print(f"  {label:28s} ingest {hot / n * 1e6:6.2f} us/reading "
                      f"({n / hot:9,.0f}/s); all on disk after {disk:6.2f} s "
                      f"({n / disk:9,.0f}/s)")
        queries(args.rows, tmp, args.devices, by_sql=args.sql_fill, db=args.db)


if __name__ == "__main__":
    main()
