"""Fuzzing: every REST route of every service of a running instance (the real supervisord with
the real config, the real mosquitto) gets schemathesis' requests, built from the description the
service serves (``/openapi.json``, the LAN port's ``/api/openapi.json``): valid ones and invalid
ones (wrong types, missing fields, bad ids). No answer may be a 5xx and no connection may break;
afterwards no program has restarted (same pid), each still answers ``/health`` and the instance
is still ``online`` on MQTT.

The locked routes are fuzzed with their credentials, so the fuzzer reaches what is behind them,
not only the 401s: the internal services with the instance's secret (``X-Hub-Secret``, from
HUB_RUN_DIR, as the hub's own processes send it), the LAN port with ``SERVER_TOKEN``,
``MASTER_API_KEY`` as ``X-API-Key``, and a dashboard session logged in with the key and its CSRF
token.

Bounded: ``FUZZ_EXAMPLES`` examples per operation and generation mode (default 5: the whole module
takes about a minute and a half on 2 cores), derandomized, so a run is repeatable; raise it for a
deeper search (``FUZZ_EXAMPLES=100 ./hub test-quick tests/e2e/test_fuzz_rest.py``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from shared.processes import PROCESS_NAMES
from tests.e2e.conftest import Instance, demo_instance
from tests.helpers import Broker, internal_headers, retained, wait_for

pytestmark = pytest.mark.e2e

KEY = "fuzz-management-key"
TOKEN = "fuzz-server-token"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5"))
# A live view holds one of DASHBOARD_STREAMS slots until its next keep-alive write notices the
# closed socket (up to 10 s): fewer examples than slots, so the fuzzer never fills them.
STREAM_EXAMPLES = 2
REQUEST_TIMEOUT_S = 20.0
SENSOR_ROUTES = re.compile(r"/api/sensor-master/(config/.*|heartbeat|data|commands/.*/ack|token/refresh)")
# Extra environment of the fuzzed instance. The LAN port's rate limits are raised far above what
# the fuzzer sends (about 10 requests per operation), so it reaches the routes, not 429s.
NO_RATE_LIMIT = "1000000/minute"


@dataclass
class Service:
    program: str
    base: str
    spec: str
    headers: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    # The LAN port's sensor check-ins want the sensor's own token (a Bearer token wins over
    # X-Token, so it is sent only there).
    sensor_headers: dict[str, str] = field(default_factory=dict)

    def headers_for(self, path: str) -> dict[str, str]:
        return self.sensor_headers if SENSOR_ROUTES.fullmatch(path) else self.headers


@dataclass
class Fuzzed:
    instance: Instance
    services: dict[str, Service]
    pids: dict[str, int]


def programs(inst: Instance) -> dict[str, tuple[str, int | None]]:
    """supervisorctl's state and pid of each program."""
    found: dict[str, tuple[str, int | None]] = {}
    for line in inst.supervisorctl("status").stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            pid = re.search(r"pid (\d+)", line)
            found[parts[0]] = (parts[1], int(pid.group(1)) if pid else None)
    return found


def running_pids(inst: Instance) -> dict[str, int] | None:
    state = programs(inst)
    if set(state) != set(PROCESS_NAMES) or any(s != "RUNNING" for s, _ in state.values()):
        return None
    return {name: pid for name, (_, pid) in state.items() if pid is not None}


def dashboard_session(base: str) -> tuple[dict[str, str], dict[str, str]]:
    """Log in to the dashboard with the management key: its session cookie and CSRF header."""
    with requests.Session() as s:
        page = s.get(f"{base}/ui/login", timeout=10)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token, page.text
        done = s.post(f"{base}/ui/login", data={"key": KEY, "csrf_token": token.group(1)},
                      allow_redirects=False, timeout=10)
        assert done.status_code == 302, done.text
        page = s.get(f"{base}/ui/hub", timeout=10)  # logging in gave the session a new token
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token, page.text
        return {"X-CSRF-Token": token.group(1)}, dict(s.cookies)


