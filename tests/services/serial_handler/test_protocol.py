"""The line protocol as pure functions: every documented line, what is refused and why, and
properties over generated lines (round trips; garbage raises LineError and nothing else)."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import shlex
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.serial_handler.protocol import (
    MAX_TEXT,
    Ack,
    Event,
    Failure,
    LineError,
    LineFramer,
    Overlong,
    Reading,
    command_line,
    guess_id,
    is_comment,
    parse_line,
    read_request,
    truncate,
)


@pytest.mark.parametrize(("line", "expected"), [
    ('{"id": "temp_living_room", "temperature": 22.5, "humidity": 41}',
     Reading("temp_living_room", {"temperature": 22.5, "humidity": 41})),
    ("id=temp_living_room temperature=22.5 humidity=41",
     Reading("temp_living_room", {"temperature": 22.5, "humidity": 41})),
    ("  id=t1   motion=true  door=off  mode=\"eco plus\"  \r",
     Reading("t1", {"motion": True, "door": False, "mode": "eco plus"})),
    ("id=t1 count=-3 big=1e3 hex=0x1F under=1_000 dot=.5",
     Reading("t1", {"count": -3, "big": 1000.0, "hex": "0x1F", "under": "1_000", "dot": ".5"})),
    ('{"id": 7, "temperature": 20}', Reading("7", {"temperature": 20})),
    ('{"id": "t1", "temperature": null, "humidity": 40}', Reading("t1", {"humidity": 40})),
    ('{"id": "t1", "error": "READ_TIMEOUT", "message": "DHT22 silent"}',
     Failure("t1", "READ_TIMEOUT", "DHT22 silent")),
    ("id=t1 error=LOW_BATTERY severity=warning",
     Failure("t1", "LOW_BATTERY", "", "warning")),
    ('{"id": "t1", "error": "X", "severity": "catastrophic"}', Failure("t1", "X", "", "error")),
    ('{"id": "m1", "event": "motion_started"}', Event("m1", "motion_started", None)),
    ('{"id": "m1", "event": "rebooted", "data": {"reason": "brownout"}}',
     Event("m1", "rebooted", {"reason": "brownout"})),
    ('{"id": "relay1", "ack": "cmd-42", "ok": true}', Ack("relay1", "cmd-42", True, None, None)),
    ('{"id": "relay1", "ack": "cmd-42"}', Ack("relay1", "cmd-42", True, None, None)),
    ('{"id": "relay1", "ack": "c", "ok": true, "result": {"state": "on"}}',
     Ack("relay1", "c", True, {"state": "on"}, None)),
    ('id=relay1 ack=cmd-42 ok=false error="relay stuck"',
     Ack("relay1", "cmd-42", False, None, "relay stuck")),
    ('{"id": "relay1", "ack": "c", "ok": "false"}', Ack("relay1", "c", False, None, None)),
    ('{"id": "relay1", "ack": "c", "ok": 0}', Ack("relay1", "c", False, None, None)),
    ("id=relay1 ack=123", Ack("relay1", "123", True, None, None)),
])
def test_documented_lines(line: str, expected: object) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize(("line", "reason", "device_id"), [
    ("", "neither JSON nor key=value", None),
    ("hello world", "neither JSON nor key=value", None),
    ("ets Jun  8 2016 00:22:57", "neither JSON nor key=value", None),
    ('{"id": "t1", "temperature": 22.5', "invalid JSON", None),
    ("[1, 2, 3]", "neither JSON nor key=value", None),
    ('{"id": "t1"} trailing', "invalid JSON", None),
    ('"just a string"', "neither JSON nor key=value", None),
    ("{}", "missing or invalid 'id'", None),
    ('{"temperature": 1}', "missing or invalid 'id'", None),
    ('{"id": "bad id", "t": 1}', "missing or invalid 'id'", None),
    ('{"id": true, "t": 1}', "missing or invalid 'id'", None),
    ('{"id": "' + "x" * 65 + '", "t": 1}', "missing or invalid 'id'", None),
    ("id=t1 temperature", "expected key=value", None),
    ("id=t1 =5", "expected key=value", None),
    ('id=t1 name="unclosed', "unbalanced quotes", None),
    ("id=t1", "a reading without values", "t1"),
    ('{"id": "t1", "temperature": null}', "a reading without values", "t1"),
    ('{"id": "t1", "temp erature": 1}', "invalid property name", "t1"),
    ('{"id": "t1", "t": [1, 2]}', "is not a scalar", "t1"),
    ('{"id": "t1", "t": {"a": 1}}', "is not a scalar", "t1"),
    ("id=t1 t=1e999", "non-finite value", "t1"),
    ("id=t1 t=NaN x", "expected key=value", None),
    ("id=t1 t=nan", "a reading without values", "t1"),
    ('{"id": "t1", "t": NaN}', "invalid JSON", None),
])
def test_lines_that_are_refused_say_why(line: str, reason: str, device_id: str | None) -> None:
    with pytest.raises(LineError) as err:
        parse_line(line)
    assert reason in err.value.reason
    assert err.value.device_id == device_id


def test_an_id_less_line_needs_a_default_id() -> None:
    assert parse_line("temperature=21", default_id="t1") == Reading("t1", {"temperature": 21})
    assert parse_line('{"id": "t2", "x": 1}', default_id="t1") == Reading("t2", {"x": 1})
    with pytest.raises(LineError):
        parse_line("temperature=21")


@pytest.mark.parametrize(("line", "expected"), [
    ("id=t1 t=nan h=40", Reading("t1", {"h": 40})),  # Serial.print(NAN): not sampled
    ("id=t1 t=NULL h=40", Reading("t1", {"h": 40})),
    ("id=t1 t=Infinity", Reading("t1", {"t": "Infinity"})),  # not Arduino's spelling: text
])
def test_arduino_float_spellings(line: str, expected: Reading) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize("line", ["id=t1 t=inf", "id=t1 t=-inf", "id=t1 t=ovf"])
def test_arduino_overflow_is_refused(line: str) -> None:
    with pytest.raises(LineError, match="non-finite"):
        parse_line(line)


def test_the_hub_sends_compact_json_with_the_ports_line_ending() -> None:
    assert read_request("t1", "\n") == b'{"id":"t1","read":true}\n'
    assert read_request("t1", "\r\n") == b'{"id":"t1","read":true}\r\n'
    assert command_line("relay1", "cmd-42", {"state": "on", "level": 0.5}, "\r") == (
        b'{"id":"relay1","cmd_id":"cmd-42","values":{"state":"on","level":0.5}}\r')


@pytest.mark.parametrize(("line", "expected"), [
    ('{"id": "t1", "temperature": 2x}', "t1"),
    ("id=relay-2 ack", "relay-2"),
    ('{"id":"  ', None),
    ("no id here", None),
    ('{"id": "é", "t": 1}', None),
])
def test_guess_id_attributes_garbled_lines(line: str, expected: str | None) -> None:
    assert guess_id(line) == expected


def test_comments_and_truncation() -> None:
    assert is_comment("# booting") and is_comment("   #x") and not is_comment("id=t1 x=#")
    assert truncate("a" * MAX_TEXT) == "a" * MAX_TEXT
    assert truncate("a" * (MAX_TEXT + 1)) == "a" * MAX_TEXT + "…"


# --- properties --------------------------------------------------------------------------------

ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
reserved = {"id", "error", "message", "severity", "event", "data", "ack", "ok", "result"}
names = ids.filter(lambda n: n not in reserved)
finite = st.floats(allow_nan=False, allow_infinity=False)
numbers = st.integers(min_value=-(2**53), max_value=2**53) | finite
words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")),
                min_size=1, max_size=20)


def _kv_text(word: str) -> bool:
    # A word that reads back as itself: not a number, bool or empty after key=value parsing.
    try:
        return parse_line(f"id=x v={shlex.quote(word)}") == Reading("x", {"v": word})
    except LineError:
        return False


@given(ids, st.dictionaries(names, numbers | st.booleans() | words.filter(_kv_text),
                            min_size=1, max_size=8))
@settings(max_examples=100, deadline=None)
def test_key_value_round_trip(device_id: str, values: dict[str, Any]) -> None:
    def render(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return repr(v) if isinstance(v, float) else shlex.quote(str(v))

    line = " ".join([f"id={device_id}", *(f"{k}={render(v)}" for k, v in values.items())])
    assert parse_line(line) == Reading(device_id, values)


@given(ids, st.dictionaries(names, numbers | st.booleans() | words, min_size=1, max_size=8))
@settings(max_examples=100, deadline=None)
def test_json_round_trip(device_id: str, values: dict[str, Any]) -> None:
    line = orjson.dumps({"id": device_id, **values}).decode()
    parsed = parse_line(line)
    assert parsed == Reading(device_id, values)
    assert all(not isinstance(v, float) or math.isfinite(v) for v in parsed.values.values())


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_any_text_parses_or_raises_line_error(text: str) -> None:
    try:
        parse_line(text)
    except LineError as exc:
        assert len(str(exc)) < 600  # the quoted text is truncated


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_any_bytes_from_the_wire_parse_or_raise_line_error(raw: bytes) -> None:
    with contextlib.suppress(LineError):
        parse_line(raw.decode("utf-8", errors="replace"))


@given(st.recursive(st.none() | st.booleans() | numbers | words,
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(words, inner, max_size=3), max_leaves=12),
       st.one_of(st.none(), ids, st.integers()))
@settings(max_examples=200, deadline=None)
def test_any_json_object_parses_or_raises_line_error(body: Any, device_id: Any) -> None:
    obj = {"id": device_id, "v": body} if device_id is not None else {"v": body}
    with contextlib.suppress(LineError):
        parse_line(json.dumps(obj))  # json: it writes ints past 64 bits, which orjson refuses


@given(ids, st.text(st.characters(codec="utf-8"), min_size=1, max_size=40),
       st.dictionaries(names, words | numbers, max_size=4),
       st.sampled_from(["\n", "\r\n", "\r"]))
@settings(max_examples=100, deadline=None)
def test_a_command_is_always_exactly_one_line(device_id: str, cmd_id: str,
                                              values: dict[str, Any], ending: str) -> None:
    # Newlines inside a cmd_id or a value are JSON-escaped: a command cannot break the framing.
    line = command_line(device_id, cmd_id, values, ending)
    body = line[: -len(ending)]
    assert line.endswith(ending.encode()) and b"\n" not in body and b"\r" not in body
    assert orjson.loads(body) == {"id": device_id, "cmd_id": cmd_id, "values": values}


# --- framing -----------------------------------------------------------------------------------

def _feed_all(chunks: list[bytes], max_line: int = 4096) -> list[bytes | Overlong]:
    framer = LineFramer(max_line)
    out = [item for chunk in chunks for item in framer.feed(chunk)]
    return [x for x in out if x != b""]  # \r|\n split by a read: the empty half is no line


def test_framer_endings_and_overlong_lines() -> None:
    assert _feed_all([b"a=1\nb=2\r\nc=3\rd=4"]) == [b"a=1", b"b=2", b"c=3"]
    assert _feed_all([b"x" * 20 + b"\nok\n"], max_line=10) == [Overlong(b"x" * 20), b"ok"]
    assert _feed_all([b"x" * 8, b"x" * 8, b"x" * 8, b"\nok\n"], max_line=10) == [
        Overlong(b"x" * 16), b"ok"]


line_bytes = st.binary(min_size=1, max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b)


@given(st.lists(line_bytes | st.just(b"L" * 100), min_size=1, max_size=10),
       st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=10, max_size=10),
       st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=40))
@settings(max_examples=150, deadline=None)
def test_framer_gives_the_same_lines_however_the_reads_split(
        lines: list[bytes], endings: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + end for line, end in zip(lines, endings, strict=False))
    chunks, at = [], 0
    for size in itertools.cycle(cuts):
        if at >= len(stream):
            break
        chunks.append(stream[at:at + size])
        at += size
    got = _feed_all(chunks, max_line=64)
    assert len(got) == len(lines)
    for line, item in zip(lines, got, strict=True):
        if len(line) > 64:
            assert isinstance(item, Overlong) and line.startswith(item.head)
        else:
            assert item == line
