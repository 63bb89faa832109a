"""Who may do what on the LAN port. Three credentials, each compared in constant time:

- the **hub token** (``SERVER_TOKEN``, else the one the hub generated, ``shared.hub_token``): what
  probes and other device-side clients send to push readings and to register with master
  control; ``X-Token``, ``Authorization: Bearer``, and for ``/api/ingest`` also ``?token=`` or a
  JSON ``token`` field (what older probe firmware sends);
- the **management key** (``MASTER_API_KEY``, header ``X-API-Key``): changes to the hub's
  configuration (master control's management routes, removing or provisioning probes), and
  reading what the hub holds; without the setting management answers 503, never open;
- a **sensor token** (issued to a sensor when it registers over the LAN; checked by the
  aggregator, ``services/state_aggregator/master/tokens.py``): that sensor's own check-ins.

401: no credential that this route accepts was sent, or the one sent is not valid; the message
names what the route needs. 403: a valid credential that does not grant this (the hub token on
a management route, a sensor's token for another sensor). Neither says whether a sensor, a
command or another credential exists.
"""

from __future__ import annotations

import hmac

from flask import request

from .errors import LanError

HUB_TOKEN_HOW = "the hub token as the X-Token header (or Authorization: Bearer <token>)"  # noqa: S105
KEY_HOW = "the management key (MASTER_API_KEY) as the X-API-Key header"


def _same(given: str, expected: bytes) -> bool:
    return hmac.compare_digest(given.encode(), expected)


def presented_token() -> str | None:
    """The token in ``Authorization: Bearer`` or ``X-Token`` (the first that is there)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("X-Token") or None


def presented_key() -> str | None:
    return request.headers.get("X-API-Key") or None


class Credentials:
    def __init__(self, *, hub_token: str, management_key: str | None) -> None:
        self._hub = hub_token.encode()
        self._key = management_key.encode() if management_key else None

    def with_management_key(self, key: str | None) -> Credentials:
        return Credentials(hub_token=self._hub.decode(), management_key=key)

    @property
    def management_enabled(self) -> bool:
        return self._key is not None

    def is_hub_token(self, given: str | None) -> bool:
        return bool(given) and _same(given or "", self._hub)

    def is_management_key(self, given: str | None) -> bool:
        return self._key is not None and bool(given) and _same(given or "", self._key)

    def require_hub(self, token: str | None, *, key: str | None = None,
                    management_too: bool = False) -> None:
        """The hub token (or, with ``management_too``, the management key instead)."""
        if management_too and key is not None:
            if self.is_management_key(key):
                return
            raise LanError(401, "unauthorized", "the X-API-Key sent is not valid")
        if token is None:
            alt = f", or {KEY_HOW}" if management_too else ""
            raise LanError(401, "unauthorized", f"this route needs {HUB_TOKEN_HOW}{alt}")
        if not self.is_hub_token(token):
            raise LanError(401, "unauthorized", "the token sent is not valid for this route")

    def require_management(self, key: str | None, token: str | None = None) -> None:
        if self._key is None:
            raise LanError(503, "management_disabled", "management disabled: set "
                           "MASTER_API_KEY on the hub to manage it over the LAN")
        if key is None:
            if token is not None and self.is_hub_token(token):
                raise LanError(403, "forbidden", f"the hub token does not grant management: "
                               f"this route needs {KEY_HOW}")
            raise LanError(401, "unauthorized", f"this route needs {KEY_HOW}")
        if not self.is_management_key(key):
            raise LanError(401, "unauthorized", "the X-API-Key sent is not valid")
