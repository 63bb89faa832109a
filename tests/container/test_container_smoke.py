"""The real image, built from the unmodified Dockerfile with podman and run against a real
broker: what an operator of `docker run` sees on the wire, in supervisorctl and in the health
check.

The container runs in a network namespace of its own, as under compose, so its programs listen
on their default internal ports (5001-5003) where nothing else can hold them; the test holds the
host's copies of those ports while it runs, to show that. (It once ran with host networking and
free ports picked on the host: one was the local end of an outgoing connection by the time
serial-handler bound it, "Connection in use", and no serial device had a state in 90 s.)
slirp4netns lets the container reach the test broker on the host's 127.0.0.1 at 10.0.2.2, and
podman publishes the LAN port on a host port it picks itself. It runs with a unique base topic,
mounts instances/demo.json read-only as a user would, and runs as docker-compose.yml runs it: as
the image's user, on a read-only root filesystem with a tmpfs on /tmp only (podman's own extra
tmpfs mounts are turned off, as Docker has none). The demo's HTTP motion sensor polls
``${DEMO_SENSORS_HOST}:${DEMO_SENSORS_PORT}``; the test runs that demo server from the same image
in a second container that owns the shared network namespace (as a pod's first container), so
every configured device is checked, the polled one included.
"""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

if TYPE_CHECKING:  # mypy knows the module by its place in the tree (conftest.py puts it on the path)
    from tests.container.container_support import SCRIPTS, Message, Subscriber, wait_until
else:
    from container_support import SCRIPTS, Message, Subscriber, wait_until

from shared.portcheck import can_bind
from shared.processes import HANDLERS, LAN_PORT, PROCESS_NAMES, STATE_AGGREGATOR
from tests.helpers import Broker

pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

PROGRAMS = set(PROCESS_NAMES)
INSTANCE = "demo"
IMAGE = "localhost/sensor-hub:test"
# Generous: the first reading of every device, on a 2-core machine that may be busy.
STARTUP_S = 90.0
# The containers' own network namespace; the host's 127.0.0.1 is 10.0.2.2 in it.
NETWORK = "slirp4netns:allow_host_loopback=true"
HOST_LOOPBACK = "10.0.2.2"
DEMO_PORT = 5010  # the demo sensor server's, inside the namespace (compose's too)
# What the programs listen on inside: the defaults, as no variable moves them.
INTERNAL_PORTS = [p.port for p in (STATE_AGGREGATOR, *HANDLERS) if p.port] + [DEMO_PORT]


def podman(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, check=False, timeout=timeout
    )


