"""The durable change log: every accepted change is on disk before ``ingest`` returns, the
numbering, the epoch and each device's ``seq`` go on after a restart, a resent handler batch is
not applied twice, a reader resumes from its committed cursor, and what is unread is thinned
past the limit (the newest per device and every other kind kept)."""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import orjson
import pytest

from services.state_aggregator.app import create_app
from services.state_aggregator.core import Aggregator
from services.state_aggregator.outbox.service import Outbox
from shared.models import Change, ErrorObs, EventObs, ReadingObs, StateChange
from tests.services.state_aggregator.test_aggregator import INSTANCE

MB = 1_000_000


def outbox(tmp_path: Path, *, max_mb: float = 256) -> Outbox:
    return Outbox(tmp_path / "outbox.db", max_bytes=int(max_mb * MB), min_free_bytes=0)


def make(box: Outbox) -> Aggregator:
    return Aggregator(INSTANCE, handlers={}, cache_ttl=10, poll_interval=5, outbox=box)


def readings(n: int, t0: float, device: str = "temp") -> list[ReadingObs]:
    return [ReadingObs(device_id=device, ts=t0 + i, values={"temperature": i}) for i in range(n)]


def read_all(agg: Aggregator, since: int = 0) -> list[Change]:
    """Every change after ``since``, page by page as a reader takes them."""
    items: list[Change] = []
    while since < agg.changes.seq:
        since, resync, page = agg.changes.since(since, limit=100_000)
        assert not resync and page
        items.extend(page)
    return items


def test_changes_are_stored_before_ingest_answers_and_survive_a_restart(tmp_path: Path) -> None:
    t0 = time.time()
    first = make(outbox(tmp_path))
    assert first.ingest(readings(5, t0), batch_id="b1")["durable"] is True
    seq, epoch = first.changes.seq, first.changes.epoch
    # A new process on the same file (nothing closed: as after kill -9).
    second = make(outbox(tmp_path))
    assert (second.changes.epoch, second.changes.seq) == (epoch, seq)
    state = second.devices["temp"].state
    assert state is not None and state.device_seq == 5 and state.values == {"temperature": 4}
    second.ingest(readings(1, t0 + 10))
    new = second.devices["temp"].state
    assert new is not None and new.device_seq == 6 and new.seq > seq  # numbering goes on
    # A reader behind what memory holds reads it from disk, then from memory, in order.
    items = read_all(second)
    states = [c for c in items if isinstance(c, StateChange)]
    assert [s.device_seq for s in states] == [1, 2, 3, 4, 5, 6]


def test_a_resent_batch_is_answered_again_not_applied_twice(tmp_path: Path) -> None:
    t0 = time.time()
    agg = make(outbox(tmp_path))
    items: list[ReadingObs | EventObs | ErrorObs] = [
        *readings(3, t0), EventObs(device_id="temp", ts=t0, event="door"),
        ErrorObs(device_id="temp", ts=t0, error_code="E1", message="m")]
    answer = agg.ingest(items, batch_id="serial-1")
    seq = agg.changes.seq
    # The aggregator restarts after storing the batch but before the handler got the answer.
    again = make(outbox(tmp_path)).ingest(items, batch_id="serial-1")
    assert again["duplicate"] is True
    assert (again["accepted"], again["rejected"]) == (answer["accepted"], answer["rejected"])
    assert make(outbox(tmp_path)).changes.seq == seq  # nothing appended for it


def test_a_reader_commits_its_cursor_and_what_it_passed_is_released(tmp_path: Path) -> None:
    box = outbox(tmp_path)
    agg = make(box)
    agg.ingest(readings(100, time.time()))
    assert box.cursor("mqtt-bridge") is None
    box.commit("mqtt-bridge", 60)
    box.maintain()
    assert box.health()["pending"] == agg.changes.seq - 60
    assert box.store is not None and box.store.first_seq() == 61
    assert make(outbox(tmp_path)).outbox is not None
    assert outbox(tmp_path).cursor("mqtt-bridge") == 60


def test_past_the_limit_old_intermediate_states_are_thinned(tmp_path: Path) -> None:
    box = outbox(tmp_path, max_mb=0.05)
    agg = make(box)
    t0 = time.time() - 10_000
    agg.ingest([*readings(1000, t0), *readings(1000, t0, device="slow"),
                EventObs(device_id="temp", ts=t0 + 5, event="door"),
                ErrorObs(device_id="slow", ts=t0 + 6, error_code="E1", message="m")])
    before = box.store.pending(0) if box.store else None
    box.maintain()
    health = box.health()
    assert before is not None and health["thinned"] > 0
    assert health["pending"] == before.rows - health["thinned"]
    assert "OUTBOX_MAX_MB" in health["thinning"]
    stored = box.store.changes() if box.store else []
    kinds = [c.kind for c in stored]
    assert kinds.count("event") == 1 and kinds.count("error") == 1  # every event and error
    for device in ("temp", "slow"):
        seqs = [c.device_seq for c in stored if isinstance(c, StateChange)
                and c.device_id == device]
        assert seqs[-1] == 1000  # the newest state of each device
        assert seqs == sorted(seqs) and len(seqs) < 1000
        gaps = {b - a for a, b in itertools.pairwise(seqs)}
        assert len(gaps - {1}) <= 2, gaps  # evenly thinned: one stride (and the live edge)


