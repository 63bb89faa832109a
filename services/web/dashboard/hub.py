"""What the hub page shows, free of Flask: the programs as supervisord reports them (its socket in
``HUB_RUN_DIR``), the MQTT connection and the outbox backlog as the bridge writes them to its
status file there, and the aggregator's own health and counters, with the readings history's
size and retention figures. Each part that cannot be read says why instead of failing the
page."""

from __future__ import annotations

import time
import xmlrpc.client
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from shared.errors import ServiceError
from shared.jsonutil import JSONDecodeError, loads
from shared.processes import MQTT_BRIDGE, PROCESS_NAMES
from shared.rest import RestClient
from shared.timeutil import iso


def processes(run_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    """``([{name, state, description}], problem)`` from supervisord."""
    transport = SupervisorTransport(None, None, f"unix://{run_dir / 'supervisor.sock'}")
    proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    try:
        infos: Any = proxy.supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error) as exc:
        return ([{"name": n, "state": "UNKNOWN", "description": ""} for n in PROCESS_NAMES],
                f"supervisord is not answering on {run_dir / 'supervisor.sock'}: {exc}")
    return ([{"name": str(i["name"]), "state": str(i["statename"]),
              "description": str(i.get("description", ""))} for i in infos], None)


def mqtt(run_dir: Path) -> dict[str, Any]:
    """The bridge's own word on its MQTT connection, and how old that word is."""
    path = run_dir / f"{MQTT_BRIDGE.name}.json"
    try:
        status = loads(path.read_bytes())
    except (OSError, JSONDecodeError) as exc:
        return {"connected": False, "problem": f"no bridge status in {path.name}: {exc}"}
    age = time.time() - float(status.get("updated", 0))
    outbox = status.get("outbox")
    return {"connected": bool(status.get("connected")), "client_id": status.get("client_id"),
            "age_s": round(age, 1), "outbox": outbox if isinstance(outbox, dict) else None,
            "problem": "status is stale (bridge stuck?)" if age > 30 else None}


def aggregator(client: RestClient) -> dict[str, Any]:
    """The aggregator's health, cache and error counters (``problem`` when it is not answering)."""
    try:
        return {"health": client.get("/health", timeout=3.0),
                "cache": client.get("/cache/stats", timeout=3.0),
                "counters": client.get("/errors", timeout=3.0).get("counters", {}),
                "problem": None}
    except ServiceError as exc:
        return {"health": {}, "cache": {}, "counters": {}, "problem": str(exc)}


def history(health: dict[str, Any]) -> dict[str, Any] | None:
    """The readings history's figures from the aggregator's ``/health`` (``None`` without one):
    its state and reasons, size, the writer's counters, what retention last did and, when it
    forwards to a central store, the forwarder's own figures."""
    found = health.get("history")
    if not isinstance(found, dict):
        return None
    last = found.get("last_retention") if isinstance(found.get("last_retention"), dict) else None
    forward = found.get("forward") if isinstance(found.get("forward"), dict) else None
    figures = {k: v for k, v in found.items()
               if k not in ("state", "reasons", "path", "last_retention", "forward")}
    return {"state": found.get("state"), "reasons": found.get("reasons") or [],
            "path": found.get("path"), "figures": figures, "forward": forward,
            "last_retention": {**last, "at": _when(last.get("at"))} if last else None}


def _when(ts: Any) -> str | None:
    return iso(float(ts)) if isinstance(ts, int | float) else None
