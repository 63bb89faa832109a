"""A WSGI app for ``test_serve``: ``/peak`` allocates a peak in glibc's heap (50,000 objects of
1.8 KB), keeps one in 500 and frees the rest, as a request that parses a big body does; every
request is answered with the worker's RSS in MB and the trims ``shared.compact`` made so far."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable
from typing import Any

from shared.compact import trims

KEPT: list[bytes] = []


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/peak":
        peak = [(b"%06d" % i) * 300 for i in range(50_000)]
        KEPT.extend(peak[::500])
        del peak
        gc.collect()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{rss_mb():.1f} {trims()}".encode()]