@pytest.fixture(scope="module")
def image(podman_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image, built by scripts/container/build.sh; podman's layer cache keeps reruns fast."""
    log = tmp_path_factory.mktemp("build") / "build.log"
    with log.open("w") as out:
        built = subprocess.run(
            ["bash", str(SCRIPTS / "build.sh"), IMAGE],
            env=podman_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=900,
        )
    if built.returncode != 0:
        pytest.fail(f"image build failed ({log}):\n" + "\n".join(log.read_text().splitlines()[-40:]))
    return IMAGE


@dataclass
class Hub:
    env: dict[str, str]
    name: str
    base: str
    broker: Broker
    devices: list[str]
    containers: list[str] = field(default_factory=list)
    lan_port: int = 0  # the host port podman publishes the web program's LAN API on

    @property
    def topic(self) -> str:
        return f"{self.base}/v1/instances/{INSTANCE}"

    def logs(self) -> str:
        out = podman(self.env, "logs", "--tail", "60", self.name)
        return f"--- podman logs --tail 60 {self.name} ---\n{out.stdout}{out.stderr}"

    def subscribe(self, topic_filter: str) -> Subscriber:
        return Subscriber(self.broker.host, self.broker.port, topic_filter)

    def hub_token(self) -> str | None:
        """The hub token the instance generated in its data volume (as a user reads it)."""
        out = podman(self.env, "exec", self.name, "cat", "/app/data/server_token")
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def configured_devices(instance_file: Path) -> list[str]:
    instance = json.loads(instance_file.read_text())
    return [sensor["sensor_id"] for sensor in instance["config"]["sensors"]]


# What docker-compose.yml says (read_only: true, tmpfs: [/tmp]); podman would add tmpfs mounts of
# its own on /tmp, /var/tmp and /run with --read-only, Docker adds none.
READ_ONLY = ("--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,mode=1777")


def run_container(hub: Hub, name: str, network: str, *args: str) -> None:
    started = podman(hub.env, "run", "--detach", "--name", name, f"--network={network}", *args)
    if started.returncode != 0:
        pytest.fail(f"podman run {name} failed: {started.stderr}")
    hub.containers.append(name)


@contextmanager
def hold_host_ports(ports: list[int]) -> Iterator[None]:
    """Listen on the host's 127.0.0.1 at ``ports`` (those another program holds already are held
    all the same), so a container whose programs shared the host's network could not start."""
    held: list[socket.socket] = []
    try:
        for port in ports:
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
            except OSError:
                sock.close()  # taken by someone else: held either way
                continue
            held.append(sock)
        yield
    finally:
        for sock in held:
            sock.close()


@pytest.fixture(scope="module")
def hub(
    image: str,
    podman_env: dict[str, str],
    mosquitto: Broker,
    repo: Path,
) -> Iterator[Hub]:
    suffix = uuid.uuid4().hex[:10]
    instance_file = repo / "instances" / f"{INSTANCE}.json"
    devices = configured_devices(instance_file)
    hub = Hub(podman_env, f"sensor-hub-test-{suffix}", f"sensor-hub-test-{suffix}", mosquitto, devices)
    demo = f"{hub.name}-demo-sensors"
    with hold_host_ports([*INTERNAL_PORTS, LAN_PORT]):
        try:
            # First, it makes the namespace and publishes the hub's LAN port from it.
            run_container(
                hub, demo, NETWORK, "--publish", f"127.0.0.1::{LAN_PORT}",
                "--entrypoint", "python", image,
                "-m", "services.demo_sensors", "--host", "127.0.0.1", "--port", str(DEMO_PORT),
            )
            published = podman(podman_env, "port", demo, f"{LAN_PORT}/tcp").stdout.strip()
            hub.lan_port = int(published.rpartition(":")[2])
            environment = {
                "INSTANCE_NAME": INSTANCE,
                "MQTT_HOST": HOST_LOOPBACK,
                "MQTT_PORT": str(mosquitto.port),
                "MQTT_BASE_TOPIC": hub.base,
                "DEMO_SENSORS_HOST": "127.0.0.1",
                "DEMO_SENSORS_PORT": str(DEMO_PORT),
            }
            run_container(
                hub,
                hub.name,
                f"container:{demo}",
                *READ_ONLY,
                *[arg for key, value in environment.items() for arg in ("--env", f"{key}={value}")],
                "--volume",
                f"{instance_file}:/app/instances/{INSTANCE}.json:ro",
                image,
            )
            yield hub
        finally:
            for name in reversed(hub.containers):
                podman(podman_env, "rm", "--force", "--volumes", "--time", "0", name)


def test_image_is_configured_as_documented(image: str, podman_env: dict[str, str]) -> None:
    inspected = podman(podman_env, "image", "inspect", image)
    assert inspected.returncode == 0, inspected.stderr
    image_info = json.loads(inspected.stdout)[0]
    config = image_info["Config"]
    assert config["User"] == "hub"
    assert config["WorkingDir"] == "/app"
    assert config["Entrypoint"] == ["/app/scripts/container/entrypoint.sh"]
    assert "8088/tcp" in config["ExposedPorts"]
    assert "/app/data" in config["Volumes"]
    # podman reports the (docker-format) HEALTHCHECK beside Config, not in it.
    assert image_info["Healthcheck"]["Test"] == ["CMD", "python", "-m", "shared.healthcheck"]
    env = dict(item.split("=", 1) for item in config["Env"])
    for key, value in {
        "INSTANCES_DIR": "/app/instances",
        "DATA_DIR": "/app/data",
        "HUB_RUN_DIR": "/tmp/sensor-hub",
        "INSTANCE_NAME": "demo",
        "MQTT_HOST": "mosquitto",
        "PYTHONUNBUFFERED": "1",
    }.items():
        assert env.get(key) == value, key


def test_image_has_no_build_tools(image: str, podman_env: dict[str, str]) -> None:
    probe = "for t in gcc cc c++ g++ make ld as; do command -v $t || true; done"
    found = podman(podman_env, "run", "--rm", "--network=none", "--entrypoint", "sh", image, "-c", probe)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == []


def test_status_is_retained_online(hub: Hub) -> None:
    sub = hub.subscribe(f"{hub.topic}/status")
    try:
        message = sub.wait_for(
            lambda m: m.payload == b"online" and m.retain,
            timeout=STARTUP_S,
            what=f"retained 'online' on {hub.topic}/status",
            context=hub.logs,
        )
    finally:
        sub.close()
    assert message.topic == f"{hub.topic}/status"


def test_every_configured_device_has_a_retained_state(hub: Hub) -> None:
    sub = hub.subscribe(f"{hub.topic}/devices/+/state")

    def state_of(device: str) -> Callable[[Message], bool]:
        return lambda m: (
            m.topic == f"{hub.topic}/devices/{device}/state"
            and m.retain
            and m.json().get("device_id") == device
        )

    try:
        for device in hub.devices:
            message = sub.wait_for(
                state_of(device),
                timeout=STARTUP_S,
                what=f"a retained state of {device}",
                context=hub.logs,
            )
            assert "timestamp" in message.json()
    finally:
        sub.close()


def supervisor_status(hub: Hub) -> dict[str, str]:
    status = podman(hub.env, "exec", hub.name, "supervisorctl", "status")
    states = {}
    for line in status.stdout.splitlines():
        words = line.split()
        if len(words) >= 2:
            states[words[0].rpartition(":")[2]] = words[1]
    return states


def test_supervisorctl_shows_five_programs_running(hub: Hub) -> None:
    states = wait_until(
        lambda: (s := supervisor_status(hub)) and set(s.values()) == {"RUNNING"} and s,
        timeout=STARTUP_S,
        what="five RUNNING programs in `supervisorctl status`",
        context=lambda: f"last: {supervisor_status(hub)}\n{hub.logs()}",
    )
    assert set(states) == PROGRAMS


def test_a_probe_reading_on_the_lan_port_becomes_a_retained_state(hub: Hub) -> None:
    """The web program serves the LAN port inside the image; its reading reaches MQTT."""
    sub = hub.subscribe(f"{hub.topic}/devices/probe_container/state")
    url = f"http://127.0.0.1:{hub.lan_port}/api/ingest"

    def posted() -> bool:
        token = hub.hub_token()
        if token is None:
            return False  # the web program has not made it yet
        try:
            answer = requests.post(url, json={"probe_id": "probe_container", "temperature_c": 20.5},
                                   timeout=5, headers={"X-Token": token})
        except requests.RequestException:
            return False
        return answer.status_code == 200

    try:
        wait_until(posted, timeout=STARTUP_S, what="the web program to take a probe reading",
                   context=hub.logs)
        message = sub.wait_for(lambda m: m.retain and m.json().get("temperature_c") == 20.5,
                               timeout=30, what="the probe's retained state", context=hub.logs)
    finally:
        sub.close()
    assert message.json()["device_id"] == "probe_container"


def test_runs_as_hub_on_a_read_only_root_filesystem(hub: Hub) -> None:
    wait_until(lambda: set(supervisor_status(hub).values()) == {"RUNNING"}, timeout=STARTUP_S,
               what="every program RUNNING", context=hub.logs)
    inspected = podman(hub.env, "inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", hub.name)
    assert inspected.stdout.strip() == "true"
    who = podman(hub.env, "exec", hub.name, "id", "-u")
    assert who.stdout.strip() == "10001"
    for place in ("/app/x", "/opt/venv/x", "/etc/x", "/var/tmp/x"):
        wrote = podman(hub.env, "exec", hub.name, "touch", place)
        assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr, (place, wrote)
    # HUB_RUN_DIR on the tmpfs: private to hub, holding the socket and the internal secret
    listed = podman(hub.env, "exec", hub.name, "stat", "-c", "%a %U %n", "/tmp/sensor-hub",
                    "/tmp/sensor-hub/internal.secret", "/tmp/sensor-hub/supervisor.sock")
    assert listed.stdout.split("\n")[:2] == ["700 hub /tmp/sensor-hub",
                                              "600 hub /tmp/sensor-hub/internal.secret"], listed


def test_the_internal_rest_answers_with_the_secret_only(hub: Hub) -> None:
    asked = podman(hub.env, "exec", hub.name, "python", "-m", "shared.internal", "request",
                   "aggregator", "/health")
    assert asked.returncode == 0, asked.stderr + hub.logs()
    assert json.loads(asked.stdout)["status"] in ("ok", "degraded"), asked.stdout
    # Without the secret, from inside (from the host the port is not reachable at all).
    bare = ("import urllib.error, urllib.request\n"
            "try:\n"
            f"    urllib.request.urlopen('http://127.0.0.1:{STATE_AGGREGATOR.port}/devices', timeout=5)\n"
            "except urllib.error.HTTPError as exc:\n"
            "    print(exc.code)\n")
    answer = podman(hub.env, "exec", hub.name, "python", "-c", bare)
    assert answer.stdout.strip() == "401", answer.stdout + answer.stderr


def test_the_programs_listen_on_their_own_ports_while_the_hosts_are_held(hub: Hub) -> None:
    """The CI failure cannot happen: the host's 127.0.0.1 at the internal ports (and the LAN
    port) is held by this test or another program for the whole run, and the programs listen on
    those same ports in the container's namespace."""
    for port in [*INTERNAL_PORTS, LAN_PORT]:
        assert not can_bind("127.0.0.1", port), f"the host's {port} should be held"
    wait_until(lambda: set(supervisor_status(hub).values()) == {"RUNNING"}, timeout=STARTUP_S,
               what="every program RUNNING", context=hub.logs)
    probe = ("import socket\n"
             f"for port in {[*INTERNAL_PORTS, LAN_PORT]}:\n"
             "    socket.create_connection(('127.0.0.1', port), timeout=5).close()\n"
             "print('listening')\n")
    inside = podman(hub.env, "exec", hub.name, "python", "-c", probe)
    assert inside.stdout.strip() == "listening", inside.stdout + inside.stderr + hub.logs()
    # Nothing the hub started was given another port: none of them is set.
    env = podman(hub.env, "exec", hub.name, "printenv").stdout
    assert "SERIAL_HANDLER_PORT" not in env and "STATE_AGGREGATOR_PORT" not in env, env


def test_healthcheck_passes(hub: Hub) -> None:
    def healthy() -> bool:
        return podman(hub.env, "healthcheck", "run", hub.name).returncode == 0

    wait_until(
        healthy,
        timeout=STARTUP_S,
        interval=1.0,
        what="`podman healthcheck run` to pass",
        context=lambda: (
            podman(hub.env, "exec", hub.name, "python", "-m", "shared.healthcheck").stdout + hub.logs()
        ),
    )
    state = podman(hub.env, "inspect", "--format", "{{.State.Health.Status}}", hub.name)
    assert state.stdout.strip() == "healthy"


def test_stop_publishes_retained_offline(hub: Hub) -> None:
    live = hub.subscribe(f"{hub.topic}/status")
    try:
        live.wait_for(lambda m: m.payload == b"online", timeout=STARTUP_S, what="'online' first")
        stopped = podman(hub.env, "stop", "--time", "30", hub.name, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        # A graceful stop: supervisord exited 0 on the SIGTERM, not killed when the 30 s ran
        # out (how long it takes is a bench figure: the start-up section's "graceful stop").
        code = podman(hub.env, "inspect", "--format", "{{.State.ExitCode}}", hub.name)
        assert code.stdout.strip() == "0", code.stdout + hub.logs()
        live.wait_for(
            lambda m: m.payload == b"offline" and m.retain,
            timeout=30,
            what=f"retained 'offline' on {hub.topic}/status after podman stop",
            context=hub.logs,
        )
    finally:
        live.close()
    # What a client connecting now is told: the broker keeps 'offline'.
    late = hub.subscribe(f"{hub.topic}/status")
    try:
        late.wait_for(
            lambda m: m.retain and m.payload == b"offline",
            timeout=10,
            what="the broker's retained status to be 'offline'",
        )
    finally:
        late.close()


def test_a_configuration_error_stops_the_container_before_supervisord(
    image: str, podman_env: dict[str, str], repo: Path
) -> None:
    """The entrypoint runs the programs' own check first: demo.json mounted as mine.json keeps
    instance_id 'demo', which instance 'mine' refuses."""
    ran = podman(
        podman_env, "run", "--rm", "--network=none", "--env", "INSTANCE_NAME=mine",
        "--volume", f"{repo / 'instances' / 'demo.json'}:/app/instances/mine.json:ro", image,
    )
    output = ran.stdout + ran.stderr
    assert ran.returncode != 0, output
    assert output.count("instance_id: is 'demo' but INSTANCE_NAME is 'mine'") == 1, output
    assert "supervisord started" not in output, output
