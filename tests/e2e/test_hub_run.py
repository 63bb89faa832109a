"""The README's run command itself, as a user meets it: ``./hub run`` with no MQTT_HOST starts an
embedded mosquitto and the demo, and data flows. Its output stays whole when it goes to a file;
SIGTERM to the script and Ctrl-C (SIGINT to the process group) both stop supervisord first, so
the bridge says ``offline``, and the embedded broker last; the ``./hub ctl`` line it prints works
as printed; a configuration error stops it before anything starts; and the script takes no code
from its arguments or environment."""

from __future__ import annotations

import configparser
import json
import os
import re
import signal
import stat
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from shared.processes import PROCESS_NAMES
from tests.conftest import ROOT
from tests.helpers import Subscriber, free_port, port_open, wait_for

pytestmark = pytest.mark.e2e

HUB = str(ROOT / "hub")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
DEMO_DEVICES = ("temp_living_room", "temp_bedroom", "heater_relay")


def conf_programs() -> list[str]:
    """The programs supervisord.conf runs, each one that shared/processes.py names."""
    parser = configparser.RawConfigParser()
    parser.read(ROOT / "supervisord.conf")
    names = [s.partition(":")[2] for s in parser.sections() if s.startswith("program:")]
    assert set(names) <= set(PROCESS_NAMES), names
    return names


def hub_env(tmp_path: Path) -> dict[str, str]:
    """A user's environment with every port moved to a free one (other instances run here)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MQTT_", "HUB_", "INSTANCE"))
           and k not in ("DATA_DIR", "PORT", "SERVER_TOKEN")}
    env.update({
        "MQTT_PORT": str(free_port()), "MQTT_BASE_TOPIC": f"hubrun{free_port()}",
        "HUB_RUN_DIR": str(tmp_path / "run"), "DATA_DIR": str(tmp_path / "data"),
        "SERIAL_HANDLER_PORT": str(free_port()), "HTTP_POLLER_PORT": str(free_port()),
        "STATE_AGGREGATOR_PORT": str(free_port()), "PORT": str(free_port()),
        "HOST": "127.0.0.1", "DEMO_SENSORS_PORT": str(free_port()), "PROBE_DISCOVERY": "false",
    })
    return env


@dataclass
class HubRun:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    out: Path

    @property
    def mqtt_port(self) -> int:
        return int(self.env["MQTT_PORT"])

    @property
    def root(self) -> str:
        return f"{self.env['MQTT_BASE_TOPIC']}/v1/instances/demo"

    def output(self) -> str:
        return ANSI.sub("", self.out.read_text(errors="replace"))

    def wait_online(self) -> Subscriber:
        """A subscriber to everything of the instance, once it is online with every demo device."""
        try:
            # Generous: a first run after pyproject.toml changed installs the package first.
            wait_for(lambda: port_open("127.0.0.1", self.mqtt_port), timeout=180,
                     what="the embedded mosquitto")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.output()[-4000:]}") from None
        sub = Subscriber("127.0.0.1", self.mqtt_port).subscribe(f"{self.env['MQTT_BASE_TOPIC']}/#")
        try:
            sub.wait(f"{self.root}/status", where=lambda m: m.text == "online", timeout=60)
            for device in DEMO_DEVICES:
                sub.wait(f"{self.root}/devices/{device}/state", timeout=30)
        except AssertionError as exc:
            sub.close()
            raise AssertionError(f"{exc}\n{self.output()[-4000:]}") from None
        return sub

    def stop(self) -> None:
        """SIGTERM to the script alone, as a service manager sends it; SIGKILL to the whole group
        only when that fails."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def start_hub(tmp_path: Path, env: dict[str, str], *args: str) -> HubRun:
    out = tmp_path / "hub-run.out"
    # Opened as the shell's `>` opens it: truncated, not for appending.
    with out.open("wb") as sink:
        proc = subprocess.Popen([HUB, "run", *args], env=env, cwd=ROOT, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return HubRun(proc, env, out)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubRun]:
    tmp = tmp_path_factory.mktemp("hubrun")
    hub = start_hub(tmp, hub_env(tmp))
    try:
        hub.wait_online().close()
        yield hub
    finally:
        hub.stop()


