"""The Dockerfile and the compose file, checked without running a container: hadolint at error
level, `docker-compose config -q`, and what the compose file promises per instance."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TO_JSON = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


def test_hadolint_passes_at_error_level(tool: Callable[[str], str], repo: Path) -> None:
    result = run([tool("hadolint"), "--failure-threshold", "error", "Dockerfile"], repo)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_is_valid(tool: Callable[[str], str], repo: Path) -> None:
    result = run([tool("docker-compose"), "config", "-q"], repo)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def compose(tool: Callable[[str], str], repo: Path) -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors merged, paths absolute)."""
    compose_bin = tool("docker-compose")
    resolved = run([compose_bin, "config"], repo)
    assert resolved.returncode == 0, resolved.stderr
    # docker-compose's own interpreter always has PyYAML (a dependency of the Debian package);
    # the project venv need not.
    interpreter = Path(compose_bin).read_text(errors="replace").splitlines()[0].removeprefix("#!")
    as_json = subprocess.run(
        [*interpreter.split(), "-c", TO_JSON],
        input=resolved.stdout,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(as_json.stdout))


def hub_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run an instance (the image, with an INSTANCE_NAME)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image", "").startswith("sensor-hub")
        and "INSTANCE_NAME" in service.get("environment", {})
    }


def test_compose_helpers_do_not_inherit_the_instance_healthcheck(compose: dict[str, Any]) -> None:
    """Another container from the image (the demo endpoint) runs no supervisord, so the image's
    HEALTHCHECK would call it unhealthy for ever."""
    hubs = hub_services(compose)
    for name, service in compose["services"].items():
        if service.get("image", "").startswith("sensor-hub") and name not in hubs:
            assert "shared.healthcheck" not in str(service.get("healthcheck", {})), name
            assert service.get("healthcheck", {}).get("test"), f"{name} needs its own healthcheck"


def test_compose_has_a_broker_with_healthcheck_and_restart(compose: dict[str, Any]) -> None:
    broker = compose["services"]["mosquitto"]
    assert broker["image"].startswith("eclipse-mosquitto")
    assert broker["healthcheck"]["test"]
    assert broker["restart"] in {"always", "unless-stopped"}
    config = [v for v in broker["volumes"] if v.endswith("/mosquitto/config/mosquitto.conf:ro")]
    assert config, broker["volumes"]
    assert Path(config[0].split(":")[0]).is_file()


def test_compose_runs_two_or_more_distinct_instances(compose: dict[str, Any], repo: Path) -> None:
    hubs = hub_services(compose)
    assert len(hubs) >= 2, sorted(compose["services"])
    names = [hub["environment"]["INSTANCE_NAME"] for hub in hubs.values()]
    assert len(set(names)) == len(names), names
    data_volumes = []
    for service, hub in hubs.items():
        name = hub["environment"]["INSTANCE_NAME"]
        volumes = hub["volumes"]
        instance_file = f"{repo}/instances/{name}.json:/app/instances/{name}.json:ro"
        assert instance_file in volumes, f"{service} must mount its instance file read-only"
        assert (repo / "instances" / f"{name}.json").is_file(), f"instances/{name}.json missing"
        data = [v.split(":")[0] for v in volumes if v.split(":")[1] == "/app/data"]
        assert data and data[0] in compose["volumes"], f"{service} needs a named data volume"
        data_volumes.append(data[0])
        assert hub["environment"]["MQTT_HOST"] == "mosquitto"
        assert hub["depends_on"]["mosquitto"]["condition"] == "service_healthy"
        assert "shared.healthcheck" in hub["healthcheck"]["test"]
        assert hub["restart"] in {"always", "unless-stopped"}
        # not root (the image's USER), and nothing written outside the data volume and /tmp
        assert "user" not in hub, f"{service} must run as the image's user hub"
        assert hub["read_only"] is True, f"{service} needs a read-only root filesystem"
        assert "/tmp" in hub["tmpfs"], f"{service} needs a tmpfs on /tmp (its HUB_RUN_DIR)"
    assert len(set(data_volumes)) == len(data_volumes), data_volumes
