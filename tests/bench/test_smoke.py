"""The benchmark harness runs end to end in its smallest mode and writes its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


@pytest.mark.bench
@pytest.mark.timeout(400)
def test_smoke_run_writes_json_and_table_beside_the_committed_results() -> None:
    committed = {p: p.read_bytes() for p in (RESULTS / "latest.json", RESULTS / "latest.md")
                 if p.exists()}
    smoke = RESULTS / "smoke"
    for old in smoke.glob("latest.*"):
        old.unlink()
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke"],
                          cwd=ROOT, capture_output=True, text=True, timeout=380, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # A smoke run never replaces the measured results.
    assert {p: p.read_bytes() for p in committed} == committed
    assert f"written: {smoke / 'latest.json'}, {smoke / 'latest.md'}" in proc.stdout
    results = json.loads((smoke / "latest.json").read_text())
    assert results["mode"] == "smoke"
    assert results["ceiling"]["qos1_msgs_per_s"] > 0
    assert results["e2e"]["throughput"]["readings_per_s"] > 0
    assert results["e2e"]["latency"]["lost"] == 0
    assert all(s["complete"] for s in results["scale"]["sizes"])
    assert results["startup"]["startup_s"] > 0
    master = results["master"]
    assert master["http"]["samples"] > 0 and not master["http"]["errors"]
    assert master["mqtt"]["unanswered"] == 0 and len(master["template_change_s"]) == 1
    table = (smoke / "latest.md").read_text()
    assert "| target | goal | measured |" in table
    assert "## MQTT ceiling" in table and "## Master control" in table
    # Tiny loads judge nothing: every verdict is "-", and the table says why.
    assert all(t["holds"] is None for t in results["targets"])
    assert "**holds**" not in table and "**missed**" not in table
    assert "smoke run: it only checks that the harness works" in table
