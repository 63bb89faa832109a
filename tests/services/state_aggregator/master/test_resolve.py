"""Master control's pure logic: which template wins, the hash, status and reading mappings."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.state_aggregator.master import resolve
from services.state_aggregator.master.resolve import Template


def tpl(id: int, *, priority: int = 100, active: bool = True, sensor: str | None = None,
        group: str | None = None, type_: str | None = None) -> Template:
    return Template(id=id, config_name=f"t{id}", config_data={"n": id}, priority=priority,
                    is_active=active, sensor_id=sensor, group=group, sensor_type=type_)


GROUPS = frozenset({"floor1"})


@pytest.mark.parametrize(("templates", "winner"), [
    ([], None),
    ([tpl(1, type_="esp32")], 1),
    ([tpl(1, type_="other")], None),
    # sensor-specific beats group beats type, whatever the priorities
    ([tpl(1, type_="esp32", priority=0), tpl(2, sensor="s1", priority=999)], 2),
    ([tpl(1, type_="esp32", priority=0), tpl(2, group="floor1", priority=999)], 2),
    ([tpl(1, group="floor1", priority=0), tpl(2, sensor="s1", priority=999)], 2),
    # within a scope the lowest priority number wins; a tie goes to the oldest
    ([tpl(1, type_="esp32", priority=20), tpl(2, type_="esp32", priority=10)], 2),
    ([tpl(2, type_="esp32", priority=10), tpl(1, type_="esp32", priority=10)], 1),
    # an inactive template never wins, even when it would
    ([tpl(1, sensor="s1", active=False), tpl(2, type_="esp32")], 2),
    ([tpl(1, sensor="s1", active=False)], None),
    # another sensor's template and a group the sensor is not in do not match
    ([tpl(1, sensor="s2"), tpl(2, group="floor2")], None),
])
def test_the_winner(templates: list[Template], winner: int | None) -> None:
    found = resolve.resolve("s1", "esp32", GROUPS, templates)
    assert (found.winner.id if found.winner else None) == winner


def test_the_explanation_says_why_each_candidate_lost() -> None:
    found = resolve.resolve("s1", "esp32", GROUPS, [
        tpl(1, type_="esp32", priority=1), tpl(2, sensor="s1", priority=50),
        tpl(3, sensor="s1", priority=10), tpl(4, sensor="s1", active=False),
        tpl(5, sensor="s1", priority=10)])
    outcomes = {c.template.id: c.outcome for c in found.candidates}
    assert outcomes == {
        3: "won",
        5: "outranked by template 3: same priority, template 3 is older",
        2: "outranked by template 3: priority 10 beats 50",
        4: "inactive",
        1: "outranked by template 3: sensor templates come before type templates",
    }
    assert "lowest priority number (10)" in found.reason


templates_st = st.lists(
    st.builds(tpl, st.integers(1, 50), priority=st.integers(0, 5), active=st.booleans(),
              sensor=st.sampled_from([None, "s1", "s2"]),
              group=st.none(), type_=st.sampled_from([None, "esp32"])).filter(
        lambda t: (t.sensor_id is None) != (t.sensor_type is None)),
    max_size=12, unique_by=lambda t: t.id)


@given(templates_st)
def test_the_winner_is_the_best_active_match_and_order_does_not_matter(
        templates: list[Template]) -> None:
    found = resolve.resolve("s1", "esp32", frozenset(), templates)
    again = resolve.resolve("s1", "esp32", frozenset(), list(reversed(templates)))
    assert found.winner == again.winner
    eligible = [t for t in templates if t.is_active and t.matches("s1", "esp32", frozenset())]
    if not eligible:
        assert found.winner is None
    else:
        assert found.winner is not None
        assert all(found.winner.rank() <= t.rank() for t in eligible)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=4),
    max_leaves=20)


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=6))
def test_the_hash_depends_on_content_not_key_order(config: dict[str, Any]) -> None:
    reordered = dict(reversed(list(config.items())))
    assert resolve.config_hash(config) == resolve.config_hash(reordered)
    assert resolve.canonical_json(config) == resolve.canonical_json(reordered)
    assert " " not in resolve.canonical_json({"a": [1, 2], "b": {"c": 1}})


def test_the_hash_changes_with_any_value() -> None:
    doc = resolve.document(tpl(1, type_="x"), interval=60, masters=[])
    assert resolve.config_hash(doc) != resolve.config_hash({**doc, "check_in_interval": 30})
    assert len(resolve.config_hash(doc)) == 64


@pytest.mark.parametrize(("age", "expected"), [
    (None, "pending"), (0, "online"), (90, "online"), (91, "stale"), (180, "stale"),
    (181, "offline"),
])
def test_status_from_the_last_check_in(age: float | None, expected: str) -> None:
    now = 10_000.0
    assert resolve.status(None if age is None else now - age, 60, now) == expected


@pytest.mark.parametrize(("override", "config", "expected"), [
    (None, None, 60.0), (None, {"check_in_interval": 15}, 15.0), (5.0, {"check_in_interval": 15}, 5.0),
    (None, {"check_in_interval": "soon"}, 60.0), (None, {"check_in_interval": True}, 60.0),
    (None, {"check_in_interval": -1}, 60.0),
])
def test_check_in_interval(override: float | None, config: dict[str, Any] | None,
                           expected: float) -> None:
    assert resolve.check_in_interval(override, config, 60.0) == expected


MAPPINGS = [
    {"sensor_name": "sensor.temperature", "entry_field": "Temperature", "unit": "°C",
     "data_type": "float"},
    {"sensor_name": "relay.state", "entry_field": "Relay State", "unit": "", "data_type": "text"},
    {"sensor_name": "count", "entry_field": "Count", "data_type": "int"},
    {"sensor_name": "door", "entry_field": "Door", "data_type": "bool"},
]


def test_mapped_readings_take_name_unit_and_type_and_others_pass_through() -> None:
    got = resolve.map_readings({"sensor.temperature": "21.5", "relay.state": "on", "count": 3.0,
                                "door": "off", "rssi": -40, "x.y z": [1]}, MAPPINGS)
    assert got.values == {"temperature": 21.5, "relay_state": "on", "count": 3, "door": False,
                          "rssi": -40, "x_y_z": [1]}
    assert got.units == {"temperature": "°C"}
    assert got.errors == []


@pytest.mark.parametrize(("name", "value"), [
    ("sensor.temperature", "warm"), ("sensor.temperature", True), ("count", "nan"),
    ("door", "maybe"), ("sensor.temperature", "inf"),
])
def test_a_value_its_type_cannot_hold_is_an_error_not_a_crash(name: str, value: Any) -> None:
    got = resolve.map_readings({name: value}, MAPPINGS)
    assert got.values == {}
    assert len(got.errors) == 1 and name in got.errors[0]


@pytest.mark.parametrize("mappings", [None, "nonsense", [1, {"no": "name"}], {}])
def test_broken_mappings_mean_pass_through(mappings: Any) -> None:
    assert resolve.map_readings({"t": 1}, mappings).values == {"t": 1}


@given(st.text(min_size=0, max_size=100))
def test_property_names_always_follow_the_contract(name: str) -> None:
    from shared.topics import ID_RE
    assert ID_RE.fullmatch(resolve.property_name(name))