def pasted_env(env: dict[str, str]) -> dict[str, str]:
    """A fresh terminal: none of the instance's variables set."""
    return {k: v for k, v in env.items()
            if not k.startswith(("HUB_", "INSTANCE", "MQTT_")) and not k.endswith("_PORT")}


def test_the_ctl_line_it_prints_works_as_printed(demo: HubRun) -> None:
    lines = wait_for(lambda: [ln for ln in demo.output().splitlines() if "./hub ctl" in ln],
                     what="the ./hub ctl line in the output")
    printed = lines[0].split("[hub]", 1)[1].strip()
    assert printed.endswith("./hub ctl demo status"), printed

    def statuses() -> dict[str, str]:
        done = subprocess.run(["bash", "-c", printed], env=pasted_env(demo.env), cwd=ROOT,
                              capture_output=True, text=True, timeout=60, check=False)
        return {words[0]: words[1] for words in map(str.split, done.stdout.splitlines())
                if len(words) > 1}

    programs = conf_programs()
    wait_for(lambda: (s := statuses()) and all(s.get(p) == "RUNNING" for p in programs) and s,
             timeout=30, what=f"{programs} RUNNING in `{printed}`")


def test_ctl_for_an_instance_that_is_not_running_says_so(tmp_path: Path) -> None:
    env = pasted_env(dict(os.environ)) | {"HUB_RUN_DIR": str(tmp_path)}
    done = subprocess.run([HUB, "ctl", "nosuch", "status"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "instance 'nosuch' is not running here" in done.stderr
    assert "./hub run nosuch" in done.stderr


def test_hub_curl_asks_an_internal_service_with_the_instance_secret(demo: HubRun) -> None:
    run_dir = Path(demo.env["HUB_RUN_DIR"])
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((run_dir / "internal.secret").stat().st_mode) == 0o600

    def curl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([HUB, "curl", *args], env=demo.env, cwd=ROOT, capture_output=True,
                              text=True, timeout=60, check=False)

    devices = curl("aggregator", "/devices")
    assert devices.returncode == 0, devices.stderr
    found = {d["device_id"] for d in json.loads(devices.stdout)["devices"]}
    assert set(DEMO_DEVICES) <= found, found
    sensors = curl("demo", "serial", "/sensors")  # the instance named, as for ./hub ctl
    assert sensors.returncode == 0 and "temp_living_room" in sensors.stdout, sensors.stderr
    missing = curl("aggregator", "/device/nosuch")
    assert missing.returncode == 1 and '"unknown_device"' in missing.stdout, missing
    # Without the secret, the same service refuses.
    port = demo.env["STATE_AGGREGATOR_PORT"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/devices", timeout=10)
    assert refused.value.code == 401


def test_hub_curl_for_an_instance_that_is_not_running_says_so(tmp_path: Path) -> None:
    env = pasted_env(dict(os.environ)) | {"HUB_RUN_DIR": str(tmp_path)}
    done = subprocess.run([HUB, "curl", "nosuch", "aggregator", "/devices"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "instance 'nosuch' is not running here" in done.stderr


def test_readme_poking_it_works_as_printed(demo: HubRun, tmp_path: Path) -> None:
    """The README's "Poking it" blocks, run by bash as a user pastes them: the subscriber first
    (in the second terminal), the commands once it is subscribed. Only what locates this test's
    instance differs: mosquitto_sub and mosquitto_pub read its port from their options files,
    and ``B`` carries its base topic."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Poking it", 1)[1].split("\n## ", 1)[0]
    watch, commands = (block.split("```", 1)[0] for block in section.split("```sh\n")[1:3])
    for block in (watch, commands):
        assert block.startswith("B=IoT2mqtt/v1/instances/demo\n"), block
    base = f"B={demo.env['MQTT_BASE_TOPIC']}/"
    config = tmp_path / "config"
    config.mkdir()
    for client in ("mosquitto_sub", "mosquitto_pub"):
        (config / client).write_text(f"-p {demo.mqtt_port}\n")
    env = pasted_env(demo.env) | {"XDG_CONFIG_HOME": str(config)}
    out = tmp_path / "subscriber.out"
    root = demo.root

    def answered(*needles: str) -> bool:
        return any(all(n in line for n in needles) for line in out.read_text().splitlines())

    with out.open("wb") as sink:
        subscriber = subprocess.Popen(["bash", "-c", watch.replace("B=IoT2mqtt/", base, 1)],
                                      cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                      start_new_session=True)
    try:
        # Subscribed once the retained health arrives.
        wait_for(lambda: answered(f"{root}/meta/health "), timeout=30,
                 what=f"the subscriber to start:\n{out.read_text()}")
        done = subprocess.run(["bash", "-c", commands.replace("B=IoT2mqtt/", base, 1)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        for needles in [(f"{root}/devices/heater_relay/cmd/response ", '"c1"', '"success"'),
                        (f"{root}/devices/temp_living_room/cmd/response ", '"c2"', '"rejected"'),
                        (f"{root}/meta/devices_list ", '"r1"')]:
            wait_for(partial(answered, *needles), timeout=30,
                     what=f"{needles} in the subscriber's output:\n{out.read_text()}")
        # The demo injects read failures: a get answers with a state or an error.
        wait_for(lambda: answered(f"{root}/devices/temp_bedroom/state ")
                 or answered(f"{root}/devices/temp_bedroom/error "), timeout=30,
                 what=f"temp_bedroom's answer to get:\n{out.read_text()}")
    finally:
        os.killpg(subscriber.pid, signal.SIGTERM)
        subscriber.wait(10)


def test_the_generated_hub_token_is_printed_once_where_it_is_kept(demo: HubRun) -> None:
    """SERVER_TOKEN unset: the hub makes one, keeps it under DATA_DIR and says so, with the
    token, in one line of the ./hub run output."""
    assert "SERVER_TOKEN" not in demo.env
    path = Path(demo.env["DATA_DIR"]) / "server_token"
    token = wait_for(lambda: path.exists() and path.read_text().strip(), timeout=60,
                     what=f"the generated token in {path}")
    said = wait_for(lambda: [ln for ln in demo.output().splitlines() if token in ln],
                    timeout=30, what="the token in the ./hub run output")
    assert len(said) == 1 and str(path) in said[0] and "SERVER_TOKEN was not set" in said[0]


def test_sigterm_stops_supervisord_first_and_the_file_output_stays_whole(demo: HubRun) -> None:
    sub = Subscriber("127.0.0.1", demo.mqtt_port).subscribe(f"{demo.root}/status")
    pid_file = Path(demo.env["HUB_RUN_DIR"]) / "supervisord.pid"
    supervisord = int(pid_file.read_text())
    sub.wait(f"{demo.root}/status", where=lambda m: m.text == "online", timeout=10)
    demo.proc.send_signal(signal.SIGTERM)  # the script alone, not its process group
    # "offline" can only reach a subscriber while the broker still runs: the broker went last.
    sub.wait(f"{demo.root}/status", where=lambda m: m.text == "offline", timeout=30)
    assert demo.proc.wait(30) == 0, demo.output()[-4000:]
    sub.close()
    # Nothing left behind: the broker and supervisord are gone when the script has exited.
    assert not port_open("127.0.0.1", demo.mqtt_port)
    with pytest.raises(ProcessLookupError):
        os.kill(supervisord, 0)

    # Every line whole: each supervisord and program line is where it was written, none
    # overwritten by another writer of the same file.
    text = demo.output()
    lines = text.splitlines()
    for program in conf_programs():
        assert f"spawned: '{program}'" in text
        assert f"stopped: {program} (exit status 0)" in text
    # What the programs that log at INFO always say at start (web and http-poller say nothing).
    for said in ("[state-aggregator] services.state_aggregator.core: registered system device",
                 "[serial-handler] services.serial_handler.ports: opened sim://heater",
                 "[mqtt-bridge] shared.mqtt: connected to mqtt://"):
        assert said in text, said
    assert "received SIGTERM indicating exit request" in text
    assert "connector.bridge: stopping: publishing offline" in text
    for line in lines:
        stamps = TIMESTAMP.findall(line)
        assert len(stamps) <= 1 and (not stamps or TIMESTAMP.match(line)), f"broken line: {line!r}"


def test_ctrl_c_stops_the_bridge_before_the_embedded_broker(tmp_path: Path) -> None:
    hub = start_hub(tmp_path, hub_env(tmp_path))
    try:
        sub = hub.wait_online()
        os.killpg(hub.proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            sub.wait(f"{hub.root}/status", where=lambda m: m.text == "offline", timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{hub.output()[-4000:]}") from None
        assert hub.proc.wait(30) == 0, hub.output()[-4000:]
        assert not port_open("127.0.0.1", hub.mqtt_port)
        sub.close()
    finally:
        hub.stop()


def run_hub(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HUB, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


def test_a_copied_instance_file_stops_run_before_anything_starts(tmp_path: Path) -> None:
    instances = tmp_path / "instances"
    instances.mkdir()
    (instances / "mine.json").write_text((ROOT / "instances" / "demo.json").read_text())
    env = hub_env(tmp_path) | {"INSTANCES_DIR": str(instances)}
    done = run_hub("run", "mine", env=env)
    assert done.returncode == 2
    message = "instance_id: is 'demo' but INSTANCE_NAME is 'mine'"
    assert done.stderr.count(message) == 1, done.stderr
    assert "instance 'mine' not started" in done.stderr
    assert not Path(env["HUB_RUN_DIR"]).exists()  # no supervisord, no broker
    assert not port_open("127.0.0.1", int(env["MQTT_PORT"]))


@pytest.mark.parametrize("variable", ["MQTT_PORT", "DEMO_SENSORS_PORT"])
def test_a_crafted_port_runs_no_code(tmp_path: Path, variable: str) -> None:
    marker = tmp_path / "injected"
    env = hub_env(tmp_path) | {
        variable: f"1883'));open('{marker}','w');print(('",
        "MQTT_BASE_TOPIC": "hubrun-injection",
    }
    done = run_hub("run", env=env)
    assert done.returncode == 2
    assert f"{variable} must be a port number" in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize(("args", "status"), [([], 2), (["nonsense"], 2), (["help"], 0)])
def test_usage_lists_every_command_and_nothing_else(args: list[str], status: int) -> None:
    done = run_hub(*args, env=dict(os.environ))
    assert done.returncode == status
    text = done.stdout + done.stderr
    for command in ("run [INSTANCE]", "ctl [INSTANCE]", "test ", "test-quick", "bench", "setup",
                    "help"):
        assert command in text
    assert "set -euo" not in text


def test_usage_and_readme_document_the_same_variables() -> None:
    script = (ROOT / "hub").read_text()
    read = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", script))
    read -= {"ROOT", "VENV", "PATH", "SECONDS", "APT_UPDATED", "SIDECARS", "SUPERVISORD",
             "SUPERVISORCTL_ACTIONS", "BASH_SOURCE"}  # the script's own, not the user's
    usage = run_hub("help", env=dict(os.environ)).stdout
    readme = (ROOT / "README.md").read_text()
    for variable in sorted(read):
        assert re.search(rf"^  {variable} ", usage, re.M), f"{variable} missing from ./hub help"
        assert f"`{variable}`" in readme, f"{variable} missing from README.md"
