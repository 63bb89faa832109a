"""The instance file: a broken one is refused with the file, the field and the problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.errors import ConfigError
from shared.instance import json_schema, load_instance
from tests.conftest import ROOT


def _write(tmp_path: Path, data: Any, name: str = "demo") -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _demo() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "instances" / "demo.json").read_text())
    return data


@pytest.mark.parametrize("name", ["demo", "lab"])
def test_shipped_instances_are_valid(name: str) -> None:
    instance = load_instance(ROOT / "instances" / f"{name}.json", expected_id=name)
    assert instance.connector_type == "sensor-hub"


def test_committed_schema_is_the_generated_one() -> None:
    committed = json.loads((ROOT / "instances" / "instance.schema.json").read_text())
    assert committed == json_schema(), "regenerate: python -m shared.instance --schema"


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d["config"]["sensors"][0].__setitem__("sensor_id", "bad id"),
     "config.sensors.0.sensor_id: String should match pattern"),
    (lambda d: d["config"]["sensors"][0].__setitem__("sensr_type", "x"),
     "config.sensors.0.sensr_type: Extra inputs are not permitted"),
    (lambda d: d["config"]["sensors"][0]["source"].__setitem__("type", "carrier-pigeon"),
     "config.sensors.0.source: Input tag 'carrier-pigeon' found using 'type' does not match"),
    (lambda d: d["config"]["sensors"][1].__setitem__("sensor_id", "temp_living_room"),
     "sensor_id 'temp_living_room' is used twice"),
    (lambda d: d["groups"][0]["devices"].append("ghost"),
     "group 'climate' names unknown devices ['ghost']"),
    (lambda d: d.pop("instance_id"), "instance_id: Field required"),
    (lambda d: d.__setitem__("update_interval", -1), "update_interval: Input should be greater than 0"),
])
def test_broken_files_name_the_file_field_and_problem(tmp_path: Path, mutate: Any,
                                                      message: str) -> None:
    data = _demo()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_instance(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_sensors_sharing_a_port_must_agree(tmp_path: Path) -> None:
    data = _demo()
    shared_port = "sim://x?ids=temp_living_room,temp_bedroom"
    data["config"]["sensors"][0]["source"]["port"] = shared_port
    data["config"]["sensors"][1]["source"] |= {"port": shared_port, "baudrate": 9600}
    with pytest.raises(ConfigError, match=r"share port .* different settings"):
        load_instance(_write(tmp_path, data))


def test_variables_are_expanded_with_defaults(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_SENSORS_HOST", "demo-sensors")
    monkeypatch.delenv("DEMO_SENSORS_PORT", raising=False)
    instance = load_instance(ROOT / "instances" / "demo.json")
    urls = [s.source.url for s in instance.config.sensors if s.source.type == "http"]
    assert urls == ["http://demo-sensors:5010/motion"]


def test_an_unset_variable_without_default_names_it_and_the_field(tmp_path: Path) -> None:
    data = _demo()
    data["config"]["sensors"][3]["source"]["url"] = "http://${NO_SUCH_HOST_VAR}/x"
    expected = r"config\.sensors\.3\.source\.url: \$\{NO_SUCH_HOST_VAR\} is not set"
    with pytest.raises(ConfigError, match=expected):
        load_instance(_write(tmp_path, data))


def test_not_json_says_where(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not JSON: .* line 1 column 2"):
        load_instance(_write(tmp_path, "{oops"))


def test_instance_id_must_match_the_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="instance_id: is 'demo' but INSTANCE_NAME is 'lab' "
                                          "\\(the file of instance 'lab' needs \"instance_id\": \"lab\"\\)"):
        load_instance(_write(tmp_path, _demo()), expected_id="lab")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read instance file"):
        load_instance(tmp_path / "nope.json")


def test_a_process_started_with_a_broken_file_exits_with_the_reason(tmp_path: Path) -> None:
    data = _demo()
    data["config"]["cache_ttl"] = "soon"
    _write(tmp_path, data)
    env = {"INSTANCES_DIR": str(tmp_path), "INSTANCE_NAME": "demo", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "services.state_aggregator"], env=env,
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "config.cache_ttl: Input should be a valid number" in result.stderr
    assert str(tmp_path / "demo.json") in result.stderr


# --- the checker: python -m shared.instance ----------------------------------------------------
# It must refuse exactly what the programs refuse at start, so each case below runs both the
# checker and a real program on the same file and environment.


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("INSTANCE_NAME", "INSTANCES_DIR")
           and not k.startswith(("MQTT_", "DEMO_SENSORS"))}
    return env | extra


def _checker(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.instance", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def _program(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.state_aggregator"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def _mine(*, url: str | None = None) -> dict[str, Any]:
    """The demo file renamed mine.json with its instance_id fixed; ``url`` for the HTTP sensor."""
    data = _demo()
    data["instance_id"] = "mine"
    if url is not None:
        data["config"]["sensors"][3]["source"]["url"] = url
    return data


@pytest.mark.parametrize(("data", "extra_env", "message"), [
    # what `cp instances/demo.json instances/mine.json` leaves
    (_demo(), {}, "instance_id: is 'demo' but INSTANCE_NAME is 'mine'"),
    (_mine(url="http://${NO_SUCH_HOST_VAR}/x"), {},
     "${NO_SUCH_HOST_VAR} is not set and has no default"),
    (_mine(), {"MQTT_PORT": "1883x"}, "invalid environment: MQTT_PORT"),
], ids=["copied-file", "unset-variable", "bad-variable"])
def test_the_checker_refuses_what_the_programs_refuse(
        tmp_path: Path, data: dict[str, Any], extra_env: dict[str, str], message: str) -> None:
    path = _write(tmp_path, data, name="mine")
    env = _env(**extra_env)
    by_file = _checker(str(path), env=env)
    by_env = _checker(env=env | {"INSTANCES_DIR": str(tmp_path), "INSTANCE_NAME": "mine"})
    program = _program(env | {"INSTANCES_DIR": str(tmp_path), "INSTANCE_NAME": "mine"})
    assert program.returncode == 2, program.stderr
    for checked in (by_file, by_env):
        assert checked.returncode == 1, checked.stdout
        assert message in checked.stderr
        assert checked.stderr.strip() in program.stderr  # the same words as the program's


def test_the_checker_accepts_a_good_file_and_names_what_it_checked(tmp_path: Path) -> None:
    path = _write(tmp_path, _mine(), name="mine")
    checked = _checker(str(path), str(ROOT / "instances" / "lab.json"), env=_env())
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines() == [f"{path}: ok (instance 'mine', 4 sensors)",
                                           f"{ROOT / 'instances' / 'lab.json'}: ok "
                                           "(instance 'lab', 2 sensors)"]


def test_the_checker_without_files_checks_the_environments_instance(tmp_path: Path) -> None:
    checked = _checker(env=_env(INSTANCES_DIR=str(ROOT / "instances"), INSTANCE_NAME="lab"))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == f"{ROOT / 'instances' / 'lab.json'}: ok (instance 'lab', 2 sensors)"