def test_events_are_not_thinned_while_intermediate_states_are_left_to_give(
        tmp_path: Path) -> None:
    """A backlog that one check cannot thin under the limit (its rounds halve the states at
    most 8 times) keeps every event: they are thinned only once no state is left to give (they
    used to go in the same check, and a hub short of disk lost a backlog's events)."""
    t0 = time.time() - 20_000
    box = outbox(tmp_path, max_mb=0.01)
    agg = make(box)
    for k in range(10):  # a mark among every 1,000 readings
        agg.ingest([EventObs(device_id="temp", ts=t0 + k * 1000, event=f"mark{k}"),
                    *(ReadingObs(device_id="temp", ts=t0 + k * 1000 + i, values={"t": i})
                      for i in range(1000))])
    assert box.store is not None
    box.maintain()
    health = box.health()
    assert health["thinned"] > 0 and box.store.pending(0).bytes > 0.01 * MB  # still over
    assert health["thinned_events"] == 0
    assert sum(c.kind == "event" for c in box.store.changes()) == 10
    for _ in range(10):  # the states give what they can, then the events are bounded too
        box.maintain()
    assert box.health()["thinned_events"] > 0


def test_a_log_full_of_events_errors_and_command_results_is_bounded_too(
        tmp_path: Path) -> None:
    """Past the limit with nothing but events and errors unread (no state to thin), the oldest of
    them are thinned the same way, evenly across time, and counted apart from the states."""
    box = outbox(tmp_path, max_mb=0.05)
    agg = make(box)
    t0 = time.time() - 10_000
    agg.ingest([*readings(1, time.time()),
                *(EventObs(device_id="temp", ts=t0 + i, event="door", data={"i": i})
                  for i in range(1500)),
                *(ErrorObs(device_id="slow", ts=t0 + i, error_code="E1", message=f"m{i}")
                  for i in range(1500))])
    assert box.store is not None
    before = box.store.pending(0)
    assert before.bytes > 0.05 * MB
    others = [c for c in box.store.changes() if c.kind not in ("state", "event", "error")]
    assert others  # the device came online: an availability change
    box.maintain()
    health = box.health()
    assert health["thinned"] == 0  # no intermediate state to give
    assert health["thinned_events"] > 0
    assert health["pending"] == before.rows - health["thinned_events"]
    after = box.store.pending(0)
    assert after.bytes <= 0.05 * MB, after  # under the limit again
    stored = box.store.changes()
    assert sum(isinstance(c, StateChange) for c in stored) == 1  # the device's newest state
    for kind, device, field in (("event", "temp", "data"), ("error", "slow", "message")):
        kept = [c for c in stored if c.kind == kind and c.device_id == device]
        assert 0 < len(kept) < 1500
        assert getattr(kept[-1], field) in ({"i": 1499}, "m1499")  # the newest always stays
        times = [c.ts for c in kept]
        assert times == sorted(times) and times[0] - t0 < 100  # old ones kept too: stratified
    # Availability and registry changes are never thinned.
    assert [c for c in stored if c.kind not in ("state", "event", "error")] == others


