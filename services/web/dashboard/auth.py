"""The dashboard's keys: the same management key as the API (``MASTER_API_KEY``), entered once on
the login page and remembered in Flask's signed session cookie (HttpOnly, SameSite=Strict), and
a CSRF token in that session that every changing request must carry back (a form field or the
``X-CSRF-Token`` header).

The session never holds the key itself (the cookie is signed, not encrypted): it holds a
fingerprint of it, so changing ``MASTER_API_KEY`` ends every session. The signing secret is
derived from the key for the same reason, and so that a restarted worker keeps its sessions;
without a key there is nothing to log in to and the secret is random.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from flask import Flask, request, session

from shared.web import ApiError


class Keys:
    def __init__(self, management_key: str | None, *, auth_required: bool) -> None:
        self._key = management_key.encode() if management_key else None
        self.auth_required = auth_required
        self._fingerprint = (hmac.new(self._key, b"dashboard-session", hashlib.sha256).hexdigest()
                             if self._key else None)

    @property
    def management_enabled(self) -> bool:
        return self._key is not None

    def configure(self, app: Flask) -> None:
        app.secret_key = (hmac.new(self._key, b"dashboard-cookie", hashlib.sha256).digest()
                          if self._key else secrets.token_bytes(32))
        app.config.update(SESSION_COOKIE_NAME="hub_session", SESSION_COOKIE_HTTPONLY=True,
                          SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_PATH="/")

    def check(self, given: str) -> bool:
        return self._key is not None and hmac.compare_digest(given.encode(), self._key)

    def logged_in(self) -> bool:
        fp = session.get("mgmt")
        return bool(self._fingerprint and isinstance(fp, str)
                    and hmac.compare_digest(fp, self._fingerprint))

    def log_in(self) -> None:
        session["mgmt"] = self._fingerprint
        session["csrf"] = secrets.token_urlsafe(32)  # a new token with the new privilege

    def log_out(self) -> None:
        session.pop("mgmt", None)

    @staticmethod
    def csrf_token() -> str:
        token = session.get("csrf")
        if not isinstance(token, str):
            token = session["csrf"] = secrets.token_urlsafe(32)
        return token

    @staticmethod
    def check_csrf() -> None:
        """``ApiError(403)`` unless the request carries this session's CSRF token."""
        given = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token") or ""
        token = session.get("csrf")
        if not isinstance(token, str) or not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(403, "csrf", "the form is stale or foreign: reload the page and retry")

    def require_management(self) -> None:
        """For every change: CSRF first, then the management key in the session."""
        self.check_csrf()
        if not self.management_enabled:
            raise ApiError(503, "management_disabled",
                           "management is disabled: MASTER_API_KEY is not set on this hub")
        if not self.logged_in():
            raise ApiError(401, "key_required",
                           "changes need the management key: enter it on the login page")
