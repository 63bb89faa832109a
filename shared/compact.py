"""Keeping what a process builds at start-up out of its start-up peak.

A process reads the instance file (its JSON tree, then its models: about 5 KB a sensor at once)
and builds from it the few things it keeps of each sensor (an id, a type, an interval). CPython
gives an arena of its allocator back to the system only once every object in it is free, and the
kept objects are made in the middle of the peak's: a few of them in each arena keep the whole peak
(measured with the serial handler's tables at 10,000 sensors: 73 MB RSS after the instance was
dropped, 49 MB when the same tables were made after it). ``detached`` makes them after it.
"""

from __future__ import annotations

import gc
import pickle
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def detached(make: Callable[[], T], release: Callable[[], None] | None = None) -> T:
    """What ``make()`` returns, as a copy made once everything else ``make`` allocated is gone.

    ``make`` must keep nothing it allocated (load the instance file inside it, return only what
    is kept); its result must be plain data that pickles (strings, numbers, containers, slotted
    records, models). The copy's objects are new ones, packed into the memory left in use.
    ``release`` (called once the copy is taken, before it is made) lets go of the originals
    when they are long-lived structures being packed again: the copy made while they lived
    would land among them, in the arenas they keep."""
    blob = pickle.dumps(make(), protocol=pickle.HIGHEST_PROTOCOL)
    if release is not None:
        release()
    gc.collect()  # anything ``make`` left in a reference cycle goes before the copy is made
    # the blob is our own, made two lines above: nothing untrusted is unpickled
    return pickle.loads(blob)  # type: ignore[no-any-return]  # noqa: S301
