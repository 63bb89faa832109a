"""The ``web`` program under the real supervisord: five programs RUNNING, the LAN port serving
only the LAN API (no internal route answers there, checked for every rule of every internal
service's url_map), the internal REST bound to 127.0.0.1 only and locked by the instance's
secret (no route answers without it, another local user cannot read it, a non-loopback address
reaches nothing), and a gunicorn master killed with ``kill -9`` coming back RUNNING and serving
(its worker dies with it instead of keeping the port)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import ifaddr
import pytest
import requests
from flask import Flask

from services.http_poller.app import create_app as poller_app
from services.http_poller.core import HttpPoller
from services.serial_handler.app import create_app as serial_app
from services.serial_handler.core import SerialHandler
from services.state_aggregator.app import create_app as aggregator_app
from services.state_aggregator.core import Aggregator
from shared.instance import load_instance
from shared.internal import HEADER, secret_path
from shared.processes import HTTP_POLLER, PROCESS_NAMES, WEB
from tests.conftest import ROOT
from tests.e2e.conftest import Instance
from tests.helpers import internal_headers, wait_for

pytestmark = pytest.mark.e2e


def internal_apps() -> dict[str, Flask]:
    """Each internal service's app as its factory builds it (cores built, never started)."""
    instance = load_instance(ROOT / "instances" / "demo.json", expected_id="demo")
    agg = Aggregator(instance, handlers={}, cache_ttl=10, poll_interval=5)
    return {"state-aggregator": aggregator_app(agg),
            "serial-handler": serial_app(SerialHandler(instance, lambda _o: None)),
            "http-poller": poller_app(HttpPoller(instance, lambda _o: None, poll_interval=5))}


def states(demo: Instance) -> dict[str, str]:
    lines = demo.supervisorctl("status").stdout.splitlines()
    return {w[0]: w[1] for w in (line.split() for line in lines) if len(w) >= 2}


def lan(demo: Instance) -> str:
    return f"http://127.0.0.1:{demo.env['PORT']}"


