"""The report judges targets only for runs whose loads are the targets' own: a smoke run's
table says why it judges none (its loads are far below the goals)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import report

COMMITTED = Path(__file__).resolve().parents[2] / "bench" / "results" / "latest.json"


def _committed() -> dict[str, Any]:
    results: dict[str, Any] = json.loads(COMMITTED.read_text())
    return results


def test_a_measured_run_is_judged() -> None:
    rows = report.targets(_committed())
    assert rows and any(row["holds"] is not None for row in rows)


def test_a_smoke_run_judges_nothing_and_says_why() -> None:
    results = _committed() | {"mode": "smoke"}
    results["targets"] = report.targets(results)
    assert results["targets"] and all(row["holds"] is None for row in results["targets"])
    table = report.markdown(results)
    assert report.SMOKE_NOTE in table
    assert "**holds**" not in table and "**missed**" not in table
