"""``python -m shared.healthcheck``: exit 0 only when every program of ``shared.processes`` is
RUNNING under supervisord and the MQTT bridge is connected to the broker (the container's
HEALTHCHECK)."""

from __future__ import annotations

import os
import sys
import time
import xmlrpc.client
from pathlib import Path

from supervisor.xmlrpc import SupervisorTransport

from shared.jsonutil import JSONDecodeError, loads
from shared.processes import MQTT_BRIDGE, PROCESS_NAMES

STALE_AFTER_S = 30.0


def problems(run_dir: Path) -> list[str]:
    found: list[str] = []
    transport = SupervisorTransport(None, None, f"unix://{run_dir / 'supervisor.sock'}")
    proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    try:
        infos = proxy.supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error) as exc:
        return [f"supervisord is not answering on {run_dir / 'supervisor.sock'}: {exc}"]
    states: dict[str, str] = {str(i["name"]): str(i["statename"]) for i in infos}  # type: ignore[index,union-attr,call-overload]
    found += [f"{name} is {states.get(name, 'missing')}" for name in PROCESS_NAMES
              if states.get(name) != "RUNNING"]
    status_file = run_dir / f"{MQTT_BRIDGE.name}.json"
    try:
        status = loads(status_file.read_bytes())
    except (OSError, JSONDecodeError) as exc:
        return [*found, f"no bridge status in {status_file}: {exc}"]
    if not status.get("connected"):
        why = f": {status['error']}" if status.get("error") else ""
        found.append(f"{MQTT_BRIDGE.name} is not connected to the broker{why}")
    if time.time() - float(status.get("updated", 0)) > STALE_AFTER_S:
        found.append(f"{MQTT_BRIDGE.name} status is older than {STALE_AFTER_S:.0f} s (bridge stuck?)")
    return found


def main() -> int:
    run_dir = Path(os.environ.get("HUB_RUN_DIR", "/tmp/sensor-hub"))  # noqa: S108
    found = problems(run_dir)
    if found:
        print("unhealthy: " + "; ".join(found))
        return 1
    print(f"healthy: {len(PROCESS_NAMES)} programs RUNNING, bridge connected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
