"""Bare paho clients in their own processes (so the harness's GIL is not part of the figure):
the measuring subscriber used by every section, and the ceiling's publisher.

The subscriber records, for every live (not retained) message on a recorded topic, the
harness's sequence number ``n`` in its JSON payload and the arrival time (``time.time_ns()``);
it counts every other message. The harness talks to it over a pipe: ``reset``, ``dump``.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import socket
import threading
import time
import uuid
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

CTX = mp.get_context("spawn")


def _client(prefix: str) -> paho.Client:
    return paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-{uuid.uuid4().hex[:8]}",
                       protocol=paho.MQTTv311, clean_session=True)


def _nodelay(client: paho.Client) -> None:
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# --- subscriber --------------------------------------------------------------------------------
def _subscriber_main(  # noqa: PLR0917  (a Process target takes positional args)
        host: str, port: int, filters: list[str], record_suffix: str, qos: int,
        conn: Connection, recorded: Any, total: Any) -> None:
    lock = threading.Lock()
    seqs, arrivals = array("q"), array("q")
    counts = {"retained": 0, "unparsed": 0, "first_ns": 0, "last_ns": 0}
    ready = threading.Event()
    client = _client("bench-sub")

    def on_connect(c: paho.Client, *_a: Any) -> None:
        _nodelay(c)
        c.subscribe([(f, qos) for f in filters])

    def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        now = time.time_ns()
        if msg.retain:
            counts["retained"] += 1
            return
        with lock:
            total.value += 1
            if not counts["first_ns"]:
                counts["first_ns"] = now
            counts["last_ns"] = now
            if msg.topic.endswith(record_suffix):
                try:
                    seq = orjson.loads(msg.payload)["n"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    counts["unparsed"] += 1
                    return
                seqs.append(int(seq))
                arrivals.append(now)
                recorded.value += 1

    client.on_connect = on_connect
    client.on_subscribe = lambda *_a: ready.set()
    client.on_message = on_message
    client.connect(host, port, keepalive=60)
    client.loop_start()
    ready.wait(10)
    conn.send("ready")
    while True:
        try:
            cmd = conn.recv()
        except EOFError:
            break
        if cmd == "stop":
            break
        with lock:
            if cmd == "reset":
                del seqs[:], arrivals[:]
                counts.update(retained=0, unparsed=0, first_ns=0, last_ns=0)
                recorded.value = 0
                total.value = 0
                conn.send("ok")
            elif cmd == "dump":
                conn.send({"seqs": seqs.tobytes(), "arrivals": arrivals.tobytes(),
                           "total": total.value, **counts})
    client.loop_stop()
    client.disconnect()


@dataclass
class Dump:
    seqs: array[int]
    arrivals: array[int]
    total: int
    retained: int
    unparsed: int
    first_ns: int
    last_ns: int


class Subscriber:
    """A measuring subscriber in its own process."""

    def __init__(self, host: str, port: int, filters: Sequence[str], *, record_suffix: str,
                 qos: int = 1) -> None:
        self.recorded = CTX.RawValue("q", 0)
        self.total = CTX.RawValue("q", 0)
        self._conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=_subscriber_main, daemon=True, args=(
            host, port, list(filters), record_suffix, qos, child, self.recorded, self.total))
        self.proc.start()
        if not self._conn.poll(20):
            raise TimeoutError("the measuring subscriber did not subscribe within 20 s")
        self._conn.recv()

    def reset(self) -> None:
        self._conn.send("reset")
        self._conn.recv()

    def dump(self) -> Dump:
        self._conn.send("dump")
        raw = self._conn.recv()
        seqs, arrivals = array("q"), array("q")
        seqs.frombytes(raw.pop("seqs"))
        arrivals.frombytes(raw.pop("arrivals"))
        return Dump(seqs, arrivals, **raw)

    def wait_recorded(self, n: int, *, timeout: float, idle: float | None = None) -> bool:
        """Until ``n`` messages are recorded; False at the deadline, or when nothing arrived for
        ``idle`` seconds."""
        end = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while time.monotonic() < end:
            now_n = self.recorded.value
            if now_n >= n:
                return True
            if now_n != last:
                last, last_change = now_n, time.monotonic()
            elif idle is not None and time.monotonic() - last_change > idle:
                return False
            time.sleep(0.01)
        return False

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conn.send("stop")
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()


# --- the ceiling's publisher -------------------------------------------------------------------
def payload(seq: int, size: int = 150) -> bytes:
    """A state-like JSON payload of exactly ``size`` bytes carrying ``seq``."""
    head = (b'{"device_id":"ceiling","timestamp":"2026-01-01T12:00:00.123Z",'
            b'"temperature":22.5,"n":%10d,"pad":"' % seq)
    return head + b"x" * (size - len(head) - 2) + b'"}'


def _publisher_main(  # noqa: PLR0917  (a Process target takes positional args)
        host: str, port: int, topic: str, qos: int, n: int, size: int, inflight: int,
        window: int, conn: Connection) -> None:
    client = _client("bench-pub")
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    slots = threading.Semaphore(window)
    connected = threading.Event()
    acked = [0]

    def on_connect(c: paho.Client, *_a: Any) -> None:
        _nodelay(c)
        connected.set()

    def on_publish(*_a: Any) -> None:
        acked[0] += 1
        if qos:
            slots.release()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect(host, port, keepalive=60)
    client.loop_start()
    connected.wait(10)
    payloads = [payload(i, size) for i in range(n)]
    conn.send("ready")
    conn.recv()  # go
    t0 = time.time_ns()
    for body in payloads:
        if qos:
            slots.acquire()
        client.publish(topic, body, qos=qos)
    end = time.monotonic() + 60
    while acked[0] < n and time.monotonic() < end:
        time.sleep(0.002)
    conn.send({"t0_ns": t0, "t_acked_ns": time.time_ns(), "acked": acked[0]})
    client.loop_stop()
    client.disconnect()


def ceiling_run(host: str, port: int, *, qos: int, n: int, size: int = 150,
                inflight: int = 20, window: int = 1000) -> dict[str, Any]:
    """One bare paho publisher to one bare paho subscriber, ``n`` messages as fast as they go."""
    topic = f"bench/ceiling/{uuid.uuid4().hex[:8]}"
    sub = Subscriber(host, port, [topic], record_suffix=topic, qos=qos)
    parent, child = CTX.Pipe()
    pub = CTX.Process(target=_publisher_main, daemon=True,
                      args=(host, port, topic, qos, n, size, inflight, window, child))
    pub.start()
    try:
        if not parent.poll(20):
            raise TimeoutError("the ceiling publisher did not connect")
        parent.recv()
        parent.send("go")
        sub.wait_recorded(n, timeout=90, idle=3.0)
        dump = sub.dump()
        pubres = parent.recv() if parent.poll(30) else {}
    finally:
        pub.join(5)
        if pub.is_alive():
            pub.terminate()
        sub.close()
    received = len(dump.seqs)
    elapsed = (dump.last_ns - pubres.get("t0_ns", dump.first_ns)) / 1e9 if received else 0.0
    return {"qos": qos, "sent": n, "received": received, "lost": n - received,
            "seconds": round(elapsed, 3),
            "msgs_per_s": round(received / elapsed) if elapsed > 0 else 0}


# --- a small in-process watcher for low-volume topics (status, first states) ------------------
class Watcher:
    """Notes when each topic first carries a payload (retained or live), with ``time.time_ns``."""

    def __init__(self, host: str, port: int, filters: Sequence[str]) -> None:
        self.first: dict[str, tuple[int, bytes]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = _client("bench-watch")
        self.client.on_connect = lambda c, *_a: c.subscribe([(f, 1) for f in filters])
        self.client.on_subscribe = lambda *_a: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=60)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise TimeoutError("watcher did not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        now = time.time_ns()
        with self._lock:
            if msg.payload and msg.topic not in self.first:
                self.first[msg.topic] = (now, bytes(msg.payload))

    def seen(self, topic: str, payload: bytes | None = None) -> int | None:
        with self._lock:
            hit = self.first.get(topic)
        if hit is None or (payload is not None and hit[1] != payload):
            return None
        return hit[0]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
