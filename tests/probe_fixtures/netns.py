"""Run a test body in a network namespace of its own, so its mDNS traffic is private.

Why: multicast on ``lo`` works (see ``test_probes.py``), but it is shared by every process on
the host, and any sensor-hub running here (the e2e or container tests, ``./hub run``) browses
``_temps-probe._tcp`` on all interfaces too and provisions the test's probe with *its* URL.
A namespace created for the test has its own ``lo`` that nobody else is on.

Namespaces are per thread on Linux: the body runs in a new thread that calls
``unshare(CLONE_NEWNET)``; the threads and sockets it creates (zeroconf, the servers, the
provisioner) stay in that namespace. Python 3.11 has no ``os.unshare``, hence ctypes.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable

CLONE_NEWNET = 0x40000000


def _unshare_net() -> str | None:
    """Move the calling thread into a new network namespace with ``lo`` up; the reason when
    this host does not allow it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        return f"unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())} (needs root)"
    # The child inherits this thread's namespace.
    done = subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        return f"cannot bring lo up in the new namespace: {done.stderr.strip()}"
    return None


def run_in_private_netns(body: Callable[[], None], *, timeout: float = 120.0) -> str | None:
    """Run ``body`` in a fresh network namespace and re-raise what it raised; returns the
    reason instead when namespaces are not available (the caller skips)."""
    outcome: dict[str, BaseException | str | None] = {"error": None, "unavailable": None}

    def runner() -> None:
        try:
            reason = _unshare_net()
        except OSError as exc:
            reason = f"cannot create a network namespace: {exc}"
        if reason is not None:
            outcome["unavailable"] = reason
            return
        try:
            body()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=runner, name="netns-test", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"the namespaced test body did not finish within {timeout:g} s")
    error = outcome["error"]
    if isinstance(error, BaseException):
        raise error
    unavailable = outcome["unavailable"]
    return unavailable if isinstance(unavailable, str) else None
