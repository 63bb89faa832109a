"""Topics are built and parsed in one module; ids are checked at the boundary."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import TopicError
from shared.topics import Route, Topics, check_publish_topic, validate_id

ids = st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")
bad_ids = st.text(min_size=0, max_size=80).filter(lambda s: not _ok(s))


def _ok(value: str) -> bool:
    try:
        validate_id(value)
    except TopicError:
        return False
    return True


T = Topics("IoT2mqtt", "demo")


@given(device=ids)
def test_device_topics_round_trip(device: str) -> None:
    assert T.parse(T.cmd(device)) == Route("cmd", device)
    assert T.parse(T.get(device)) == Route("get", device)
    assert T.state(device) == f"IoT2mqtt/v1/instances/demo/devices/{device}/state"


@given(group=ids)
def test_group_topics_round_trip(group: str) -> None:
    assert T.parse(T.group_cmd(group)) == Route("group_cmd", group)


@given(value=bad_ids)
def test_bad_ids_are_rejected_with_the_value(value: str) -> None:
    with pytest.raises(TopicError, match="invalid device_id"):
        T.state(value)


@pytest.mark.parametrize("topic", [
    "IoT2mqtt/v1/instances/demo/devices/a/state",       # outgoing, not served
    "IoT2mqtt/v1/instances/other/devices/a/cmd",        # another instance
    "IoT2mqtt/v1/instances/demo/devices/a/cmd/response",
    "elsewhere/devices/a/cmd",
])
def test_topics_the_bridge_does_not_serve_parse_to_none(topic: str) -> None:
    assert T.parse(topic) is None


def test_a_served_shape_with_a_bad_id_is_an_error() -> None:
    with pytest.raises(TopicError, match="invalid device_id 'a b'"):
        T.parse("IoT2mqtt/v1/instances/demo/devices/a b/cmd")


@pytest.mark.parametrize("topic", ["a/+/b", "a/#", "#"])
def test_publishing_to_a_wildcard_is_refused(topic: str) -> None:
    with pytest.raises(TopicError, match="wildcard"):
        check_publish_topic(topic)


@pytest.mark.parametrize("base", ["", "/lead", "trail/", "wild/+", "all/#"])
def test_bad_base_topics_are_refused(base: str) -> None:
    with pytest.raises(TopicError):
        Topics(base, "demo")


def test_subscriptions_cover_what_parse_serves() -> None:
    assert T.subscriptions() == [
        "IoT2mqtt/v1/instances/demo/devices/+/cmd",
        "IoT2mqtt/v1/instances/demo/devices/+/get",
        "IoT2mqtt/v1/instances/demo/groups/+/cmd",
        "IoT2mqtt/v1/instances/demo/meta/request/+",
    ]
