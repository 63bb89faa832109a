"""Retention and a full disk on a real small filesystem: a tmpfs of a few MB mounted for the
test (root only; skipped elsewhere). Nothing is simulated: the disk really fills."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.state_aggregator.core import Aggregator
from services.state_aggregator.history.retention import Limits
from services.state_aggregator.history.service import History
from shared.history_models import ReadingIn
from shared.instance import parse_instance
from shared.models import ReadingObs
from tests.helpers import tmpfs

T0 = 1_700_000_000.0
MB = 1024 * 1024
INSTANCE = parse_instance({
    "instance_id": "t", "friendly_name": "t", "config": {"sensors": [
        {"sensor_id": "s", "sensor_type": "climate", "source": {"type": "serial",
                                                               "port": "loop://"}}]}})


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", "8m") as mount:
        yield mount


def fill(path: Path, leave: int) -> None:
    """Grow a ballast file until only ``leave`` bytes are free."""
    free = shutil.disk_usage(path.parent).free
    with path.open("ab") as f:
        f.write(b"\0" * max(0, free - leave))


def readings(days: int, per_day: int) -> list[ReadingIn]:
    step = 86400 / per_day
    return [ReadingIn(device_id="s", ts_utc=T0 + i * step, payload={"t": i, "pad": "x" * 40})
            for i in range(days * per_day)]


def test_past_the_threshold_thins_evenly_and_keeps_the_newest_day(small_disk: Path) -> None:
    history = History(small_disk / "history.db", tz="UTC",
                      limits=Limits(max_bytes=None, disk_percent=50))
    assert history.store is not None and history.retention is not None
    history.post(readings(4, 2000))
    fill(small_disk / "ballast", leave=3 * MB)  # about 60 % used
    before = history.store.count()
    deleted = history.retention.check()
    assert deleted > 0 and history.store.count() == before - deleted
    newest = T0 + (4 * 2000 - 1) * 43.2
    day = history.store.query(start=newest - 86400, end=None, device_id="s", limit=10_000)
    assert len(day.readings) == 2001  # the newest day whole
    old_days = [len(history.store.query(start=T0 + d * 86400, end=T0 + (d + 1) * 86400,
                                        device_id="s", limit=10_000).readings) for d in range(3)]
    assert max(old_days) - min(old_days) <= 2, old_days  # evenly across time
    health = history.health()
    assert health["deleted"] == deleted and "DISK_USAGE_THRESHOLD" in health["last_retention"][
        "reason"]


def test_history_max_mb(small_disk: Path) -> None:
    history = History(small_disk / "history.db", tz="UTC",
                      limits=Limits(max_bytes=MB, disk_percent=100))
    assert history.store is not None and history.retention is not None
    history.post(readings(4, 2000))
    assert history.store.used_bytes() > MB
    # At most half of the older days per check: a few checks bring it under the limit (the
    # covering index makes each reading take more room, so it takes four from here).
    for _ in range(5):
        history.retention.check()
    assert history.store.used_bytes() < 1.1 * MB


def test_a_full_disk_keeps_live_data_flowing(small_disk: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    history = History(small_disk / "history.db", tz="UTC",
                      limits=Limits(max_bytes=None, disk_percent=100), check_interval=3600)
    history.start()
    agg = Aggregator(INSTANCE, handlers={}, cache_ttl=10, poll_interval=5)
    agg.history_sink = history.append
    fill(small_disk / "ballast", leave=0)
    caplog.set_level(logging.INFO, "services.state_aggregator.history")
    assert history.writer is not None
    for b in range(20):  # twenty batches fail to reach the disk
        result = agg.ingest([ReadingObs(device_id="s", ts=T0 + b * 100 + i,
                                        values={"t": i, "pad": "x" * 200}) for i in range(100)],
                            source="serial-handler")
        assert result == {"accepted": 100, "rejected": 0, "durable": False}
        history.writer.flush()
    state = agg.device("s").state
    assert state is not None and state.values["t"] == 99  # live data flows
    health = history.health()
    assert health["state"] == "degraded" and health["failed"] > 0
    assert any("database or disk is full" in r for r in health["reasons"])
    degraded = [r for r in caplog.records if "history degraded" in r.getMessage()]
    assert len(degraded) == 1, [r.getMessage() for r in degraded]  # one line per condition
    (small_disk / "ballast").unlink()
    agg.ingest([ReadingObs(device_id="s", ts=T0 + 10_000, values={"t": 1})], source="x")
    history.writer.flush()
    assert history.health()["state"] == "ok"
    assert any("history recovered" in r.getMessage() for r in caplog.records)
    history.stop()


def test_over_the_limit_with_nothing_old_to_thin_says_so(small_disk: Path) -> None:
    history = History(small_disk / "history.db", tz="UTC",
                      limits=Limits(max_bytes=100_000, disk_percent=100))
    assert history.store is not None and history.retention is not None
    history.post(readings(1, 2000))  # one day only: nothing may go
    assert history.retention.check() == 0
    health = history.health()
    assert health["state"] == "degraded"
    assert "nothing older than its newest day" in health["reasons"][0]
