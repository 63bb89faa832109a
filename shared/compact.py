"""Keeping what a process builds at start-up out of its start-up peak.

A process reads the instance file (its JSON tree, then its models: about 5 KB a sensor at once)
and builds from it the few things it keeps of each sensor (an id, a type, an interval). CPython
gives an arena of its allocator back to the system only once every object in it is free, and the
kept objects are made in the middle of the peak's: a few of them in each arena keep the whole peak
(measured with the serial handler's tables at 10,000 sensors: 73 MB RSS after the instance was
dropped, 49 MB when the same tables were made after it). ``detached`` makes them after it.

``give_back`` returns the free memory inside glibc's heap to the system (``malloc_trim``).
Objects over 512 bytes live there, not in pymalloc's arenas: dict and list tables, request
bodies, JSON, pages of changes. glibc gives back only the top of its heap by itself, so a peak of
them with a few kept among them stays with the process until asked. After the work that leaves
such a peak (``detached``, a gunicorn request, a page of changes published, a discovery round) a
process asks (``give_back_soon``), and its trimmer thread trims once the work pauses.
``PYTHONMALLOC=malloc`` (every small object in glibc's heap too, so the trim would reach them)
was measured and is not used: more memory and more CPU (bench/README.md, the allocator).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import pickle
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# give_back_soon: the trim comes once the process has asked nothing for QUIET_S, or MAX_WAIT_S after
# the first ask under work that never pauses. Not during a burst: what a trim gives back, the
# burst's next piece takes again from the system (page faults, zeroed pages).
QUIET_S = 0.5
MAX_WAIT_S = 10.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]  # type: ignore[attr-defined]
    trim.restype = ctypes.c_int  # type: ignore[attr-defined]
    return trim


_trim = _malloc_trim()


def give_back() -> bool:
    """Give the free pages of glibc's heap back to the system now (``malloc_trim(0)``: the
    free memory in the middle of the heap too, not only at its top). True when glibc says it
    released some; False when it had nothing to give back or has no ``malloc_trim``. It walks
    the heap's free chunks under the arenas' locks (about 10 ms after a peak of 150 MB), so
    once after work, not after every allocation."""
    return _trim is not None and _trim(0) == 1


class _Trimmer:
    """The one thread of a process that calls ``give_back`` when work asked for it and paused."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._first: float | None = None  # the first ask since the last trim
        self._last = 0.0
        self._thread: threading.Thread | None = None
        self.trims = 0

    def ask(self) -> None:
        now = time.monotonic()
        with self._cond:
            self._last = now
            if self._first is None:
                self._first = now
                self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="give-back", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._first is None:
                    self._cond.wait()
                wait = min(self._last + QUIET_S, self._first + MAX_WAIT_S) - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                self._first = None  # asks from here on are for the next trim
            give_back()
            with self._cond:
                self.trims += 1
                self._cond.notify_all()


_trimmer = _Trimmer()


def give_back_soon() -> None:
    """``give_back`` on the process's trimmer thread once nothing has asked for ``QUIET_S``
    (at the latest ``MAX_WAIT_S`` after this ask): each piece of work that leaves memory
    behind (a request, a page of changes published, a discovery round) asks, and a burst of
    them gets one trim, after its end. Cheap: a lock and a clock read."""
    _trimmer.ask()


def trims() -> int:
    """How many trims ``give_back_soon`` has made in this process."""
    with _trimmer._cond:
        return _trimmer.trims


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
    copy: T = pickle.loads(blob)  # noqa: S301
    del blob
    give_back_soon()  # what ``make`` allocated, and the blob, are free now
    return copy
