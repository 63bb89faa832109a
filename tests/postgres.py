"""A real, throwaway PostgreSQL server for tests: Debian's ``postgresql`` package (``./hub setup``
installs it with apt when it is missing), a cluster made by ``initdb`` in a temporary directory,
listening on a free port of 127.0.0.1 and on a socket in that directory, removed afterwards.

initdb and postgres refuse to run as root. As root (CI, containers) both run as the
``postgres`` system user the Debian package creates, through ``setpriv``; the directory is made
theirs. Anyone else runs them as themselves.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port, port_open, wait_for

SYSTEM_USER = "postgres"


def postgres_bin(name: str) -> str:
    """``initdb``, ``postgres``, ...: from PATH, else Debian's versioned directory (newest)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: run ./hub setup (it installs "
                           "Debian's postgresql package with apt)")
    return str(candidates[-1])


def _as_server_user() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs the server's programs, and the user it runs them as. The
    server gets SIGINT (a fast shutdown) when the test process dies without stopping it."""
    if os.geteuid() != 0:
        return ["setpriv", "--pdeathsig=SIGINT"], None
    try:
        user = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise RuntimeError(f"running as root, PostgreSQL needs the '{SYSTEM_USER}' system user "
                           "(Debian's postgresql package creates it): run ./hub setup") from None
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
            "--reset-env", "--pdeathsig=SIGINT"], user


@dataclass
class Postgres:
    url: str
    port: int
    directory: Path
    prefix: list[str]
    proc: subprocess.Popen[bytes] | None = None

    def serve(self) -> None:
        """Start the server on the cluster (again, after ``halt``) and wait until it accepts
        connections."""
        import psycopg

        log = self.directory / "server.log"
        # fsync off: a test cluster needs no durability, and the shared disk stays quiet.
        proc = subprocess.Popen(
            [*self.prefix, postgres_bin("postgres"), "-D", str(self.directory / "data"),
             "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={self.directory}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=50", "-c", "shared_buffers=32MB"],
            stdout=subprocess.DEVNULL, stderr=log.open("ab"))
        self.proc = proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {log.read_text(errors='replace')}")
            if not port_open("127.0.0.1", self.port):
                return False
            try:  # listening is not yet accepting: "the database system is starting up"
                psycopg.connect(self.url, connect_timeout=2).close()
            except psycopg.OperationalError:
                return False
            return True

        wait_for(ready, timeout=60, what="postgres to accept connections")

    def halt(self) -> None:
        """Stop the server, keeping its cluster (``serve`` starts it again)."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)  # fast shutdown: does not wait for clients
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.directory, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A fresh database on this server; its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"


def start_postgres() -> Postgres:
    prefix, user = _as_server_user()
    # Not under pytest's tmp_path: its parents are private to the invoking user, and the server
    # may run as another one.
    directory = Path(tempfile.mkdtemp(prefix="sensor-hub-pg-"))
    if user is not None:
        os.chown(directory, user.pw_uid, user.pw_gid)
    try:
        subprocess.run([*prefix, postgres_bin("initdb"), "-D", str(directory / "data"), "-U",
                        "hub", "--auth=trust", "--encoding=UTF8", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc
    port = free_port()
    server = Postgres(f"postgresql://hub@127.0.0.1:{port}/postgres", port, directory, prefix)
    try:
        server.serve()
    except BaseException:
        server.stop()
        raise
    return server
