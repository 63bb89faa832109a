"""How the master control client reaches a master. ``HttpTransport`` speaks the
``/api/sensor-master/...`` routes; ``MqttTransport`` (umqtt, when the config names a broker)
speaks ``B/sensors/{s}/...``. Both offer the same calls, so one state machine drives either.

Errors: ``Unreachable`` when the master did not answer usefully (network, 5xx, garbage; counts
toward fail-over), ``Refused`` for a 4xx (the master answered: the request was wrong)."""

from .hal import Hal
from .web import HttpError, request

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

API = "/api/sensor-master"


class Unreachable(Exception):
    """The master did not answer (or not usefully)."""


class Refused(Exception):
    """The master answered 4xx: ``status`` and its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__("HTTP %d: %s" % (status, message))
        self.status = status


def api_base(endpoint: str) -> str:
    """A master's ``api_endpoint`` is its external URL (``http://hub:8088``), under which the API
    is ``/api/sensor-master``; an endpoint that carries a path is taken as the API base itself."""
    endpoint = endpoint.rstrip("/")
    rest = endpoint[7:] if endpoint.startswith("http://") else endpoint
    return endpoint if "/" in rest else endpoint + API


class HttpTransport:
    kind = "http"

    def __init__(self, hal: Hal, *, timeout_s: float = 3.0) -> None:
        self.hal = hal
        self.timeout_s = timeout_s

    def _call(self, method: str, url: str, body: "Any" = None,
              headers: "dict[str, Any] | None" = None) -> "tuple[int, Any]":
        self.hal.collect()
        try:
            resp = request(self.hal, method, url, body, headers, timeout_s=self.timeout_s,
                           max_body=8192)
        except (OSError, HttpError, ValueError) as exc:
            raise Unreachable("%s: %s" % (url, exc)) from exc
        if resp.status == 304:
            return 304, None
        if resp.status >= 500:
            raise Unreachable("%s: HTTP %d" % (url, resp.status))
        try:
            doc = resp.json()
        except HttpError:
            raise Unreachable("%s answered something that is not JSON" % url) from None
        if resp.status >= 400:
            message = doc.get("message") if isinstance(doc, dict) else None
            raise Refused(resp.status, str(message or doc)[:160])
        if not isinstance(doc, dict):
            raise Unreachable("%s answered JSON that is not an object" % url)
        return resp.status, doc

    def register(self, master: "dict[str, Any]", body: "dict[str, Any]") -> "dict[str, Any]":
        return dict(self._call("POST", api_base(master["api_endpoint"]) + "/register", body)[1])

    def config(self, master: "dict[str, Any]", sensor_id: str,
               etag: str | None) -> "dict[str, Any] | None":
        """The config document, or ``None`` when the master says it is unchanged (304)."""
        headers = {"If-None-Match": '"%s"' % etag} if etag else None
        url = api_base(master["api_endpoint"]) + "/config/" + sensor_id
        status, doc = self._call("GET", url, None, headers)
        return None if status == 304 else dict(doc)

    def heartbeat(self, master: "dict[str, Any]", body: "dict[str, Any]") -> "dict[str, Any]":
        return dict(self._call("POST", api_base(master["api_endpoint"]) + "/heartbeat", body)[1])

    def ack(self, master: "dict[str, Any]", command_id: str, body: "dict[str, Any]") -> None:
        url = api_base(master["api_endpoint"]) + "/commands/" + command_id + "/ack"
        self._call("POST", url, body)

    def data(self, master: "dict[str, Any]", body: "dict[str, Any]",
             url: str | None = None) -> "dict[str, Any]":
        return dict(self._call("POST", url or api_base(master["api_endpoint"]) + "/data", body)[1])

    def incoming(self) -> "list[Any]":
        """Commands that arrived on their own (MQTT); HTTP has them on the answers instead."""
        return []