def test_published_changes_stay_for_replay_and_the_range_is_answered_from_disk(
        tmp_path: Path) -> None:
    """The newest ``replay`` published changes stay on disk for the dashboard's reconnecting
    browsers: which devices changed after a position is answered from disk once memory let it
    go, and a position older than the log keeps is answered "not held" (the browser reloads)."""
    box = Outbox(tmp_path / "outbox.db", max_bytes=256 * MB, min_free_bytes=0, replay=50)
    agg = Aggregator(INSTANCE, handlers={}, cache_ttl=10, poll_interval=5, outbox=box,
                     changelog_capacity=10)
    t0 = time.time() - 1000  # the last readings below are 320 s later, still not in the future
    agg.ingest(readings(100, t0))
    mid = agg.changes.seq
    agg.ingest(readings(5, t0 + 200, device="slow"))
    agg.ingest(readings(20, t0 + 300))
    last = agg.changes.seq
    box.commit("mqtt-bridge", last)  # everything published
    box.maintain()
    assert box.floor() == last - 50  # released up to the replay window, not the cursor
    assert box.health()["pending"] == 0
    # Memory holds the last 10 changes at most: the rest of the range comes from the disk.
    assert agg.changes.changed_between(last - 5, last) == (["temp"], [])
    assert set(devices(agg, mid, last)) == {"temp", "slow"}
    assert agg.changes.changed_between(last - 30, last - 20) is not None
    assert agg.changes.changed_between(last - 51, last) is None  # released: not held
    assert agg.changes.since(last - 51)[1] is True  # a reader that far behind reloads
    assert agg.changes.since(last - 50)[1] is False
    # A new process on the file: the floor, the range and the numbering are the same.
    again = Aggregator(INSTANCE, handlers={}, cache_ttl=10, poll_interval=5,
                       outbox=outbox(tmp_path), changelog_capacity=10)
    assert again.changes.seq == last
    assert set(devices(again, mid, last)) == {"temp", "slow"}
    assert again.changes.changed_between(last - 51, last) is None


def devices(agg: Aggregator, since: int, until: int) -> list[str]:
    found = agg.changes.changed_between(since, until)
    assert found is not None
    return found[0]


@pytest.mark.parametrize("in_memory", [True, False])
def test_the_events_errors_and_command_results_of_a_range_come_with_it(
        tmp_path: Path, in_memory: bool) -> None:
    box = Outbox(tmp_path / "outbox.db", max_bytes=256 * MB, min_free_bytes=0, replay=10_000)
    agg = Aggregator(INSTANCE, handlers={}, cache_ttl=10, poll_interval=5, outbox=box,
                     changelog_capacity=100_000 if in_memory else 1000)
    t0 = time.time() - 2000  # 1,500 readings a second apart below, none in the future
    agg.ingest(readings(10, t0))
    since = agg.changes.seq
    agg.ingest([*readings(1500, t0 + 20), EventObs(device_id="temp", ts=t0 + 30, event="door"),
                ErrorObs(device_id="slow", ts=t0 + 31, error_code="E1", message="m"),
                *readings(5, t0 + 40, device="slow")])
    found = agg.changes.changed_between(since, agg.changes.seq)
    assert found is not None
    changed, notes = found
    assert set(changed) == {"temp", "slow"}
    assert [orjson.loads(n)["kind"] for n in notes] == ["event", "error"]
    assert [orjson.loads(n)["device_id"] for n in notes] == ["temp", "slow"]
    found = agg.changes.changed_between(since, agg.changes.seq, notes=1)
    assert found is not None and [orjson.loads(n)["kind"] for n in found[1]] == ["error"]


def test_changed_devices_route(tmp_path: Path) -> None:
    agg = make(outbox(tmp_path))
    agg.ingest(readings(3, time.time()))
    client = create_app(agg).test_client()
    seq, epoch = agg.changes.seq, agg.changes.epoch
    body = client.get(f"/changes/devices?since={seq - 2}&until={seq}&epoch={epoch}").json
    assert body is not None and body["complete"] is True and body["devices"] == ["temp"]
    assert body["notes"] == []
    other = client.get("/changes/devices?since=0&epoch=elsewhere").json
    assert other is not None and other["complete"] is False and other["devices"] == []
    assert client.get("/changes/devices?since=x").status_code == 400


def test_a_corrupt_file_is_moved_aside_with_a_log_line(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a database" * 1000)
    caplog.set_level(logging.ERROR)
    box = outbox(tmp_path)
    assert box.store is not None and "unreadable" in caplog.text
    assert list(tmp_path.glob("outbox.db.corrupt-*"))
    assert make(box).ingest(readings(1, time.time()))["durable"] is True


def test_cursor_routes(tmp_path: Path) -> None:
    agg = make(outbox(tmp_path))
    agg.ingest(readings(3, time.time()))
    client = create_app(agg).test_client()
    got = client.get("/cursors/mqtt-bridge").get_json()
    assert got["seq"] is None and got["epoch"] == agg.changes.epoch and got["durable"] is True
    wrong = client.post("/cursors/mqtt-bridge", json={"epoch": "other", "seq": 2})
    assert wrong.status_code == 409
    assert client.post("/cursors/mqtt-bridge", json={"epoch": agg.changes.epoch, "seq": -1}
                       ).status_code == 422
    ok = client.post("/cursors/mqtt-bridge", json={"epoch": agg.changes.epoch, "seq": 2})
    assert ok.status_code == 200
    assert client.get("/cursors/mqtt-bridge").get_json()["seq"] == 2
    health = client.get("/health").get_json()
    assert set(health["outbox"]) >= {"pending", "oldest_age_s", "thinned", "state"}
