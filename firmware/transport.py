"""How the master control client reaches a master. ``HttpTransport`` speaks the
``/api/sensor-master/...`` routes; ``MqttTransport`` (umqtt, when the config names a broker)
speaks ``B/sensors/{s}/...``. Both offer the same calls, so one state machine drives either.

Errors: ``Unreachable`` when the master did not answer usefully (network, 5xx, garbage; counts
toward fail-over), ``Refused`` for a 4xx (the master answered: the request was wrong).

Credentials over HTTP: ``register`` sends the hub token the probe was provisioned with
(``X-Token``); a hub that locks its LAN port answers with a sensor token of the probe's own
(``token``, ``token_expires_in``), which every later call to that master sends as
``Authorization: Bearer``. Tokens are kept per master (fail-over registers with the next one
first) and in RAM only: a rebooted probe registers again and gets a new one. Half-way through
its life the token is refreshed (``token/refresh``); a 401 makes the client register again."""

import json

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
        self.hub_token = ""  # set by the client from the probe's provisioning
        self.tokens: dict[str, Any] = {}  # API base -> [sensor token, refresh at (ticks ms)]

    def _auth(self, master: "dict[str, Any]") -> "dict[str, Any]":
        held = self.tokens.get(api_base(master["api_endpoint"]))
        return {"Authorization": "Bearer " + held[0]} if held else {}

    def _keep_token(self, master: "dict[str, Any]", answer: "dict[str, Any]") -> None:
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            return  # a hub that issues none (an older one, or the internal routes)
        life = answer.get("token_expires_in")
        life_ms = int(life * 1000) if isinstance(life, (int, float)) and life > 0 else 3600000
        due = self.hal.ticks_add(self.hal.ticks_ms(), life_ms // 2)
        self.tokens[api_base(master["api_endpoint"])] = [token, due]

    def refresh_due(self, master: "dict[str, Any]") -> bool:
        held = self.tokens.get(api_base(master["api_endpoint"]))
        if not held:
            return False
        return bool(self.hal.ticks_diff(self.hal.ticks_ms(), held[1]) >= 0)

    def refresh(self, master: "dict[str, Any]") -> None:
        """A new sensor token for the one held (which stays good for a while at the hub)."""
        url = api_base(master["api_endpoint"]) + "/token/refresh"
        self._keep_token(master, self._call("POST", url, {}, self._auth(master))[1])

    def forget_token(self, master: "dict[str, Any]") -> None:
        self.tokens.pop(api_base(master["api_endpoint"]), None)

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
        headers = {"X-Token": self.hub_token} if self.hub_token else None
        answer = dict(self._call("POST", api_base(master["api_endpoint"]) + "/register", body,
                                 headers)[1])
        self._keep_token(master, answer)
        return answer

    def config(self, master: "dict[str, Any]", sensor_id: str,
               etag: str | None) -> "dict[str, Any] | None":
        """The config document, or ``None`` when the master says it is unchanged (304)."""
        headers = self._auth(master)
        if etag:
            headers["If-None-Match"] = '"%s"' % etag
        url = api_base(master["api_endpoint"]) + "/config/" + sensor_id
        status, doc = self._call("GET", url, None, headers)
        return None if status == 304 else dict(doc)

    def heartbeat(self, master: "dict[str, Any]", body: "dict[str, Any]") -> "dict[str, Any]":
        return dict(self._call("POST", api_base(master["api_endpoint"]) + "/heartbeat", body,
                               self._auth(master))[1])

    def ack(self, master: "dict[str, Any]", command_id: str, body: "dict[str, Any]") -> None:
        url = api_base(master["api_endpoint"]) + "/commands/" + command_id + "/ack"
        self._call("POST", url, body, self._auth(master))

    def data(self, master: "dict[str, Any]", body: "dict[str, Any]",
             url: str | None = None) -> "dict[str, Any]":
        return dict(self._call("POST", url or api_base(master["api_endpoint"]) + "/data", body,
                               self._auth(master))[1])

    def incoming(self) -> "list[Any]":
        """Commands that arrived on their own (MQTT); HTTP has them on the answers instead."""
        return []


class MqttTransport:
    """Master control over ``{base}/sensors/{id}/...`` on the broker the config names.

    The answers that HTTP gives in the response arrive here as messages: the retained
    ``config`` and the ``commands``. ``register`` and ``heartbeat`` publish and then read what
    the broker has for a moment, and answer with the config hash and the commands seen, so the
    state machine behind it is the same one."""

    kind = "mqtt"

    def __init__(self, hal: Hal, sensor_id: str, *, host: str, port: int, base: str,
                 settle_ms: int = 300) -> None:
        from .mqtt import MqttClient  # only probes whose config names a broker load it
        self.hal = hal
        self.sensor_id = sensor_id
        self.host = host
        self.port = port
        self.base = base.rstrip("/") + "/sensors/" + sensor_id
        self.settle_ms = settle_ms
        self.client = MqttClient(hal, "probe-%s-%s" % (sensor_id, hal.random_hex(4)), host, port)
        self.client.callback = self._message
        self.doc: dict[str, Any] | None = None
        self.queue: list[Any] = []

    def refresh_due(self, master: "dict[str, Any]") -> bool:
        return False  # the broker's own credentials, not sensor tokens (see the hub's README)

    def forget_token(self, master: "dict[str, Any]") -> None:
        pass

    def same_broker(self, host: str, port: int, base: str) -> bool:
        return (self.host, self.port, self.base) == (
            host, port, base.rstrip("/") + "/sensors/" + self.sensor_id)

    def _message(self, topic: str, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
        except ValueError:
            return  # not ours to fix; the hub logs what it sent
        if not isinstance(doc, dict):
            return
        if topic == self.base + "/config":
            self.doc = doc
        elif topic == self.base + "/commands" and len(self.queue) < 20:
            self.queue.append(doc)

    def _ensure(self) -> None:
        if self.client.connected():
            return
        try:
            self.client.connect()
            self.client.subscribe(self.base + "/config", 1)
            self.client.subscribe(self.base + "/commands", 1)
        except OSError as exc:
            self.client.close()
            raise Unreachable("mqtt %s:%d: %s" % (self.host, self.port, exc)) from exc

    def _publish(self, leaf: str, body: "dict[str, Any]") -> None:
        self._ensure()
        try:
            self.client.publish(self.base + "/" + leaf, json.dumps(body).encode(), qos=1)
        except OSError as exc:
            self.client.close()
            raise Unreachable("mqtt publish %s: %s" % (leaf, exc)) from exc

    def _settle(self) -> None:
        """Read what the broker has for us for up to ``settle_ms``."""
        start = self.hal.ticks_ms()
        try:
            while self.hal.ticks_diff(self.hal.ticks_ms(), start) < self.settle_ms:
                self.client.check_msg(50)
        except OSError as exc:
            self.client.close()
            raise Unreachable("mqtt: %s" % exc) from exc

    def _answer(self) -> "dict[str, Any]":
        doc = self.doc or {}
        out, self.queue = self.queue, []
        return {"config_hash": doc.get("config_hash"), "masters": doc.get("masters"),
                "check_in_interval": doc.get("check_in_interval"), "commands": out}

    def register(self, master: "dict[str, Any]", body: "dict[str, Any]") -> "dict[str, Any]":
        self._publish("register", body)
        self._settle()
        return self._answer()

    def heartbeat(self, master: "dict[str, Any]", body: "dict[str, Any]") -> "dict[str, Any]":
        self._publish("heartbeat", body)
        self._settle()
        return self._answer()

    def config(self, master: "dict[str, Any]", sensor_id: str,
               etag: str | None) -> "dict[str, Any] | None":
        self._ensure()
        if self.doc is None:
            self._settle()
        if self.doc is None:
            raise Unreachable("no retained config on %s/config yet" % self.base)
        return None if self.doc.get("config_hash") == etag else self.doc

    def ack(self, master: "dict[str, Any]", command_id: str, body: "dict[str, Any]") -> None:
        self._publish("commands/ack", body)

    def data(self, master: "dict[str, Any]", body: "dict[str, Any]",
             url: str | None = None) -> "dict[str, Any]":
        self._publish("data", body)
        return {"status": "sent"}

    def incoming(self) -> "list[Any]":
        if not self.client.connected():
            return []
        try:
            self.client.check_msg(0)
        except OSError:
            self.client.close()
        out, self.queue = self.queue, []
        return out

    def close(self) -> None:
        self.client.disconnect()
