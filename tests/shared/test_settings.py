"""Settings from the environment: defaults, and clear errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.settings import load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MQTT_BASE_TOPIC", "MQTT_QOS", "UPDATE_INTERVAL", "CACHE_TTL", "INSTANCE_NAME",
                "STATE_AGGREGATOR_PORT", "STATE_AGGREGATOR_URL", "LOG_LEVEL", "MODE"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert (s.mqtt_base_topic, s.mqtt_qos, s.mqtt_retain, s.mqtt_keepalive) == ("IoT2mqtt", 1, True, 60)
    assert s.state_aggregator == "http://127.0.0.1:5003"
    assert s.serial_handler == "http://127.0.0.1:5001"
    assert s.http_poller == "http://127.0.0.1:5002"
    assert s.effective_log_level == "INFO"
    assert s.update_interval is None and s.cache_ttl is None


def test_development_mode_logs_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODE", "development")
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    assert load_settings().effective_log_level == "DEBUG"


@pytest.mark.parametrize(("var", "value", "message"), [
    ("MQTT_PORT", "eighty", "MQTT_PORT: Input should be a valid integer"),
    ("MQTT_QOS", "3", "MQTT_QOS: Input should be 0, 1 or 2"),
    ("INSTANCE_NAME", "my instance", "invalid INSTANCE_NAME 'my instance'"),
    ("MQTT_BASE_TOPIC", "a/#", "invalid MQTT base topic"),
    ("UPDATE_INTERVAL", "0", "UPDATE_INTERVAL: Input should be greater than 0"),
])
def test_bad_variables_are_named(monkeypatch: pytest.MonkeyPatch, var: str, value: str,
                                 message: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match="invalid environment") as err:
        load_settings()
    assert message in str(err.value)


TLS_VARS = ("MQTT_TLS", "MQTT_CA_FILE", "MQTT_CERT_FILE", "MQTT_KEY_FILE", "MQTT_TLS_INSECURE",
            "MQTT_PORT")


@pytest.mark.parametrize(("env", "message"), [
    ({"MQTT_CA_FILE": "{ca}"}, "MQTT_CA_FILE given but MQTT_TLS is not true"),
    ({"MQTT_TLS_INSECURE": "true"}, "MQTT_TLS_INSECURE given but MQTT_TLS is not true"),
    ({"MQTT_TLS": "true", "MQTT_CA_FILE": "{tmp}/nope.crt"},
     "MQTT_CA_FILE: {tmp}/nope.crt is not a file"),
    ({"MQTT_TLS": "true", "MQTT_KEY_FILE": "{ca}"}, "MQTT_KEY_FILE given without MQTT_CERT_FILE"),
    ({"MQTT_TLS": "yes please"}, "MQTT_TLS: Input should be a valid boolean, unable to interpret input"),
])
def test_tls_settings_that_would_not_do_what_they_say_stop_the_start(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str],
        message: str) -> None:
    (tmp_path / "ca.crt").write_text("not checked here, only that it is a file")
    for var in TLS_VARS:
        monkeypatch.delenv(var, raising=False)
    fill = {"ca": str(tmp_path / "ca.crt"), "tmp": str(tmp_path)}
    for var, value in env.items():
        monkeypatch.setenv(var, value.format(**fill))
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value) == f"invalid environment: {message.format(**fill)}"


def test_tls_picks_the_tls_port_unless_mqtt_port_says_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for var in TLS_VARS:
        monkeypatch.delenv(var, raising=False)
    assert load_settings().broker_port == 1883
    monkeypatch.setenv("MQTT_TLS", "true")
    assert load_settings().broker_port == 8883
    monkeypatch.setenv("MQTT_PORT", "18883")
    assert load_settings().broker_port == 18883
