"""The change log's bounds: by count and by bytes, the oldest changes go, and a reader that
fell behind them is told to resync (it reloads the snapshot)."""

from __future__ import annotations

from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.state_aggregator.changes import ChangeLog
from shared.models import EventChange, StateChange, to_json, trusted


def _state(seq: int, n: int = 1) -> StateChange:
    return trusted(StateChange, seq=seq, device_seq=seq, device_id=f"d{seq % 7}", ts=float(seq),
                   values={f"p{i}": float(i) for i in range(n)}, sampled=["p0"])


def test_the_count_bound_drops_the_oldest_and_a_reader_behind_them_resyncs() -> None:
    log = ChangeLog(capacity=1000, max_bytes=2**30)
    for _ in range(1001):
        log.append(_state)
    stats = log.stats()
    assert stats["changes"] == 750 and stats["trimmed"] == 251  # down to 3/4 of the bound
    assert log.since(0)[1] is True  # the reader's position is gone: resync
    assert log.since(250)[1] is True
    last, resync, changes = log.since(251)
    assert (last, resync) == (1001, False)
    assert [c.seq for c in changes][:2] == [252, 253] and changes[-1].seq == 1001


def test_the_byte_bound_holds_whatever_the_size_of_the_changes() -> None:
    log = ChangeLog(capacity=10**6, max_bytes=100_000)
    for _ in range(2000):
        log.append(lambda seq: _state(seq, n=20))  # about 400 bytes each
        assert log.stats()["bytes"] <= 100_000
    stats = log.stats()
    assert 0 < stats["changes"] < 2000 and stats["trimmed"] == 2000 - stats["changes"]
    last, resync, changes = log.since(2000 - stats["changes"])
    assert not resync and len(changes) == stats["changes"] and last == 2000


def _sized(seq: int, *, n: int) -> StateChange:
    return _state(seq, n)


@pytest.mark.parametrize("limit", [1, 3, 10_000])
def test_pages_carry_the_changes_as_built_in_order(limit: int) -> None:
    log = ChangeLog()
    built: list[StateChange | EventChange] = [
        log.append(_state),
        log.append(lambda seq: EventChange(seq=seq, device_id="d1", ts=2.0,
                                           event="motion_started", data={"a": 1})),
        log.append(_state)]
    last, resync, page = log.since(0, limit=limit)
    assert not resync and page == built[:limit] and last == built[:limit][-1].seq
    json_last, _, raw = log.since_json(0, limit=limit)
    assert json_last == last and len(raw) == len(page)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=120),
       capacity=st.integers(1, 50), max_bytes=st.integers(1, 6000),
       readers=st.lists(st.integers(0, 130), max_size=5))
def test_every_page_is_the_json_of_the_changes_as_appended_across_trims(
        sizes: list[int], capacity: int, max_bytes: int, readers: list[int]) -> None:
    """The log keeps its changes in one buffer with their ends: whatever the bounds dropped, a
    page from any held position is each change's own JSON, in order, and the held bytes are
    theirs."""
    log = ChangeLog(capacity=capacity, max_bytes=max_bytes)
    appended: list[bytes] = []
    for n in sizes:
        appended.append(to_json(log.append(partial(_sized, n=n))))
        stats = log.stats()
        held = appended[len(appended) - stats["changes"]:]
        assert stats["bytes"] == sum(map(len, held))
        assert log.since_json(len(appended) - len(held))[2] == held
        for seq in readers:
            last, resync, page = log.since_json(seq, limit=7)
            if seq < len(appended) - len(held):
                assert resync  # behind the bounds: reload the snapshot
            elif seq <= len(appended):
                assert not resync and page == appended[seq:seq + 7]
                assert last == (seq + len(page) if page else len(appended))
