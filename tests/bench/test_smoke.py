"""The benchmark harness runs end to end in its smallest mode and writes its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.bench
@pytest.mark.timeout(400)
def test_smoke_run_writes_json_and_table(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=380, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "latest.json").read_text())
    assert results["mode"] == "smoke"
    assert results["ceiling"]["qos1_msgs_per_s"] > 0
    assert results["e2e"]["throughput"]["readings_per_s"] > 0
    assert results["e2e"]["latency"]["lost"] == 0
    assert all(s["complete"] for s in results["scale"]["sizes"])
    assert results["startup"]["startup_s"] > 0
    table = (tmp_path / "latest.md").read_text()
    assert "| target | goal | measured |" in table
    assert "## MQTT ceiling" in table
