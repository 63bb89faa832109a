"""Where a process's memory goes, on request: with ``MEMPROFILE_DIR`` set (the benchmark's
``--profile``), every program traces its allocations (``tracemalloc``) and writes the top of a
snapshot to ``{MEMPROFILE_DIR}/{process}-{pid}-{tag}.txt`` whenever ``{MEMPROFILE_DIR}/request``
holds a new tag. A file, not a signal: gunicorn's master takes SIGUSR1/SIGUSR2 for itself, and a
file reaches the worker and the bridge alike. Unset (always, outside a profiling run), nothing
here runs. Development only: it is not a setting of the product."""

from __future__ import annotations

import os
import threading
import tracemalloc
from pathlib import Path

ENV = "MEMPROFILE_DIR"
FRAMES = 3
TOP = 40


def install(process: str) -> None:
    """Start tracing and watching for requests when ``MEMPROFILE_DIR`` is set."""
    where = os.environ.get(ENV)
    if not where:
        return
    if not tracemalloc.is_tracing():
        tracemalloc.start(FRAMES)
    threading.Thread(target=_watch, args=(Path(where), process), name="memprofile",
                     daemon=True).start()


def _watch(where: Path, process: str) -> None:
    done = ""
    stop = threading.Event()
    while not stop.wait(0.5):
        try:
            tag = (where / "request").read_text().strip()
        except OSError:
            continue
        if tag and tag != done:
            done = tag
            dump(where / f"{process}-{os.getpid()}-{tag}.txt")


def dump(path: Path) -> None:
    """The snapshot's top lines by size (with the traced total), then the top tracebacks."""
    snap = tracemalloc.take_snapshot().filter_traces((
        tracemalloc.Filter(inclusive=False, filename_pattern=tracemalloc.__file__),
        tracemalloc.Filter(inclusive=False, filename_pattern=__file__),
    ))
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"traced: {current / 2**20:.1f} MiB now, {peak / 2**20:.1f} MiB peak", "",
             "## by line"]
    lines += [str(s) for s in snap.statistics("lineno")[:TOP]]
    lines += ["", "## by file"]
    lines += [str(s) for s in snap.statistics("filename")[:TOP]]
    lines += ["", "## tracebacks"]
    for stat in snap.statistics("traceback")[:12]:
        lines.append(f"{stat.size / 2**20:.2f} MiB in {stat.count} blocks")
        lines += [f"    {frame}" for frame in stat.traceback.format()]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
