"""Topics are built and parsed in one module; ids are checked at the boundary."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from shared.errors import TopicError
from shared.topics import (
    ROUTE_KINDS,
    Route,
    RouteError,
    RouteKind,
    Topics,
    check_publish_topic,
    validate_id,
)

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


@given(kind=st.sampled_from(ROUTE_KINDS), target=ids)
def test_each_kind_has_one_filter_that_matches_exactly_its_topics(kind: RouteKind,
                                                                  target: str) -> None:
    topic = T.build(Route(kind, target))
    assert T.parse(topic) == Route(kind, target)
    matching = [k for k in ROUTE_KINDS if topic_matches_sub(T.filter(k), topic)]
    assert matching == [kind]


def test_subscriptions_are_the_filters_of_the_kinds_asked_for() -> None:
    assert T.subscriptions() == [T.filter(k) for k in ROUTE_KINDS]
    assert T.subscriptions(("cmd",)) == [T.filter("cmd")]
    assert all(f.startswith(T.root + "/") for f in T.subscriptions())


@pytest.mark.parametrize(("topic", "kind", "raw"), [
    ("IoT2mqtt/v1/instances/demo/devices/a b/cmd", "cmd", "a b"),
    ("IoT2mqtt/v1/instances/demo/devices/" + "x" * 65 + "/get", "get", "x" * 65),
    ("IoT2mqtt/v1/instances/demo/groups/g.1/cmd", "group_cmd", "g.1"),
    ("IoT2mqtt/v1/instances/demo/meta/request/who?", "meta_request", "who?"),
])
def test_a_bad_id_names_the_kind_of_topic_it_came_on(topic: str, kind: str, raw: str) -> None:
    with pytest.raises(RouteError) as caught:
        T.parse(topic)
    assert (caught.value.kind, caught.value.raw) == (kind, raw)


def test_meta_error_is_an_answer_topic_not_a_request() -> None:
    assert T.meta_error == "IoT2mqtt/v1/instances/demo/meta/error"
    assert T.parse(T.meta_error) is None
