"""The retained-topic ledger: what to publish and clear, and the file that survives restarts."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from connector.ha import ledger as ledger_module
from connector.ha.ledger import FILE_NAME, VERSION, Entry, Ledger, fingerprint, plan

P = "homeassistant"


def cfg(name: str) -> dict[str, object]:
    return {"name": name, "unique_id": name}


def test_first_run_publishes_everything_and_records_it(tmp_path: Path) -> None:
    desired = {f"{P}/sensor/i_a/t/config": ("a", cfg("t")),
               f"{P}/binary_sensor/i_a/m/config": ("a", cfg("m"))}
    todo = plan(desired, {})
    assert set(todo.publish) == set(desired)
    assert todo.clear == []
    assert todo.entries[f"{P}/sensor/i_a/t/config"] == Entry("a", ("sensor:t",))


def test_what_is_gone_is_cleared_and_what_is_unchanged_is_not_resent() -> None:
    ledger = {f"{P}/sensor/i_a/t/config": Entry("a", ("sensor:t",)),
              f"{P}/sensor/i_b/t/config": Entry("b", ("sensor:t",)),     # device b removed
              f"{P}/sensor/i_a/old/config": Entry("a", ("sensor:old",))}  # property removed
    desired = {f"{P}/sensor/i_a/t/config": ("a", cfg("t"))}
    previous = {f"{P}/sensor/i_a/t/config": fingerprint(cfg("t"))}
    todo = plan(desired, ledger, previous=previous)
    assert todo.publish == {}
    # a config that differs from what was published is sent again
    changed = {f"{P}/sensor/i_a/t/config": ("a", {**cfg("t"), "unit_of_measurement": "°C"})}
    assert set(plan(changed, ledger, previous=previous).publish) == set(changed)
    assert sorted(todo.clear) == [f"{P}/sensor/i_a/old/config", f"{P}/sensor/i_b/t/config"]
    # a full round (reconnect, Home Assistant online) sends everything again
    assert set(plan(desired, ledger).publish) == set(desired)


def test_a_frozen_device_is_left_alone() -> None:
    ledger = {f"{P}/switch/i_r/state/config": Entry("r", ("switch:state",))}
    todo = plan({f"{P}/sensor/i_r/last_error/config": ("r", cfg("e"))}, ledger,
                frozen=frozenset({"r"}))
    assert todo.publish == {} and todo.clear == []


def test_device_discovery_removes_a_lost_component_by_its_platform_alone() -> None:
    topic = f"{P}/device/i_a/config"
    ledger = {topic: Entry("a", ("binary_sensor:m", "sensor:t"))}
    payload = {"device": {}, "components": {"t": {"platform": "sensor", "name": "T"}}}
    todo = plan({topic: ("a", payload)}, ledger)
    assert todo.publish[topic]["components"] == {"t": {"platform": "sensor", "name": "T"},
                                                 "m": {"platform": "binary_sensor"}}
    assert todo.entries[topic] == Entry("a", ("sensor:t",))


def test_the_ledger_file_survives_a_restart_and_a_broken_one_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "data" / FILE_NAME
    ledger = Ledger(path)
    ledger.update({"x/sensor/n/o/config": Entry("d", ("sensor:o",))}, [])
    ledger.update({"x/sensor/n/p/config": Entry("d", ("sensor:p",))}, ["x/sensor/n/o/config"])
    assert Ledger(path).entries == {"x/sensor/n/p/config": Entry("d", ("sensor:p",))}
    path.write_text("{not json")
    assert Ledger(path).entries == {}
    assert path.with_suffix(".bad").read_text() == "{not json"


def test_packing_keeps_every_entry_and_fingerprint_with_one_topic_string_each(
        tmp_path: Path) -> None:
    """After a big round the ledger packs what it keeps: the same entries and fingerprints,
    ``published`` keyed by the ledger's own topic strings (a round's two passes made each
    topic twice), and nothing written."""
    path = tmp_path / FILE_NAME
    ledger = Ledger(path)
    topics = [f"{P}/sensor/i_{d}/{k}/config" for d in ("a", "b") for k in ("t", "h")]
    ledger.update({t: Entry(t.split("/")[2][2:], (f"sensor:{t.split('/')[3]}",))
                   for t in topics}, [])
    written = path.read_bytes()
    entries = dict(ledger.entries)
    # the second pass's strings: equal topics, other objects
    published = {"".join(list(t)): fingerprint(cfg(t)) for t in topics[:3]}
    published["".join(list(f"{P}/sensor/i_c/t/config"))] = 7  # not in the ledger: kept too
    expect = dict(published)
    kept = ledger.pack(published)
    assert kept == expect and published == {}
    assert ledger.entries == entries and list(ledger.entries) == list(entries)
    keys = {t: t for t in ledger.entries}
    assert all(keys[t] is t for t in kept if t in keys)  # one string per topic
    assert path.read_bytes() == written
    # what a later round plans from the packed ledger and fingerprints is unchanged
    desired = {t: (t.split("/")[2][2:], cfg(t)) for t in topics}
    assert set(plan(desired, ledger.entries, previous=kept).publish) == {topics[3]}
    ledger.update({}, [topics[0]])
    assert topics[0] not in Ledger(path).entries and len(Ledger(path).entries) == 3


@pytest.mark.parametrize("count", [0, 1, 6, 7, 20])
def test_the_file_written_a_few_entries_at_a_time_is_the_whole_file_s_json(
        tmp_path: Path, count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger file is written ``SAVE_EVERY`` entries at a time (10,000 devices' entries at
    once were the discovery round's largest peak); the bytes are those of one ``orjson.dumps``
    of it all, sorted, indented, and load back as the same entries."""
    monkeypatch.setattr(ledger_module, "SAVE_EVERY", 3)
    path = tmp_path / FILE_NAME
    ledger = Ledger(path)
    ledger.update({f'{P}/sensor/i_"é{n}/t{n % 4}/config': Entry(f"d{n}", tuple(
        f"sensor:k{j}" for j in range(n % 3))) for n in reversed(range(count))}, [])
    whole = {"version": VERSION, "topics": {t: {"device": e.device, "entities": list(e.entities)}
                                            for t, e in sorted(ledger.entries.items())}}
    assert path.read_bytes() == orjson.dumps(whole, option=orjson.OPT_INDENT_2)
    assert Ledger(path).entries == ledger.entries and len(ledger.entries) == count
