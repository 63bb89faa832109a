"""HA_DISCOVERY_* settings and the discovery topics, built only in shared/topics.py."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError, TopicError
from shared.settings import Settings, load_settings
from shared.topics import DiscoveryTopics


def test_defaults_and_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert (settings.ha_discovery_prefix, settings.ha_discovery_mode) == ("homeassistant", "entity")
    monkeypatch.setenv("HA_DISCOVERY_MODE", "sometimes")
    with pytest.raises(ConfigError, match="HA_DISCOVERY_MODE"):
        load_settings()
    monkeypatch.setenv("HA_DISCOVERY_MODE", "device")
    monkeypatch.setenv("HA_DISCOVERY_PREFIX", "ha/#")
    with pytest.raises(ConfigError, match="HA_DISCOVERY_PREFIX"):
        load_settings()


@pytest.mark.parametrize(("component", "node", "obj"), [
    ("sensor", "demo_a", "bad/id"), ("sensor", "demo+", "t"), ("sens#or", "n", "t"),
])
def test_discovery_topics_refuse_bad_ids(component: str, node: str, obj: str) -> None:
    with pytest.raises(TopicError):
        DiscoveryTopics("homeassistant").entity(component, node, obj)


def test_discovery_topics() -> None:
    topics = DiscoveryTopics("home/ha")
    assert topics.status == "home/ha/status"
    assert topics.entity("sensor", "demo_t1", "temp") == "home/ha/sensor/demo_t1/temp/config"
    assert topics.device("demo_t1") == "home/ha/device/demo_t1/config"
    with pytest.raises(TopicError):
        DiscoveryTopics("/ha")


def test_home_assistant_status_is_a_route_outside_the_instance_root() -> None:
    from shared.topics import ROUTE_KINDS, Route, Topics

    topics = Topics("IoT2mqtt", "demo", ha_prefix="home/ha")
    assert topics.filter("ha_status") == "home/ha/status"
    assert topics.parse("home/ha/status") == Route("ha_status", "home/ha")
    assert topics.build(Route("ha_status", "home/ha")) == "home/ha/status"
    assert topics.parse("homeassistant/status") is None
    assert "ha_status" not in ROUTE_KINDS  # not one of the instance's own inbound kinds
