"""Master control's errors: each carries the HTTP status, a short code and a message that says
what to do; the routes turn them into ``{error, message}`` answers, the bridge into MQTT error
answers."""

from __future__ import annotations

from shared.errors import HubError


class MasterError(HubError):
    """Raised by the master control service when a request cannot be served as asked."""

    status = 400

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


class NotFound(MasterError):
    """Raised for an unknown sensor, template, master, group, command or config version."""

    status = 404


class Conflict(MasterError):
    """Raised when the request clashes with what is stored (a duplicate name, an ack of a
    command that is already final)."""

    status = 409


class Invalid(MasterError):
    """Raised when a body is well-formed but its content cannot be accepted; names the field."""

    status = 422


class QueueFull(MasterError):
    """Raised when a sensor already has the maximum of undelivered commands."""

    status = 429


def unknown_sensor(sensor_id: str) -> NotFound:
    return NotFound("unknown_sensor",
                    f"sensor {sensor_id!r} is not registered: register first "
                    "(POST /api/sensor-master/register or MQTT sensors/{sensor_id}/register)")
