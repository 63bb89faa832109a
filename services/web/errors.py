"""The web program's refusal, free of Flask: the routes turn it into
``{ok: false, error, message, timestamp}`` with its status."""

from __future__ import annotations

from shared.errors import HubError


class LanError(HubError):
    """Raised for a LAN request the hub refuses: 401 (token), 403/409 (the id belongs to another
    device, or the device limit is reached), 404 (unknown probe), 422 (payload), 502 (a probe did
    not answer), 503 (an internal service is not answering; the client should retry)."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
