"""The project's own exception hierarchy. Library exceptions are translated into these at the
boundary where they occur (``raise ServiceError(...) from exc``)."""

from __future__ import annotations


class HubError(Exception):
    """Base class of every error sensor-hub raises on purpose."""


class ConfigError(HubError):
    """Raised at start-up when settings or the instance file are invalid; the message names the
    file, the field and the problem, and the process exits."""


class TopicError(HubError, ValueError):
    """Raised when a topic or an id does not follow the contract (bad id, wildcard in a publish
    topic, a topic outside the instance's base)."""


class ServiceError(HubError):
    """Raised by the REST client when another process cannot be reached, times out, or answers
    with an error. ``status`` is the HTTP status (0 when there was no answer)."""

    def __init__(self, message: str, *, status: int = 0, body: object = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class ReadError(HubError):
    """Raised by a handler when a sensor read fails. ``code`` is the contract's ``error_code``
    (READ_TIMEOUT, PORT_UNAVAILABLE, BAD_RESPONSE, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UnknownDevice(HubError, LookupError):
    """Raised when a request names a device the registry does not hold."""

    def __init__(self, device_id: str) -> None:
        super().__init__(f"unknown device {device_id!r}")
        self.device_id = device_id
