"""Whether a service can listen on its address, checked before gunicorn starts, and who holds the
address when it cannot.

gunicorn alone retries a taken address five times a second apart and then exits 1: by then
supervisord counts the program as started, so it restarts it every few seconds for ever, and
the log says only "Connection in use". A port another program holds does not heal by retrying
(supervisord.conf): the service stops at start instead (exit 2, FATAL at once), with one line
that names the address, the setting that chose it and, where this user may see it, the process
that holds it and whether it listens there or merely uses it as the local end of a connection.

The check waits a little first: a service restarted after a ``kill -9`` may find its old worker
still dying (``shared.serve.die_with_parent``) with the socket in its hands.
"""

from __future__ import annotations

import errno
import logging
import socket
import time

import psutil

log = logging.getLogger(__name__)

FREE_WAIT_S = 3.0  # how long a taken address is watched before the service gives up


def split_bind(bind: str) -> tuple[str, int]:
    """``("127.0.0.1", 5001)`` from gunicorn's ``127.0.0.1:5001`` (``[::1]:5001`` too)."""
    host, _, port = bind.rpartition(":")
    return host.strip("[]"), int(port)


def can_bind(host: str, port: int) -> bool:
    """Whether a listening socket could take ``host:port`` now, with gunicorn's own options
    (``SO_REUSEADDR``: connections of a previous run in TIME_WAIT do not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def holder(host: str, port: int) -> str:
    """Who holds ``host:port``, as far as this user may see: ``pid 123 (gunicorn: web),
    listening``, ``pid 45 (python), the local end of a connection to 127.0.0.1:1883``, or why it
    is not known."""
    try:
        found = [c for c in psutil.net_connections(kind="tcp")
                 if c.laddr and c.laddr.port == port
                 and c.laddr.ip in (host, "0.0.0.0", "::", "::ffff:" + host)]
    except (psutil.Error, OSError) as exc:
        return f"unknown ({exc})"
    if not found:
        return "unknown (a socket of another user, or already gone)"
    # A listener first: it is the one a service would clash with on purpose.
    found.sort(key=lambda c: c.status != psutil.CONN_LISTEN)
    conn = found[0]
    who = "a process of another user"
    if conn.pid is not None:
        try:
            proc = psutil.Process(conn.pid)
            command = " ".join(" ".join(proc.cmdline()).split())[:120] or proc.name()
            who = f"pid {conn.pid} ({command})"
        except psutil.Error:
            who = f"pid {conn.pid}"
    if conn.status == psutil.CONN_LISTEN:
        return f"{who}, listening there"
    remote = f" to {conn.raddr.ip}:{conn.raddr.port}" if conn.raddr else ""
    held = f"{who}, as the local end of a connection{remote} ({conn.status})"
    low, high = ephemeral_range()
    if low <= port <= high:
        held += (f"; {port} is in this host's ephemeral range ({low}-{high}), which the kernel "
                 "gives to outgoing connections: choose a port outside it")
    return held


def ephemeral_range() -> tuple[int, int]:
    """The local ports the kernel hands to outgoing connections (Linux's default if unknown)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(n) for n in f.read().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def ensure_free(bind: str, setting: str, *, wait_s: float = FREE_WAIT_S) -> bool:
    """Whether ``bind`` can be listened on, waiting up to ``wait_s`` for it to come free; when it
    does not, log once who holds it and which setting chose it."""
    host, port = split_bind(bind)
    deadline = time.monotonic() + wait_s
    while not can_bind(host, port):
        if time.monotonic() >= deadline:
            log.error("cannot listen on %s:%d (%s): the address is in use by %s; stop that "
                      "program or set %s to a free port", host, port, setting,
                      holder(host, port), setting)
            return False
        time.sleep(0.1)
    return True
