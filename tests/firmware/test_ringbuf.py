"""The offline ring buffer on the host HAL's files: order, bounds, the dropped counter, and what
survives a reboot (a new RingBuffer over the same files)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.hal.host import HostHal
from firmware.ringbuf import RecordTooLarge, RingBuffer


def hal(tmp: Path) -> HostHal:
    return HostHal(tmp, probe_id="ring", bind="127.0.0.1")


def test_fifo_order_and_survives_a_reboot(tmp_path: Path) -> None:
    ring = RingBuffer(hal(tmp_path), "buf", 5)
    for i in range(3):
        ring.append({"r": {"temperature_c": 20 + i}})
    again = RingBuffer(hal(tmp_path), "buf", 5)
    assert again.count == 3
    assert [r["r"]["temperature_c"] for r in again.peek(10)] == [20, 21, 22]
    again.drop_oldest(2)
    assert [r["n"] for r in RingBuffer(hal(tmp_path), "buf", 5).peek(10)] == [3]


def test_full_ring_drops_the_oldest_and_counts_it(tmp_path: Path) -> None:
    ring = RingBuffer(hal(tmp_path), "buf", 4)
    for i in range(10):
        ring.append({"r": {"i": i}})
    assert (ring.count, ring.dropped) == (4, 6)
    assert [r["r"]["i"] for r in ring.peek(10)] == [6, 7, 8, 9]
    assert RingBuffer(hal(tmp_path), "buf", 4).dropped == 6


def test_a_reading_too_large_for_a_slot_is_refused(tmp_path: Path) -> None:
    ring = RingBuffer(hal(tmp_path), "buf", 4)
    with pytest.raises(RecordTooLarge, match="does not fit"):
        ring.append({"r": {"x" * 300: 1}})
    assert ring.count == 0


def test_a_resized_ring_starts_empty_and_counts_what_it_lost(tmp_path: Path) -> None:
    ring = RingBuffer(hal(tmp_path), "buf", 4)
    ring.append({"r": {"i": 1}})
    bigger = RingBuffer(hal(tmp_path), "buf", 8)
    assert (bigger.count, bigger.dropped, bigger.next_seq) == (0, 1, 2)


def test_corrupt_meta_is_a_fresh_ring_not_a_crash(tmp_path: Path) -> None:
    h = hal(tmp_path)
    RingBuffer(h, "buf", 4).append({"r": {"i": 1}})
    h.write("buf.json", b"{not json")
    assert RingBuffer(h, "buf", 4).count == 0


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.one_of(st.just(-1), st.integers(min_value=1, max_value=5)), max_size=40),
       slots=st.integers(min_value=1, max_value=6))
def test_behaves_like_a_bounded_deque(tmp_path_factory: pytest.TempPathFactory, ops: list[int],
                                      slots: int) -> None:
    """-1 appends the next number; k drops the k oldest. The model is a plain list."""
    ring = RingBuffer(hal(tmp_path_factory.mktemp("r")), "buf", slots)
    model: list[int] = []
    dropped = 0
    counter = 0
    for op in ops:
        if op == -1:
            counter += 1
            ring.append({"r": {"v": counter}})
            model.append(counter)
            if len(model) > slots:
                model.pop(0)
                dropped += 1
        else:
            ring.drop_oldest(op)
            del model[:op]
    assert [r["r"]["v"] for r in ring.peek(100)] == model
    assert ring.dropped == dropped