def serves(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return requests.get(url, timeout=2, headers=headers).ok
    except requests.RequestException:
        return False


def test_five_programs_are_running(demo: Instance) -> None:
    found = wait_for(lambda: (s := states(demo)) and set(s.values()) == {"RUNNING"} and s,
                     timeout=30, what="every program RUNNING")
    assert set(found) == set(PROCESS_NAMES) and len(found) == 5


def test_no_internal_route_answers_on_the_lan_port(demo: Instance) -> None:
    wait_for(lambda: serves(f"{lan(demo)}/api/health"), timeout=20, what="the LAN port")
    checked = 0
    for service, app in internal_apps().items():
        for rule in app.url_map.iter_rules():
            path = re.sub(r"<[^>]+>", "x", rule.rule)  # any value for each argument
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                answer = requests.request(method, lan(demo) + path, timeout=5, json={})
                assert answer.status_code == 404, (service, method, path, answer.text)
                assert answer.json()["ok"] is False, (service, method, path)
                checked += 1
    assert checked >= 20  # every service's routes were enumerated, not an empty map


INTERNAL_PORTS = {"state-aggregator": "STATE_AGGREGATOR_PORT",
                  "serial-handler": "SERIAL_HANDLER_PORT", "http-poller": "HTTP_POLLER_PORT"}


def test_no_internal_route_answers_without_the_instance_secret(demo: Instance) -> None:
    headers = internal_headers(demo.env)
    checked = 0
    for service, app in internal_apps().items():
        base = f"http://127.0.0.1:{demo.env[INTERNAL_PORTS[service]]}"
        wait_for(lambda b=base: serves(f"{b}/health", headers), timeout=30,  # type: ignore[misc]
                 what=f"{service} to serve with the secret")
        for rule in app.url_map.iter_rules():
            path = re.sub(r"<[^>]+>", "x", rule.rule)
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                missing = requests.request(method, base + path, timeout=5, json={})
                assert missing.status_code == 401, (service, method, path, missing.text)
                wrong = requests.request(method, base + path, timeout=5, json={},
                                         headers={HEADER: "x" * 43})
                assert wrong.status_code == 403, (service, method, path, wrong.text)
                checked += 1
    assert checked >= 20


# Another user on the machine: only stdlib Python (the venv need not be readable to it).
OTHER_USER = """
import sys, urllib.request, urllib.error
try:
    open(sys.argv[1]).read()
    print("read the secret")
except PermissionError:
    print("secret: permission denied")
try:
    urllib.request.urlopen(sys.argv[2], timeout=5)
    print("answered")
except urllib.error.HTTPError as exc:
    print("refused", exc.code)
"""


def test_another_local_user_can_neither_read_the_secret_nor_reach_a_service(
        demo: Instance) -> None:
    health = f"http://127.0.0.1:{demo.env['STATE_AGGREGATOR_PORT']}/health"
    wait_for(lambda: serves(health, internal_headers(demo.env)), timeout=30,
             what="the aggregator")
    run_dir = Path(demo.env["HUB_RUN_DIR"])
    # Root: a uid no account has, granted nothing on this machine. Not root: no other uid to
    # take; what is checked is then only that a request without the secret is refused.
    argv = (["setpriv", "--reuid=54321", "--regid=54321", "--clear-groups", "--"]
            if os.geteuid() == 0 else [])
    done = subprocess.run([*argv, "/usr/bin/python3", "-c", OTHER_USER,
                           str(secret_path(run_dir)), health],
                          capture_output=True, text=True, timeout=30, check=False)
    lines = done.stdout.split("\n")
    if argv:
        assert lines[0] == "secret: permission denied", done
        assert oct(run_dir.stat().st_mode & 0o777) == "0o700"
    assert "refused 401" in lines, done


def non_loopback_addresses() -> list[str]:
    return [str(ip.ip) for adapter in ifaddr.get_adapters() for ip in adapter.ips
            if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]


def test_internal_services_are_unreachable_on_a_non_loopback_address(demo: Instance) -> None:
    addresses = non_loopback_addresses()
    if not addresses:
        pytest.skip("this machine has no address but loopback: there is no LAN to reach from")
    for service, var in INTERNAL_PORTS.items():
        wait_for(lambda v=var: listening(int(demo.env[v])),  # type: ignore[misc]
                 what=f"{service} to listen")
        for address in addresses:
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((address, int(demo.env[var]))) != 0, (service, address)


def listening(port: int) -> list[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hexport = local.rpartition(":")
            if state == "0A" and int(hexport, 16) == port:
                found.append(address)
    return found


def test_internal_rest_listens_on_loopback_only(demo: Instance) -> None:
    for var in ("SERIAL_HANDLER_PORT", "HTTP_POLLER_PORT", "STATE_AGGREGATOR_PORT"):
        def bound(v: str = var) -> list[str]:
            return listening(int(demo.env[v]))

        addresses = wait_for(bound, what=f"{var} to listen")
        assert addresses == ["0100007F"], (var, addresses)  # 127.0.0.1, nothing else


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("program", [WEB.name, HTTP_POLLER.name])
def test_kill_9_of_a_gunicorn_master_comes_back_running_and_serving(demo: Instance,
                                                                     program: str) -> None:
    url = (f"{lan(demo)}/api/health" if program == WEB.name
           else f"http://127.0.0.1:{demo.env['HTTP_POLLER_PORT']}/health")
    headers = None if program == WEB.name else internal_headers(demo.env)
    wait_for(lambda: serves(url, headers), timeout=30, what=f"{program} to serve")
    master = int(demo.supervisorctl("pid", program).stdout.strip())
    workers = wait_for(lambda: children(master), what=f"{program}'s gunicorn worker")
    os.kill(master, signal.SIGKILL)
    wait_for(lambda: not any(alive(w) for w in workers), timeout=5,
             what=f"{program}'s worker to die with its master")
    wait_for(lambda: states(demo).get(program) == "RUNNING"
             and int(demo.supervisorctl("pid", program).stdout.strip() or 0) not in (0, master),
             timeout=30, what=f"{program} RUNNING again under a new pid")
    wait_for(lambda: serves(url, headers), timeout=30, what=f"the restarted {program} to serve\n"
             + demo.log())
    assert "Connection in use" not in demo.log()
