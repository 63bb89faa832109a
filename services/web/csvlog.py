"""``CSV_FILE``: every probe reading appended as one row, flushed per row, so the file can be
opened in a spreadsheet while the hub runs. Columns: ``timestamp, probe_id, temperature_c,
readings`` (the other readings as compact JSON, empty when there are none).

A row the disk refuses (full, read-only) is counted and the condition kept for ``/api/health``,
with one log line when it starts and one when it ends: the reading has already gone to the
aggregator, so the probe's request must not fail for it (a retrying probe would duplicate it)."""

from __future__ import annotations

import csv
import logging
import threading
from pathlib import Path
from typing import Any

from shared.jsonutil import dumps
from shared.timeutil import iso

log = logging.getLogger(__name__)

HEADER = ("timestamp", "probe_id", "temperature_c", "readings")


def resolve(path: Path, data_dir: Path) -> Path:
    """A relative ``CSV_FILE`` lives under ``DATA_DIR``."""
    return path if path.is_absolute() else data_dir / path


class CsvLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.rows = 0
        self.failed = 0
        self.problem: str | None = None

    def append(self, ts: float, probe_id: str, values: dict[str, Any]) -> bool:
        """Append one row; ``False`` when the disk refused it (never raises for that)."""
        others = {k: v for k, v in values.items() if k != "temperature_c"}
        row = (iso(ts), probe_id, values.get("temperature_c", ""),
               dumps(others).decode() if others else "")
        with self._lock:
            try:
                self._write(row)
            except OSError as exc:
                self.failed += 1
                if self.problem is None:
                    log.warning("CSV log %s cannot store rows: %s; readings still reach the "
                                "hub", self.path, exc)
                self.problem = f"CSV log {self.path}: {exc}"
                return False
            if self.problem is not None:
                log.info("CSV log %s stores rows again", self.path)
                self.problem = None
            self.rows += 1
            return True

    def _write(self, row: tuple[str, str, Any, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Opened per row: a file moved away or deleted by the user is simply started again,
        # with its header.
        with self.path.open("a", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            if fh.tell() == 0:
                writer.writerow(HEADER)
            writer.writerow(row)
            fh.flush()
