"""Sensor tokens on a real SQLite file: issued, stored hashed, verified in constant time,
refreshed with an overlap window, expired, revoked, and gone with their sensor."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.state_aggregator.master.db import Database
from services.state_aggregator.master.errors import NotFound
from services.state_aggregator.master.service import MasterService
from services.state_aggregator.master.tokens import SensorTokens, TokenOptions, TokenRefused
from shared.master_models import SensorRegister
from tests.helpers import Clock

TTL, OVERLAP = 3600.0, 60.0


@pytest.fixture
def clock() -> Clock:
    return Clock(1_800_000_000.0)


@pytest.fixture
def tokens(tmp_path: Path, clock: Clock) -> Iterator[SensorTokens]:
    db = Database(tmp_path / "master.db")
    service = MasterService(db, clock=clock)
    service.register(SensorRegister(sensor_id="s1"))
    service.register(SensorRegister(sensor_id="s2"))
    yield SensorTokens(db, options=TokenOptions(ttl=TTL, overlap=OVERLAP), clock=clock)
    db.close()


def refused(tokens: SensorTokens, token: str) -> str:
    with pytest.raises(TokenRefused) as caught:
        tokens.verify(token)
    return caught.value.error


def test_a_token_is_stored_only_as_its_hash(tokens: SensorTokens) -> None:
    issued = tokens.issue("s1")
    token_id, _, secret = issued["token"].partition(".")
    assert issued["token_id"] == token_id and len(secret) >= 43  # 256 bits
    with tokens.db.read() as conn:
        row = conn.execute("SELECT * FROM sensor_tokens WHERE token_id = ?", (token_id,)).fetchone()
    assert secret not in [str(v) for v in tuple(row)]
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert tokens.verify(issued["token"])["sensor_id"] == "s1"


@pytest.mark.parametrize("bad", ["", "nodot", "0123456789abcdef.wrong", ".", "x" * 200])
def test_what_is_not_a_token_is_refused_alike(tokens: SensorTokens, bad: str) -> None:
    good = tokens.issue("s1")
    assert refused(tokens, bad) == "invalid_token"
    # the right id with a wrong secret says exactly the same
    assert refused(tokens, good["token_id"] + ".wrong") == "invalid_token"


def test_refresh_keeps_the_old_token_for_the_overlap_only(tokens: SensorTokens,
                                                          clock: Clock) -> None:
    old = tokens.issue("s1")["token"]
    clock.now += TTL / 2
    new = tokens.refresh(old)
    assert new["token"] != old and new["sensor_id"] == "s1"
    assert tokens.verify(old)["sensor_id"] == "s1"  # the answer may have been lost
    clock.now += OVERLAP
    assert refused(tokens, old) == "token_expired"
    assert tokens.verify(new["token"])["sensor_id"] == "s1"


def test_an_expired_token_cannot_be_refreshed(tokens: SensorTokens, clock: Clock) -> None:
    token = tokens.issue("s1")["token"]
    clock.now += TTL
    assert refused(tokens, token) == "token_expired"
    with pytest.raises(TokenRefused):
        tokens.refresh(token)


def test_revoke_one_or_all_of_a_sensor(tokens: SensorTokens) -> None:
    a = tokens.issue("s1")
    b = tokens.issue("s1")  # a's overlap has begun; both are good
    other = tokens.issue("s2")
    assert tokens.revoke("s1", a["token_id"]) == 1
    assert refused(tokens, a["token"]) == "invalid_token"
    assert tokens.verify(b["token"])["sensor_id"] == "s1"
    assert tokens.revoke("s1") == 1
    assert refused(tokens, b["token"]) == "invalid_token"
    assert tokens.verify(other["token"])["sensor_id"] == "s2"  # another sensor's stay
    assert [t["valid"] for t in tokens.list("s1")] == [False, False]


def test_no_token_for_an_unknown_sensor_and_none_left_after_deletion(
        tokens: SensorTokens) -> None:
    with pytest.raises(NotFound):
        tokens.issue("ghost")
    token = tokens.issue("s2")["token"]
    with tokens.db.tx() as conn:
        conn.execute("DELETE FROM sensors WHERE sensor_id = 's2'")
    assert refused(tokens, token) == "invalid_token"
    assert tokens.list("s2") == []
