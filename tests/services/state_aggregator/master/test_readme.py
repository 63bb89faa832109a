"""The README's "Master control" examples work as printed: its ``sh`` blocks run in bash against
the demo instance under the real supervisord (with ``MASTER_API_KEY=change-me``, as the README
says), only the broker's and the LAN port's addresses and ``DATA_DIR`` (where the generated hub
token is) pointed at the test's, and their effects are
checked on the real wire: the sensors exist, the template maps the reading into device state on
MQTT, the command is queued."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT
from tests.e2e.conftest import Instance, demo_instance
from tests.helpers import Broker, Subscriber, internal_headers, wait_for

pytestmark = pytest.mark.e2e
KEY = "change-me"  # what the README runs the hub with


def blocks() -> list[str]:
    """The ``sh`` blocks of the README's "Master control" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Master control\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def hub(mosquitto: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    with demo_instance(mosquitto, tmp_path_factory.mktemp("readme"), MASTER_API_KEY=KEY) as inst:
        yield inst


def run_block(block: str, hub: Instance, mosquitto: Broker, tmp: Path) -> str:
    """One block in bash as printed, but for the addresses: the demo's base topic and LAN port
    become the test instance's, and mosquitto's clients get the test broker's port."""
    script = block.replace("B=IoT2mqtt/v1/instances/demo", f"B={hub.root_topic}")
    script = script.replace("http://127.0.0.1:8088", f"http://127.0.0.1:{hub.env['PORT']}")
    script = script.replace("data/demo/", f"{hub.env['DATA_DIR']}/")  # ./hub run's DATA_DIR
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        real = shutil.which(tool)
        assert real is not None, f"{tool} is not installed (./hub setup installs it)"
        wrapper = bin_dir / tool
        wrapper.write_text(f'#!/bin/sh\nexec {real} -p {mosquitto.port} "$@"\n')
        wrapper.chmod(0o755)
    real_curl = shutil.which("curl")
    assert real_curl is not None
    curl = bin_dir / "curl"  # a 4xx or 5xx answer fails the block
    curl.write_text(f'#!/bin/sh\nexec {real_curl} --fail-with-body --max-time 20 "$@"\n')
    curl.chmod(0o755)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script + "\nkill $(jobs -p) 2>/dev/null || true\n"],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=120,
        check=False)
    assert done.returncode == 0, f"the block failed:\n{script}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_readme_examples_work_as_printed(hub: Instance, mosquitto: Broker,
                                             tmp_path: Path) -> None:
    mqtt_block, http_block = blocks()
    assert "B=IoT2mqtt/v1/instances/demo" in mqtt_block
    assert "M=http://127.0.0.1:8088/api/sensor-master" in http_block
    assert "data/demo/server_token" in http_block  # the hub token ./hub run generates
    internal = f"http://127.0.0.1:{hub.env['STATE_AGGREGATOR_PORT']}/master"
    secret = internal_headers(hub.env)
    sub = Subscriber(mosquitto.host, mosquitto.port).subscribe(f"{hub.root_topic}/#")
    try:
        # HTTP first: its template maps the MQTT sensor's reading too (same sensor type)
        out = run_block(http_block, hub, mosquitto, tmp_path)
        assert '"status":"registered"' in out.replace(" ", "")
        assert "HTTP/1.1 200" in out  # the config fetch, printed with -i
        sensor = requests.get(f"{internal}/sensors/esp32_001", headers=secret, timeout=10).json()
        assert (sensor["sensor_name"], sensor["status"]) == ("Chamber 1", "online")
        commands = requests.get(f"{internal}/commands", params={"sensor_id": "esp32_001"},
                                headers=secret, timeout=10).json()["commands"]
        assert [c["command_type"] for c in commands] == ["set_target_temp"]
        state = sub.wait(f"{hub.root_topic}/devices/esp32_001/state",
                         where=lambda m: "temperature" in m.json()).json()
        assert state["temperature"] == 18.9  # "sensor.temperature" mapped to "Temperature"

        run_block(mqtt_block, hub, mosquitto, tmp_path)
        config = sub.wait(f"{hub.root_topic}/sensors/esp32_002/config").json()
        assert config["config_name"] == "Default ESP32"
        state = sub.wait(f"{hub.root_topic}/devices/esp32_002/state",
                         where=lambda m: "temperature" in m.json()).json()
        assert state["temperature"] == 19.2
        wait_for(lambda: requests.get(f"{internal}/sensors/esp32_002", headers=secret, timeout=10)
                 .json().get("status") == "online", what="esp32_002 online")
    finally:
        sub.close()
