"""What the web program asks the internal services over 127.0.0.1: the aggregator owns the device
registry, the HTTP poller owns the probe directory and provisioning. A refusal of theirs (4xx)
reaches the LAN client with its own status and message; their absence becomes a 503 that says
to retry, with the details (internal URLs) only in the log."""

from __future__ import annotations

import logging
from typing import Any

from shared.errors import ServiceError
from shared.models import RegisterDevice
from shared.rest import RestClient

from .errors import LanError

log = logging.getLogger(__name__)


class Upstream:
    def __init__(self, *, aggregator: RestClient, poller: RestClient) -> None:
        self.aggregator = aggregator
        self.poller = poller

    def _call(self, client: RestClient, method: str, path: str, *, body: Any = None,
              params: dict[str, Any] | None = None, missing_ok: bool = False) -> Any:
        try:
            return client.request(method, path, body=body, params=params)
        except ServiceError as exc:
            if missing_ok and exc.status == 404:
                return None
            if 400 <= exc.status < 500 and isinstance(exc.body, dict):
                raise LanError(exc.status, str(exc.body.get("error") or "refused"),
                               str(exc.body.get("message") or exc)) from exc
            log.warning("LAN request not served: %s", exc)
            raise LanError(503, "not_ready", f"the hub's {client.name} is not answering right "
                           "now; send the request again") from exc

    def store_problems(self) -> list[str]:
        """Why the aggregator's history or durable change log cannot store, if they cannot
        (the aggregator not answering is one too)."""
        try:
            body = self.aggregator.get("/health", timeout=3.0)
        except ServiceError as exc:
            return [f"state-aggregator: {exc}"]
        reasons: list[str] = []
        for store in ("history", "outbox"):
            part = body.get(store) if isinstance(body, dict) else None
            if isinstance(part, dict):
                reasons += [f"{store}: {r}" for r in part.get("reasons", [])]
        return reasons

    # --- the aggregator's registry ------------------------------------------------------------
    def register(self, request: RegisterDevice) -> bool:
        """Register a probe; ``True`` when it is new. The aggregator refuses (409) an id that
        belongs to a device that is not a probe, and any new device past ``MAX_DEVICES``."""
        answer = self._call(self.aggregator, "POST", "/devices/register",
                            body=request.model_dump())
        return bool(answer.get("added")) if isinstance(answer, dict) else False

    def probe_devices(self) -> list[dict[str, Any]]:
        answer = self._call(self.aggregator, "GET", "/devices")
        return [d for d in answer.get("devices", []) if d.get("source") == "probe"]

    def remove(self, device_id: str) -> Any:
        return self._call(self.aggregator, "DELETE", f"/devices/{device_id}")

    # --- the poller's probe directory ---------------------------------------------------------
    def probe(self, probe_id: str) -> dict[str, Any] | None:
        answer = self._call(self.poller, "GET", f"/probes/{probe_id}", missing_ok=True)
        return answer.get("probe") if isinstance(answer, dict) else None

    def probe_at(self, ip: str) -> str | None:
        """The id of the known probe at ``ip``, if any."""
        answer = self._call(self.poller, "GET", "/probes", params={"ip": ip})
        found = answer.get("probes", []) if isinstance(answer, dict) else []
        return str(found[0]["id"]) if found else None

    def probes(self) -> list[dict[str, Any]]:
        answer = self._call(self.poller, "GET", "/probes")
        return list(answer.get("probes", [])) if isinstance(answer, dict) else []

    def provision(self, probe_id: str) -> dict[str, Any]:
        answer = self._call(self.poller, "POST", f"/probes/{probe_id}/provision")
        return dict(answer) if isinstance(answer, dict) else {}
