"""``python -m firmware.host`` as a user runs it: several probes in one process, each on its own
port, answering as themselves; SIGTERM stops them all."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.conftest import ROOT


def test_count_runs_many_probes_on_their_own_ports(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "firmware.host", "--id", "cli", "--count", "3",
                             "--state", str(tmp_path), "--bind", "127.0.0.1", "--no-mdns",
                             "--no-master"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(3)]
        ports = {line.split()[0]: int(line.rsplit(":", 1)[1]) for line in lines}
        assert sorted(ports) == ["cli-1", "cli-2", "cli-3"] and len(set(ports.values())) == 3
        for probe_id, port in ports.items():
            assert requests.get(f"http://127.0.0.1:{port}/whoami", timeout=5).json()["id"] == probe_id
            assert (tmp_path / probe_id / "buffer.json").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
