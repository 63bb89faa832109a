"""The lock on the internal REST: a per-instance secret that only the hub's own processes can read.

The three internal services (state-aggregator, serial-handler, http-poller) listen on 127.0.0.1,
where every local user and every container sharing the network namespace could call them. Each
answers only requests that carry the instance's secret in ``X-Hub-Secret``; anything else gets
401 (missing) or 403 (wrong), on every path, known or not, so the answer reveals no route. The
secret lives in ``{HUB_RUN_DIR}/internal.secret`` (mode 0600, in a run directory of mode 0700):
the processes of the instance's user read it, another user cannot. ``shared.rest.RestClient``
sends it; ``python -m shared.internal request`` (``./hub curl``) lets a person inspect a service.

Why not unix sockets (the other way the issue allowed): ``bench/internal_transport.py`` measured
both, and a unix socket saves little per round trip while every client of the REST (the benchmark
harness's counting TCP relay, the tests, the fuzzing, people with curl) would need a unix-socket
HTTP client; the secret changes one header (the measured figures are in bench/README.md).

``./hub run`` and the container's entrypoint make a new secret at every start (``new``); a
process that finds none (a test's supervisord) makes it, once, atomically (``load_secret``).
"""

from __future__ import annotations

import argparse
import hmac
import http.client
import os
import secrets
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import ConfigError

if TYPE_CHECKING:  # Flask only where an app is protected: the bridge imports this module too
    from flask import Flask, Response

HEADER = "X-Hub-Secret"
SECRET_FILE = "internal.secret"  # noqa: S105  (the file's name, not a secret)


def secret_path(run_dir: Path) -> Path:
    return run_dir / SECRET_FILE


def _write_private(path: Path, text: str) -> Path:
    """A new file of mode 0600 beside ``path`` holding ``text`` (not yet at ``path``)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return tmp


def _private_dir(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o700)


def new_secret(run_dir: Path) -> str:
    """Replace the instance's secret with a new one (at start, before any process runs)."""
    _private_dir(run_dir)
    secret = secrets.token_urlsafe(32)
    _write_private(secret_path(run_dir), secret).replace(secret_path(run_dir))
    return secret


def _stat_or_make(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        _private_dir(path.parent)
        tmp = _write_private(path, secrets.token_urlsafe(32))
        try:
            os.link(tmp, path)  # fails when another process made it first: theirs counts
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return path.stat()


def load_secret(run_dir: Path) -> str:
    """The instance's secret, made now when there is none (the first process of an instance
    started without ``new`` wins; the others read its secret). ``ConfigError`` when the file
    is readable by others or is not this user's: it would not lock anything."""
    path = secret_path(run_dir)
    try:
        st = _stat_or_make(path)
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"HUB_RUN_DIR: cannot keep the internal secret in {run_dir}: "
                          f"{exc}") from exc
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} must be this user's and of mode 0600 "
                          f"(it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); "
                          "remove it and restart the instance")
    if not secret:
        raise ConfigError(f"{path} is empty; remove it and restart the instance")
    return secret


def protect(app: Flask, secret: str) -> None:
    """Answer only requests that carry ``secret`` in ``HEADER``, on every path."""
    from flask import request

    expected = secret.encode()

    @app.before_request
    def _check_secret() -> Response | None:
        given = request.headers.get(HEADER)
        if given is None:
            return _refused(401, "unauthorized", f"an internal service of the hub: {HEADER} "
                            "is required (./hub curl makes such requests)")
        if not hmac.compare_digest(given.encode(), expected):
            return _refused(403, "forbidden", f"{HEADER} is not this instance's")
        return None


def _refused(status: int, error: str, message: str) -> Response:
    from shared.web import error_response

    return error_response(status, error, message)


# --- the command line: a new secret at start, and a person's look at a service -----------------

SERVICES = {"aggregator": "state_aggregator", "state-aggregator": "state_aggregator",
            "serial": "serial_handler", "serial-handler": "serial_handler",
            "poller": "http_poller", "http-poller": "http_poller"}


def _request(service: str, path: str, method: str, data: str | None) -> int:
    from urllib.parse import urlsplit

    from shared.settings import load_settings

    settings = load_settings()
    url = urlsplit(getattr(settings, SERVICES[service]))
    secret = load_secret(settings.hub_run_dir)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=30)
    headers = {HEADER: secret, "Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, f"{url.path}{path}", body=data, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        print(f"{service} at {url.geturl()} is unreachable: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(body + (b"" if body.endswith(b"\n") else b"\n"))
    if resp.status >= 400:
        print(f"{service}: {resp.status} {resp.reason}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.internal", description=(
        "The internal REST's secret (in HUB_RUN_DIR) and requests to the internal services."))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("new", help="make a new secret in HUB_RUN_DIR (at an instance's start)")
    req = sub.add_parser("request", help="one request to an internal service; prints its answer")
    req.add_argument("service", choices=sorted(SERVICES))
    req.add_argument("path", help="e.g. /devices")
    req.add_argument("-X", "--method", default=None, help="GET, or POST with --data")
    req.add_argument("-d", "--data", default=None, help="a JSON body")
    args = parser.parse_args(argv)
    try:
        if args.command == "new":
            from shared.settings import load_settings

            new_secret(load_settings().hub_run_dir)
            return 0
        if not args.path.startswith("/"):
            parser.error(f"the path must start with /, not {args.path!r}")
        method = args.method or ("POST" if args.data is not None else "GET")
        return _request(args.service, args.path, method.upper(), args.data)
    except (ConfigError, OSError) as exc:
        print(f"shared.internal: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