@pytest.fixture(scope="module")
def fuzzed(mosquitto: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    with demo_instance(mosquitto, tmp_path_factory.mktemp("fuzz"), MASTER_API_KEY=KEY,
                       SERVER_TOKEN=TOKEN, RATE_LIMIT_INGEST=NO_RATE_LIMIT,
                       RATE_LIMIT_MANAGEMENT=NO_RATE_LIMIT) as inst:
        def url(var: str) -> str:
            return f"http://127.0.0.1:{inst.env[var]}"
        services = {
            "state-aggregator": Service("state-aggregator", url("STATE_AGGREGATOR_PORT"),
                                        "/openapi.json"),
            "serial-handler": Service("serial-handler", url("SERIAL_HANDLER_PORT"), "/openapi.json"),
            "http-poller": Service("http-poller", url("HTTP_POLLER_PORT"), "/openapi.json"),
            "web": Service("web", url("PORT"), "/api/openapi.json"),
        }
        secret = internal_headers(inst.env)  # the internal REST answers only with it
        for svc in services.values():
            if svc.program != "web":
                svc.headers = dict(secret)
            wait_for(partial(answers, f"{svc.base}{svc.spec}", svc.headers), timeout=60,
                     what=f"{svc.program}'s description")
        web = services["web"]
        csrf, cookies = dashboard_session(web.base)
        web.headers = {"X-Token": TOKEN, "X-API-Key": KEY, **csrf}
        web.cookies = cookies
        registered = requests.post(f"{web.base}/api/sensor-master/register", timeout=10,
                                   headers={"X-Token": TOKEN},
                                   json={"sensor_id": "fuzz_sensor", "sensor_type": "esp32_fuzz"})
        assert registered.status_code == 200, registered.text
        web.sensor_headers = {"Authorization": f"Bearer {registered.json()['token']}",
                              "X-API-Key": KEY, **csrf}
        pids = wait_for(lambda: running_pids(inst), timeout=30, what="every program RUNNING")
        yield Fuzzed(inst, services, pids)


def answers(url: str, headers: dict[str, str]) -> bool:
    try:
        return requests.get(url, headers=headers, timeout=5).status_code == 200
    except requests.RequestException:
        return False


@dataclass
class Failure:
    what: str
    detail: str

    def __str__(self) -> str:
        return f"{self.what}: {self.detail}"


def fuzz_operation(op: schemathesis.APIOperation[Any, Any, Any, Any], svc: Service, session: requests.Session,
                   failures: list[Failure]) -> int:
    """Send this operation's generated requests; each 5xx or broken answer becomes a failure.
    The number of requests sent."""
    sent = 0
    streams = any(r.startswith("text/event-stream") for r in _produces(op))
    fixed_query = {"wait": "0"} if any(p.name == "wait" for p in op.query) else None
    # Negative cases need something to break: a JSON body, a query argument or a typed path
    # argument. A string path argument or a form field has no invalid value that a URL or a form
    # can carry: hypothesis would search in vain (seconds per operation).
    negatable = any(b.media_type == "application/json" for b in op.body) or op.query or any(
        p.definition.get("schema", {}).get("type") != "string" for p in op.path_parameters)
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if negatable else \
        [GenerationMode.POSITIVE]
    for mode in modes:
        strategy = op.as_strategy(generation_mode=mode, query=fixed_query)

        @settings(max_examples=STREAM_EXAMPLES if streams else EXAMPLES, deadline=None,
                  database=None, derandomize=True, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case: schemathesis.Case[Any]) -> None:
            nonlocal sent
            sent += 1
            kwargs = case.as_transport_kwargs(base_url=svc.base,
                                              headers=svc.headers_for(case.formatted_path))
            kwargs.pop("cookies", None)
            what = f"{svc.program} {case.method} {kwargs['url']}"
            try:
                with session.request(**kwargs, cookies=svc.cookies, timeout=REQUEST_TIMEOUT_S,
                                     allow_redirects=False, stream=True) as resp:
                    body = b"" if streams and resp.ok else resp.content  # a live view never ends
            except requests.RequestException as exc:
                failures.append(Failure(what, f"no complete answer: {exc!r}"))
                return
            if resp.status_code >= 500:
                failures.append(Failure(what, f"{resp.status_code} {body[:300]!r} "
                                        f"(sent {kwargs.get('json', kwargs.get('data'))!r:.300})"))

        try:
            run()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE:  # a valid request must always be possible
                failures.append(Failure(op.label, "no valid request could be generated"))
    return sent


def _produces(op: schemathesis.APIOperation[Any, Any, Any, Any]) -> list[str]:
    return [media for resp in op.definition.raw.get("responses", {}).values()
            for media in resp.get("content", {})]


@pytest.mark.parametrize("name", ["state-aggregator", "serial-handler", "http-poller", "web"])
def test_fuzzing_every_route_gets_no_server_error(fuzzed: Fuzzed, name: str) -> None:
    svc = fuzzed.services[name]
    described = requests.get(f"{svc.base}{svc.spec}", headers=svc.headers, timeout=10)
    schema = schemathesis.openapi.from_dict(described.json())
    operations = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
    assert len(operations) >= 5
    failures: list[Failure] = []
    took: dict[str, float] = {}
    sent = 0
    with requests.Session() as session:
        for op in operations:
            started = time.monotonic()
            sent += fuzz_operation(op, svc, session, failures)
            took[op.label] = time.monotonic() - started
    assert sent >= len(operations) * min(EXAMPLES, 2)  # every operation was exercised
    slowest = sorted(took.items(), key=lambda kv: -kv[1])[:5]
    print(f"{name}: {sent} requests on {len(operations)} operations; slowest: "
          + ", ".join(f"{label} {s:.1f} s" for label, s in slowest))
    assert not failures, "\n".join(map(str, failures[:40]))


def test_after_the_fuzzing_no_program_restarted_and_the_hub_answers(fuzzed: Fuzzed,
                                                                     mosquitto: Broker) -> None:
    inst = fuzzed.instance
    assert running_pids(inst) == fuzzed.pids, programs(inst)
    for svc in fuzzed.services.values():
        health = "/api/health" if svc.program == "web" else "/health"
        answer = requests.get(f"{svc.base}{health}", headers=svc.headers, timeout=10)
        assert answer.status_code == 200, svc.program
    status = retained(mosquitto.host, mosquitto.port, f"{inst.root_topic}/status")
    assert status.text == "online"


def test_the_programs_logged_no_crash(fuzzed: Fuzzed) -> None:
    """The programs' own output (supervisord collects it) names no unhandled error."""
    crashes = [line for line in fuzzed.instance.output
               if "unhandled error" in line or "Traceback" in line]
    assert crashes == [], "\n".join(crashes[:20])
