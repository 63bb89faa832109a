"""The hub page's figures from the aggregator's ``/health`` and the bridge's status file, without
HTTP: what is shown, and what a missing or broken part becomes."""

from __future__ import annotations

import json
import time
from pathlib import Path

from services.web.dashboard import hub


def test_history_figures_split_into_counters_retention_and_forwarding() -> None:
    shown = hub.history({"history": {
        "state": "degraded", "reasons": ["disk over 80 %"], "path": "/data/history.db",
        "backend": "sqlite", "file_bytes": 4096, "stored": 10, "dropped": 0,
        "last_retention": {"at": 0.0, "reason": None, "deleted": 0, "took_s": 0.01},
        "forward": {"backlog": 3, "last_error": "central hub unreachable"}}})
    assert shown is not None
    assert (shown["state"], shown["reasons"]) == ("degraded", ["disk over 80 %"])
    assert shown["figures"] == {"backend": "sqlite", "file_bytes": 4096, "stored": 10,
                                "dropped": 0}
    assert shown["last_retention"]["at"] == "1970-01-01T00:00:00.000Z"
    assert shown["forward"] == {"backlog": 3, "last_error": "central hub unreachable"}
    assert hub.history({"history": None}) is None  # an aggregator without a history
    assert hub.history({})  is None


def test_mqtt_status_carries_the_outbox_and_says_when_it_is_missing_or_stale(
        tmp_path: Path) -> None:
    assert hub.mqtt(tmp_path)["problem"].startswith("no bridge status in mqtt-bridge.json")
    status = {"connected": True, "client_id": "c", "updated": time.time(),
              "outbox": {"pending": 7, "oldest_age_s": 1.5, "thinned": 0}}
    (tmp_path / "mqtt-bridge.json").write_text(json.dumps(status))
    shown = hub.mqtt(tmp_path)
    assert (shown["connected"], shown["outbox"]["pending"], shown["problem"]) == (True, 7, None)
    (tmp_path / "mqtt-bridge.json").write_text(json.dumps({**status, "updated": 0}))
    assert hub.mqtt(tmp_path)["problem"] == "status is stale (bridge stuck?)"
