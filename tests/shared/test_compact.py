"""``shared.compact.detached``: the result of ``make`` comes back equal, as new objects, and
what ``make`` allocated besides it is gone by then."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import pytest

from shared.compact import detached
from shared.instance import SerialSource


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
