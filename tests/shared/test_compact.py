"""``shared.compact.detached``: the result of ``make`` comes back equal, as new objects, and
what ``make`` allocated besides it is gone by then. ``give_back``: a peak freed in glibc's heap
goes back to the system, measured in the RSS of a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import weakref
from dataclasses import dataclass
from typing import Any

import pytest

from shared.compact import detached
from shared.instance import SerialSource
from tests.conftest import ROOT


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    interval: float
    units: dict[str, str]


class Scratch:
    """Something ``make`` allocates and does not return."""


def test_the_result_comes_back_equal_as_new_objects() -> None:
    source = SerialSource(type="serial", port="/dev/ttyUSB0", read_timeout=0.5)
    kept: list[object] = []

    def make() -> tuple[list[Row], dict[str, SerialSource]]:
        rows = [Row("sensor-" + str(i), 10.0 * i, {"temperature": "°C"}) for i in range(3)]
        kept.extend(rows)
        return rows, {source.port: source}

    rows, ports = detached(make)
    assert rows == kept and ports == {"/dev/ttyUSB0": source}
    assert all(new is not old for new, old in zip(rows, kept, strict=True))
    assert rows[0].name is not kept[0].name  # type: ignore[attr-defined]
    assert ports["/dev/ttyUSB0"] is not source


def test_what_make_allocated_besides_its_result_is_gone_first() -> None:
    alive: list[weakref.ref[Scratch]] = []

    def make() -> str:
        scratch = Scratch()
        scratch.self = scratch  # type: ignore[attr-defined]  # a cycle: only the collector frees it
        alive.append(weakref.ref(scratch))
        return "kept"

    assert detached(make) == "kept"
    assert alive[0]() is None


def test_a_result_that_cannot_be_copied_is_an_error() -> None:
    import threading

    with pytest.raises(TypeError):
        detached(threading.Lock)


def test_release_lets_go_of_the_originals_before_the_copy_is_made() -> None:
    """Packing long-lived structures again: ``release`` runs after the copy is taken and
    before it is made, so the originals are gone (the copy is not made among them)."""
    store: dict[str, list[Scratch]] = {"rows": [Scratch(), Scratch()]}
    alive = [weakref.ref(s) for s in store["rows"]]
    order: list[str] = []

    def make() -> list[str]:
        order.append("make")
        return [type(s).__name__ for s in store["rows"]]

    def release() -> None:
        order.append("release")
        store.clear()

    assert detached(make, release) == ["Scratch", "Scratch"]
    assert order == ["make", "release"]
    assert all(ref() is None for ref in alive)


# --- give_back: what a peak freed in glibc's heap goes back to the system ----------------------

# A fresh interpreter (the default allocator, as the programs run): a peak of 50,000 objects of
# 1.8 KB (past pymalloc's 512 bytes, so in glibc's heap, as request bodies, JSON and dict tables
# are), one in 500 kept, the rest freed; then ``give_back`` now, or ``give_back_soon`` and its
# trimmer thread. Its RSS growth over its start, MB, at each step.
PEAK = """
import gc, json, sys
from shared import compact
from tests.helpers import wait_for
from tests.shared.peak_app import rss_mb

before = rss_mb()
peak = [(b"%06d" % i) * 300 for i in range(50_000)]
kept = peak[::500]
grown = rss_mb() - before
del peak
gc.collect()
freed = rss_mb() - before
if sys.argv[1] == "now":
    answer = compact.give_back()
else:
    compact.give_back_soon()
    wait_for(lambda: compact.trims() == 1, timeout=30, what="the trimmer thread's trim")
    answer = None
print(json.dumps({"grown": grown, "freed": freed, "after": rss_mb() - before,
                  "answer": answer, "trims": compact.trims(), "kept": len(kept)}))
"""


def peak_freed(how: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONMALLOC", "MALLOC_"))}
    out = subprocess.run([sys.executable, "-c", PEAK, how], env={**env, "PYTHONPATH": str(ROOT)},
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def test_give_back_returns_a_freed_peak_to_the_system() -> None:
    r = peak_freed("now")
    assert r["grown"] > 50, r  # the peak is real
    assert r["freed"] > r["grown"] * 3 / 4, r  # freeing alone gives back nothing: a few kept
    assert r["answer"] is True, r  # glibc says it released memory
    assert r["after"] < r["grown"] / 4, r  # and it did


def test_give_back_soon_trims_once_on_its_thread() -> None:
    r = peak_freed("soon")
    assert r["trims"] == 1, r
    assert r["after"] < r["grown"] / 4, r
