"""Test helpers: free ports, polling with a deadline (never sleeping for readiness), a clock that
tests move by hand, a real mosquitto (optionally with a password file and a TLS listener whose
certificates come from a test CA made here), and an MQTT subscriber that records what it
receives."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from shared.internal import HEADER, secret_path
from shared.portcheck import can_bind, ephemeral_range

T = TypeVar("T")


# Ports for tests' servers come from below the kernel's ephemeral range: a port the kernel
# hands out for bind(0) is free now, but once released any outgoing connection on this host may
# get it as its local port before the server binds it (seen in CI: a service's port taken by a
# keep-alive connection of the instance itself). Tests of several runs on one machine reserve
# their ports with a lock file each, held until the process exits.
PORTS_LOW = 20000
PORT_LOCKS = Path(os.environ.get("TMPDIR", "/tmp")) / "sensor-hub-test-ports"
_reserved: list[int] = []  # the lock files' descriptors, kept open for the whole run


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, that no outgoing connection will be given,
    and that no other test run on this machine has taken."""
    low, high = ephemeral_range()
    candidates = [p for p in range(PORTS_LOW, 65536) if not low <= p <= high] or \
        list(range(PORTS_LOW, 65536))  # a host whose range covers them all: the old risk
    PORT_LOCKS.mkdir(parents=True, exist_ok=True)
    rng = random.Random()
    for _ in range(200):
        port = rng.choice(candidates)
        fd = os.open(PORT_LOCKS / f"{port}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if can_bind("127.0.0.1", port):
            _reserved.append(fd)
            return port
        os.close(fd)
    raise RuntimeError(f"no free port found between {PORTS_LOW} and 65535 outside {low}-{high}")


def internal_headers(env: Mapping[str, str]) -> dict[str, str]:
    """The header that opens the internal REST of the instance ``env`` runs (its secret in
    HUB_RUN_DIR), for tests that call the aggregator, serial handler or poller directly."""
    return {HEADER: secret_path(Path(env["HUB_RUN_DIR"])).read_text().strip()}


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's notation, e.g. ``16m``) on ``mount``, a real small disk for
    the full-disk tests; skipped where mounting needs root the test lacks."""
    mount.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def wait_for(condition: Callable[[], T | Literal[False] | None], *, timeout: float = 10.0,
             interval: float = 0.02, what: str | Callable[[], str] = "condition") -> T:
    """Poll ``condition`` until it returns something truthy (never ``None`` or ``False``, which
    the type says); fail with ``what`` at the deadline (a callable is asked then, so a state it
    reports is the deadline's, not the start's)."""
    deadline = time.monotonic() + timeout
    last: T | Literal[False] | None = None
    while time.monotonic() < deadline:
        last = condition()
        if last is not None and last is not False and last:
            return last
        time.sleep(interval)
    said = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout:g} s waiting for {said} (last: {last!r})")


class Clock:
    """A clock for code that takes one (``clock=``): it stands still until a test sets ``now``.
    It starts in 2023: an observation's time must lie between 2000 and the real clock's now
    (``shared.models.ObsTime``)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto")
    if found is None and Path("/usr/sbin/mosquitto").exists():
        found = "/usr/sbin/mosquitto"
    if found is None:
        raise RuntimeError("mosquitto is not installed: run ./hub setup (it installs it with apt)")
    return found


@dataclass(frozen=True)
class TestCa:
    """A CA made for one test run, with a certificate for a broker on 127.0.0.1 (and
    ``localhost``) and one for a client, each with its key (PEM files)."""

    __test__ = False  # not a pytest test class, whatever its name

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_test_ca(directory: Path) -> TestCa:
    """A new CA and the broker's and a client's certificates, with the openssl command line
    (EC P-256 keys, valid for two days)."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        done = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True,
                              check=False, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr}")

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=sensor-hub test CA")
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN=sensor-hub test {name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                "-extfile", f"{name}.ext")
    return TestCa(directory / "ca.crt", directory / "server.crt", directory / "server.key",
                  directory / "client.crt", directory / "client.key")


# The accounts of a locked broker (the ``locked`` fixture): the hub's and a subscriber's.
LOCKED_USERS = {"hub": "hub-pass", "observer": "observer-pass"}


@dataclass
class Broker:
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    conf: Path
    tls_port: int | None = None  # the TLS listener's, when it has one

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def restart(self) -> None:
        self.stop()
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.host, self.port), what="mosquitto to listen again")


def start_broker(tmp: Path, port: int | None = None, *, extra: str = "",
                 users: Mapping[str, str] | None = None, tls: TestCa | None = None,
                 require_certificate: bool = False) -> Broker:
    """A mosquitto on 127.0.0.1: anonymous, or with ``users`` (name: password, in a password
    file made by ``mosquitto_passwd``) on every listener; with ``tls``, a second listener on
    ``Broker.tls_port`` with the test CA's broker certificate, wanting a client certificate
    signed by that CA when ``require_certificate``."""
    port = port or free_port()
    conf = tmp / f"mosquitto-{port}.conf"
    lines = [f"listener {port} 127.0.0.1", "set_tcp_nodelay true", "persistence false"]
    if users or tls:
        # Started as root, mosquitto becomes the user "mosquitto" before it reads its key and
        # password files, which sit in this test's private directory; as any other user this
        # line does nothing.
        lines.append("user root")
    if users:
        passwords = tmp / f"mosquitto-{port}.passwd"
        for n, (name, password) in enumerate(users.items()):
            subprocess.run(["mosquitto_passwd", *(["-c"] if n == 0 else []), "-b",
                            str(passwords), name, password], check=True, timeout=30,
                           capture_output=True)
        lines += ["allow_anonymous false", f"password_file {passwords}"]
    else:
        lines.append("allow_anonymous true")
    tls_port = None
    if tls is not None:
        tls_port = free_port()
        lines += [f"listener {tls_port} 127.0.0.1", f"cafile {tls.ca}",
                  f"certfile {tls.server_cert}", f"keyfile {tls.server_key}",
                  f"require_certificate {'true' if require_certificate else 'false'}"]
    conf.write_text("\n".join(lines) + f"\n{extra}")
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for listening in (port, tls_port):
        if listening is not None:
            wait_for(lambda p=listening: port_open("127.0.0.1", p),  # type: ignore[misc]
                     what="mosquitto to listen")
    return Broker("127.0.0.1", port, proc, conf, tls_port)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int

    @property
    def text(self) -> str:
        return self.payload.decode()

    def json(self) -> Any:
        return orjson.loads(self.payload)


@dataclass
class Subscriber:
    """A real MQTT subscriber that keeps every message it gets."""

    host: str
    port: int
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    username: str | None = None  # for a broker with a password file
    password: str | None = None

    def __post_init__(self) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"test-sub-{uuid.uuid4().hex[:8]}")
        if self.username is not None:
            self.client.username_pw_set(self.username, self.password)
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.connect(self.host, self.port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos))

    def subscribe(self, topic_filter: str) -> Subscriber:
        self._subscribed.clear()
        self.client.subscribe(topic_filter, qos=1)
        if not self._subscribed.wait(5):
            raise AssertionError(f"subscription to {topic_filter} not acknowledged")
        return self

    def on(self, topic: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic]

    def last(self, topic: str) -> Received | None:
        found = self.on(topic)
        return found[-1] if found else None

    def wait(self, topic: str, *, timeout: float = 10.0,
             where: Callable[[Received], bool] = lambda _m: True) -> Received:
        return wait_for(lambda: next((m for m in reversed(self.on(topic)) if where(m)), None),
                        timeout=timeout, what=f"a message on {topic}")

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def publish(host: str, port: int, topic: str, payload: bytes | str, *, retain: bool = False,
            qos: int = 1) -> None:
    """Publish one message and wait until the broker has it."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
    client.connect(host, port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def unique_base() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def iter_lines(path: Path) -> Iterator[str]:
    yield from path.read_text(errors="replace").splitlines()


def retained(host: str, port: int, topic: str, *, timeout: float = 10.0,
             where: Callable[[Received], bool] = lambda _m: True,
             what: str | Callable[[], str] | None = None) -> Received:
    """What the broker keeps retained on ``topic``, as a new subscriber receives it; ``what``
    says more at the deadline (as ``wait_for``'s)."""
    def look() -> Received | None:
        sub = Subscriber(host, port).subscribe(topic)
        try:
            return next((m for m in sub.on(topic) if m.retain and where(m)), None) or \
                wait_for(lambda: next((m for m in sub.on(topic) if m.retain and where(m)), None),
                         timeout=0.5, what=f"retained {topic}")
        except AssertionError:
            return None
        finally:
            sub.close()
    return wait_for(look, timeout=timeout, interval=0.1,
                    what=what or f"a retained message on {topic}")


class Recorder:
    """An ``emit`` for handler cores: keeps every observation, for assertions."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._lock = threading.Lock()

    def __call__(self, obs: Any) -> None:
        with self._lock:
            self.items.append(obs)

    def of(self, kind: type[Any], device_id: str | None = None,
           where: Callable[[Any], bool] = lambda _o: True) -> list[Any]:
        with self._lock:
            return [o for o in self.items if isinstance(o, kind)
                    and (device_id is None or o.device_id == device_id) and where(o)]

    def wait(self, kind: type[Any], device_id: str | None = None,
             where: Callable[[Any], bool] = lambda _o: True, *, count: int = 1,
             timeout: float = 3.0) -> list[Any]:
        what = f"{count} {kind.__name__}(s) for {device_id or 'any device'}"
        return wait_for(lambda: (found := self.of(kind, device_id, where))[count - 1:] and found,
                        timeout=timeout, what=what)
