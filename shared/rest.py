"""The REST client the processes use to talk to each other on 127.0.0.1.

Keep-alive sessions (one per thread: ``requests.Session`` is not thread-safe), JSON through
orjson, and every failure translated into ``ServiceError`` with the service's name and URL.
"""

from __future__ import annotations

import threading
from typing import Any

import requests

from shared.errors import ServiceError
from shared.jsonutil import JSONDecodeError, dumps, loads

_JSON = {"Content-Type": "application/json"}


class RestClient:
    def __init__(self, base_url: str, *, name: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.timeout = timeout
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # never route local calls through an HTTP proxy
            self._local.session = session
        return session

    def get(self, path: str, *, params: dict[str, Any] | None = None,
            timeout: float | None = None) -> Any:
        return self.request("GET", path, params=params, timeout=timeout)

    def post(self, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        return self.request("POST", path, body=body, timeout=timeout)

    def request(self, method: str, path: str, *, body: Any = None,
                params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """The decoded JSON answer; ``ServiceError`` when there is none or it is an error."""
        url = f"{self.base_url}{path}"
        limit = self.timeout if timeout is None else timeout
        try:
            resp = self._session().request(
                method, url, params=params, timeout=limit,
                data=None if body is None else dumps(body), headers=_JSON,
            )
        except requests.Timeout as exc:
            raise ServiceError(f"{self.name} at {url} did not answer within {limit:g} s") from exc
        except requests.RequestException as exc:
            raise ServiceError(f"{self.name} at {url} is unreachable: {exc}") from exc
        try:
            data = loads(resp.content) if resp.content else None
        except JSONDecodeError as exc:
            raise ServiceError(
                f"{self.name} at {url} answered {resp.status_code} with a body that is not JSON",
                status=resp.status_code,
            ) from exc
        if resp.status_code >= 400:
            message = data.get("message") if isinstance(data, dict) else None
            raise ServiceError(
                f"{self.name} {method} {path} failed with {resp.status_code}: "
                f"{message or resp.reason}",
                status=resp.status_code, body=data,
            )
        return data
