"""The gunicorn worker of the LAN port: gthread, except that a request reaches a thread only once
it has fully arrived.

gunicorn's gthread worker keeps idle connections in its poller, but as soon as a client has sent
one byte it hands the connection to a thread, which then blocks reading the rest with no time
limit: a few clients that send half a request and stop (slowloris) hold every thread, and the
LAN API stops answering. Here the worker's main loop reads each request itself, without blocking,
until the head and a body of announced length (``Content-Length``, up to ``MAX_BUFFERED``) are
in, and only then gives the connection to a thread with the bytes pushed back into gunicorn's
parser. A request that does not arrive within ``WEB_REQUEST_TIMEOUT`` seconds of its first
chance is closed. So a slow or stalled client costs a socket and a buffer, never a thread;
``worker_connections`` bounds the sockets; the threads bound the work. When every connection is
taken, the oldest one still sending its request is closed to make room, instead of leaving new
clients in the kernel's backlog behind stalled ones until they time out.

Sockets handed to a thread also get kernel send/receive timeouts (``SO_SNDTIMEO``/``SO_RCVTIMEO``)
for what the main loop cannot read ahead: a chunked body, a client that does not read its answer.

Closing is not allowed to block either: gunicorn closes a finished connection "gracefully" by
half-closing it and reading until the client closes, for up to 2 s, in its main loop, so one
client that keeps its end open after a ``Connection: close`` answer (or a 413) stalls every
other client for 2 s. Here the half-closed socket is drained by the poller instead.

The gunicorn master imports this module (to check the worker class), so it imports nothing but
gunicorn and the standard library.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import struct
import time
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

# The settings are checked by ``python -m services.web`` before gunicorn starts; it exports the
# value under this name for the worker (the master holds no pydantic).
TIMEOUT_ENV = "WEB_REQUEST_TIMEOUT"
DEFAULT_REQUEST_TIMEOUT = 10.0
# A head and body larger than this are handed over unfinished: gunicorn's parser refuses an
# oversized head (400/431), the app an oversized body (413), with the kernel timeouts as backstop.
MAX_BUFFERED = 128 * 1024
HEAD_END = b"\r\n\r\n"


def request_complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole HTTP/1 request: a head and as much body as it announces.
    A chunked body, ``Expect: 100-continue`` or an unreadable length counts as complete after the
    head (the thread reads the rest, under the socket timeouts); so does anything past
    ``MAX_BUFFERED``."""
    if len(data) >= MAX_BUFFERED:
        return True
    end = data.find(HEAD_END)
    if end < 0:
        return False
    length = 0
    for line in data[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        # A chunked body is read by the thread; a client that sends "Expect: 100-continue"
        # waits for gunicorn's "100 Continue" before it sends its body at all.
        if name in (b"transfer-encoding", b"expect"):
            return True
        if name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return True  # the parser answers 400
    return len(data) - (end + len(HEAD_END)) >= min(length, MAX_BUFFERED)


LINGER_S = 2.0  # how long a closed connection's unread input is drained (gunicorn's figure)


class LanConn(TConn):  # type: ignore[misc]
    """A connection whose graceful close is handed back to the worker's poller."""

    def __init__(self, worker: LanWorker, *args: Any) -> None:
        super().__init__(*args)
        self._worker = worker

    def close(self, graceful: bool = False) -> None:
        if graceful:
            self._worker.linger(self.sock)
        else:
            super().close()


class LanWorker(ThreadWorker):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_REQUEST_TIMEOUT))
        # Connections whose request is still arriving, oldest first (dicts keep insertion order).
        self.arriving: dict[int, tuple[TConn, bytearray]] = {}
        # Half-closed sockets being drained before the close, with their deadlines, oldest first.
        self.lingering: dict[int, tuple[socket.socket, float]] = {}

    def set_accept_enabled(self, enabled: bool) -> None:
        """gunicorn stops accepting at ``worker_connections``; make room first by closing the
        oldest connections whose request is still arriving (those that have waited longest)."""
        while not enabled and self.arriving and self.nr_conns >= self.worker_connections:
            oldest, _ = next(iter(self.arriving.values()))
            self._drop(oldest)
            enabled = self.nr_conns < self.worker_connections
        super().set_accept_enabled(enabled)

    def accept(self, listener: socket.socket) -> None:
        try:
            client, addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self._await_request(LanConn(self, self.cfg, client, addr, listener.getsockname()))

    def on_client_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        """A kept-alive connection starts its next request: read it in the loop as well."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await_request(conn)

    def _await_request(self, conn: TConn) -> None:
        conn.sock.setblocking(False)
        conn.timeout = time.monotonic() + self.request_timeout
        self.arriving[id(conn)] = (conn, bytearray())
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_bytes, conn))

    def _on_bytes(self, conn: TConn, sock: socket.socket) -> None:
        _, data = self.arriving[id(conn)]
        try:
            chunk = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client went away before its request was complete
            self._drop(conn)
            return
        data += chunk
        if request_complete(bytes(data)):
            self._hand_over(conn, bytes(data))

    def _hand_over(self, conn: TConn, data: bytes) -> None:
        del self.arriving[id(conn)]
        self.poller.unregister(conn.sock)
        timeout = struct.pack("ll", int(self.request_timeout),
                              int(self.request_timeout % 1 * 1_000_000))
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
        conn.data_ready = True
        conn.init()  # plain HTTP/1 here: no TLS handshake that could fail in this thread
        conn.parser.unreader.unread(data)
        self.enqueue_req(conn)

    def _drop(self, conn: TConn) -> None:
        self.arriving.pop(id(conn), None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    # --- closing without blocking the loop ---------------------------------------------------------
    def linger(self, sock: socket.socket) -> None:
        """Send our FIN now and read what the client still sends until it closes too (so the
        kernel does not answer that data with a reset that could cut off our answer), in the
        poller, for ``LINGER_S`` at most. Runs on the main loop (``finish_request``)."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        if len(self.lingering) >= self.worker_connections:
            sock.close()  # a flood of them: close at once rather than hold every socket
            return
        self.lingering[id(sock)] = (sock, time.monotonic() + LINGER_S)
        self.poller.register(sock, selectors.EVENT_READ, self._drain)

    def _drain(self, sock: socket.socket) -> None:
        try:
            if sock.recv(65536):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._close_lingering(sock)

    def _close_lingering(self, sock: socket.socket) -> None:
        self.lingering.pop(id(sock), None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(sock)
        sock.close()

    def murder_pending(self) -> None:
        """Close connections whose request has not arrived in time, and lingering ones past
        their deadline (called once a second)."""
        super().murder_pending()
        now = time.monotonic()
        for conn, _ in list(self.arriving.values()):
            if conn.timeout > now:
                break  # oldest first: the rest are younger
            self._drop(conn)
        for sock, deadline in list(self.lingering.values()):
            if deadline > now:
                break
            self._close_lingering(sock)
