"""The REST client the processes use to talk to each other on 127.0.0.1.

One keep-alive ``http.client`` connection per thread (a connection is not thread-safe): on this
machine a call costs about half the client CPU of ``requests``, whose layers (sessions, adapters,
urllib3 pools, cookie and proxy handling) buy nothing on a loopback hop. ``requests`` stays where
its features matter: polling HTTP sensors on the LAN.

JSON goes through orjson (a ``bytes`` body is sent as it is: JSON someone already encoded), and
every failure becomes a ``ServiceError`` with the service's name and URL.
"""

from __future__ import annotations

import http.client
import socket
import threading
from typing import Any
from urllib.parse import urlencode, urlsplit

from shared.errors import ServiceError
from shared.internal import HEADER
from shared.jsonutil import JSONDecodeError, dumps, loads

_JSON = {"Content-Type": "application/json", "Accept": "application/json"}
# What a keep-alive connection that the server closed while it sat idle looks like when it is
# used again (gunicorn drops idle ones after its keepalive): the request never reached the
# server, so sending it once more on a new connection is safe.
_DROPPED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
            ConnectionAbortedError)


class RestClient:
    def __init__(self, base_url: str, *, name: str, timeout: float = 5.0,
                 secret: str | None = None) -> None:
        """``secret``: the instance's internal secret (``Settings.internal_secret``), sent with
        every request; the internal services answer nothing without it."""
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.timeout = timeout
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{name}: {base_url!r} is not an http:// URL")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path
        self._headers = {**_JSON, HEADER: secret} if secret else _JSON
        self._local = threading.local()

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection and whether it was used before (may have been dropped)."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None:
            conn.sock.settimeout(timeout)
            return conn, True
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=timeout)
        conn.connect()
        # Small requests and answers: without this, Nagle and delayed ACKs can add 40 ms.
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._local.conn = conn
        return conn, False

    def close(self) -> None:
        """Close this thread's connection (the next call opens a new one)."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def get(self, path: str, *, params: dict[str, Any] | None = None,
            timeout: float | None = None) -> Any:
        return self.request("GET", path, params=params, timeout=timeout)

    def post(self, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        return self.request("POST", path, body=body, timeout=timeout)

    def get_bytes(self, path: str, *, params: dict[str, Any] | None = None,
                  timeout: float | None = None) -> bytes:
        """The answer's body undecoded, for a caller that validates JSON into a model in one
        pass (``Model.model_validate_json``: a quarter cheaper than decoding, then validating,
        a page of changes). Error answers raise ``ServiceError`` as ``request`` does."""
        return self._call("GET", path, None, params, timeout)[1]

    def request(self, method: str, path: str, *, body: Any = None,
                params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """The decoded JSON answer; ``ServiceError`` when there is none or it is an error."""
        status, content = self._call(method, path, body, params, timeout)
        return self._decode(status, content, path)

    def _decode(self, status: int, content: bytes, path: str) -> Any:
        try:
            return loads(content) if content else None
        except JSONDecodeError as exc:
            raise ServiceError(
                f"{self.name} at {self.base_url}{path} answered {status} with a body that is "
                f"not JSON", status=status,
            ) from exc

    def _call(self, method: str, path: str, body: Any, params: dict[str, Any] | None,
              timeout: float | None) -> tuple[int, bytes]:
        """``(status, body)`` of a successful answer; ``ServiceError`` for an error answer."""
        target = f"{self._prefix}{path}"
        if params:
            query = urlencode({k: v for k, v in params.items() if v is not None})
            if query:
                target = f"{target}?{query}"
        url = f"{self.base_url}{path}"
        limit = self.timeout if timeout is None else timeout
        payload = body if isinstance(body, bytes) or body is None else dumps(body)
        status, reason, content = self._exchange(method, target, payload, limit, url)
        if status >= 400:
            data = self._decode(status, content, path)
            message = data.get("message") if isinstance(data, dict) else None
            raise ServiceError(
                f"{self.name} {method} {path} failed with {status}: {message or reason}",
                status=status, body=data,
            )
        return status, content

    def _exchange(self, method: str, target: str, payload: bytes | None, limit: float,
                  url: str) -> tuple[int, str, bytes]:
        for attempt in (1, 2):
            reused = False
            try:
                conn, reused = self._connection(limit)
                conn.request(method, target, body=payload, headers=self._headers)
                resp = conn.getresponse()
                content = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, resp.reason, content
            except TimeoutError as exc:
                self.close()  # a late answer must not be read as the next call's
                raise ServiceError(
                    f"{self.name} at {url} did not answer within {limit:g} s") from exc
            except _DROPPED as exc:
                self.close()
                if reused and attempt == 1:
                    continue
                raise ServiceError(f"{self.name} at {url} is unreachable: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise ServiceError(f"{self.name} at {url} is unreachable: {exc}") from exc
        raise AssertionError("unreachable")  # the loop returns or raises
