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


def _master(*, p99: float, growth_mb: float, republish_s: float) -> dict[str, Any]:
    memory = {"state-aggregator": {"rss_mb": 100.0, "pss_mb": 70.0}}
    grown = {"state-aggregator": {"rss_mb": 100.0 + growth_mb, "pss_mb": 70.0}}
    return {"mqtt_sensors": 1000, "http_sensors": 200, "period_s": 10.0, "window_s": 600.0,
            "warmup_s": 10.0, "register_s": 20.0,
            "mqtt": {"samples": 6000, "p50_ms": 8.0, "p99_ms": p99, "max_ms": 400.0,
                     "published": 60000, "timed": 6000, "unanswered": 0},
            "http": {"samples": 12000, "p50_ms": 8.0, "p99_ms": 20.0, "max_ms": 90.0,
                     "sent": 12100, "errors": {}},
            "memory_samples": [{"t_s": 0, "memory": memory, "loadavg": 1.0},
                               {"t_s": 600, "memory": grown, "loadavg": 1.0}],
            "memory_growth": {"state-aggregator": {"rss_mb": growth_mb, "pss_mb": 0.0}},
            "template_change_s": [republish_s], "template_change_median_s": republish_s}


def test_master_control_targets_are_judged_from_their_figures() -> None:
    good = {row["target"]: row["holds"] for row in report.targets(
        {"mode": "full", "master": _master(p99=40.0, growth_mb=1.0, republish_s=1.5)})}
    assert good == {"master: heartbeat → status": True, "master: memory": True,
                    "master: template change": True}
    bad = {row["target"]: row["holds"] for row in report.targets(
        {"mode": "full", "master": _master(p99=150.0, growth_mb=20.0, republish_s=2.5)})}
    assert set(bad.values()) == {False}
    table = report.markdown({**_committed(), "master": _master(p99=40, growth_mb=1,
                                                               republish_s=1.5),
                             "targets": []})
    assert "## Master control (1,000 sensors over MQTT + 200 over HTTP" in table
