"""The start-up check of a service's address (shared/portcheck.py) and the tests' own port
picker: a taken address is named with who holds it, an address freed while the check waits is
used, and the ports tests pick lie outside the range the kernel gives outgoing connections."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from shared.portcheck import can_bind, ensure_free, ephemeral_range, holder
from tests.helpers import PORT_LOCKS, free_port


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
        sock.listen()
        yield sock


def test_a_listened_address_is_taken_and_its_holder_named(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert not can_bind("127.0.0.1", port)
    assert holder("127.0.0.1", port).startswith(f"pid {os.getpid()} (")
    assert holder("127.0.0.1", port).endswith("listening there")


def test_the_local_end_of_a_connection_is_named_with_the_ephemeral_range(
        listener: socket.socket) -> None:
    # The CI failure: a service's port, picked free in the ephemeral range, was the local end of
    # an outgoing connection by the time the service bound it.
    with socket.create_connection(listener.getsockname()) as client:
        local = client.getsockname()[1]
        low, high = ephemeral_range()
        assert low <= local <= high
        assert not can_bind("127.0.0.1", local)
        held = holder("127.0.0.1", local)
        assert f"pid {os.getpid()}" in held
        assert f"a connection to 127.0.0.1:{listener.getsockname()[1]}" in held
        assert f"ephemeral range ({low}-{high})" in held


def test_the_check_names_the_setting_once_and_gives_up(listener: socket.socket,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    port = listener.getsockname()[1]
    assert not ensure_free(f"127.0.0.1:{port}", "SERIAL_HANDLER_PORT", wait_s=0.3)
    errors = [r.getMessage() for r in caplog.records if r.name == "shared.portcheck"]
    assert len(errors) == 1
    assert errors[0].startswith(f"cannot listen on 127.0.0.1:{port} (SERIAL_HANDLER_PORT): "
                                f"the address is in use by pid {os.getpid()} (")
    assert errors[0].endswith("set SERIAL_HANDLER_PORT to a free port")


def test_an_address_freed_while_the_check_waits_is_used(caplog: pytest.LogCaptureFixture) -> None:
    # A service restarted after a kill -9 finds its old worker still dying with the socket.
    sock = socket.socket()
    sock.bind(("127.0.0.1", free_port()))
    sock.listen()
    port = sock.getsockname()[1]
    threading.Timer(0.3, sock.close).start()
    assert ensure_free(f"127.0.0.1:{port}", "STATE_AGGREGATOR_PORT", wait_s=30)
    assert not [r for r in caplog.records if r.name == "shared.portcheck"]


def test_test_ports_are_outside_the_ephemeral_range_and_reserved_for_this_run() -> None:
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    assert not [p for p in ports if low <= p <= high]
    # Another test run on this machine cannot have them: their lock files are held.
    probe = ("import fcntl, os, sys\n"
             "fd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "except BlockingIOError:\n    sys.exit(3)\n")
    for port in ports[:3]:
        done = subprocess.run([sys.executable, "-c", probe, str(PORT_LOCKS / f"{port}.lock")],
                              check=False, timeout=30)
        assert done.returncode == 3, port
