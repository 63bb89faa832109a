"""The hub token: what probes (and other LAN clients that push readings) must send to the ``web``
program, and what the http-poller hands to probes when it provisions them.

``SERVER_TOKEN`` when set; otherwise the hub makes one at its first start and keeps it in
``{DATA_DIR}/server_token`` (mode 0600), so the LAN port is never open by default and the token
survives restarts. The web program and the poller both ask for it as they start, possibly at
the same moment: the file is written beside and then hard-linked into place, which either
succeeds (this process made the token, and logs it, once) or finds the other's file, so both end
up with the same token.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path

from shared.errors import ConfigError
from shared.settings import Settings

log = logging.getLogger(__name__)

TOKEN_FILE = "server_token"  # noqa: S105 (a file name)
TOKEN_BYTES = 32  # 256 bits, URL-safe base64: 43 characters


def token_path(settings: Settings) -> Path:
    return settings.data_dir / TOKEN_FILE


def hub_token(settings: Settings) -> str:
    """``SERVER_TOKEN``, else the stored one, else a new one stored now (``ConfigError`` when
    ``DATA_DIR`` cannot hold it: the LAN port is not opened without a token)."""
    if settings.server_token is not None:
        return settings.server_token.get_secret_value()
    path = token_path(settings)
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        created = _create(path, token)
    except OSError as exc:
        raise ConfigError(f"SERVER_TOKEN is not set and {path} cannot be written to keep a "
                          f"generated one: {exc}") from exc
    if not created:
        return _read(path)
    log.warning("SERVER_TOKEN was not set: generated the hub token %s and stored it in %s "
                "(mode 0600). Probes get it when provisioned; other LAN clients send it as "
                "X-Token. This is the only time it is logged.", token, path)
    return token


def _read(path: Path) -> str:
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ConfigError(f"{path} is empty: remove it (a new token is generated) or set "
                          "SERVER_TOKEN")
    return token


def _create(path: Path, token: str) -> bool:
    """Write ``token`` to ``path`` unless it exists; ``False`` when another process was first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails when the file exists: never overwrites
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
