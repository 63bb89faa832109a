"""The firmware's logic checks, written to run unchanged under CPython (pytest calls each
``check_*``) and under a real MicroPython interpreter (``run_all()`` prints one line per check).
They use the in-memory HAL and a scripted transport: no sockets, no threads."""

import json

from firmware.hal import Reboot
from firmware.master import MasterClient
from firmware.masters import Masters
from firmware.mdns import Responder, questions
from firmware.ota import Ota
from firmware.probe import Probe, validate_provision
from firmware.ringbuf import RecordTooLarge, RingBuffer
from firmware.sensors import SimulatedSensor
from firmware.store import CommandRing, Store
from firmware.timefmt import iso_utc
from firmware.transport import HttpTransport, Refused, Unreachable, api_base
from firmware.web import HttpError, parse_form, read_request, split_url, unquote
from tests.firmware.upy.memhal import CannedSocket, MemHal, http_reply

TYPE_CHECKING = False  # typing is not on MicroPython; mypy reads this branch by its name
if TYPE_CHECKING:
    from typing import Any


def raises(exc_type: "type[BaseException]", fn: "Any", *args: "Any") -> "Any":
    try:
        fn(*args)
    except exc_type as exc:
        return exc
    raise AssertionError("%s not raised" % exc_type.__name__)


def at(entry: "dict[str, Any] | None", key: str) -> "Any":
    """``entry[key]`` of an entry that must be there (a master list is never empty here)."""
    assert entry is not None, "no entry"
    return entry[key]


class ScriptedTransport:
    """Answers from the test; ``down`` is the set of endpoints that do not answer."""

    kind = "script"

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.acks: list[tuple[str, Any, Any]] = []
        self.commands: list[dict[str, Any]] = []
        self.doc: dict[str, Any] = {"config_available": True, "config_hash": "h1", "config_version": 1,
                    "config_name": "t", "check_in_interval": 10,
                    "config": {"polling_interval": 2, "extra": "kept"},
                    "masters": [{"name": "p", "api_endpoint": "http://p", "priority": 1},
                                {"name": "s", "api_endpoint": "http://s", "priority": 2}]}
        self.data_bodies: list[dict[str, Any]] = []

    def _check(self, master: "dict[str, Any]", what: str) -> None:
        self.calls.append((master["name"], what))
        if master["api_endpoint"] in self.down:
            raise Unreachable(master["api_endpoint"])

    def register(self, master: "dict[str, Any]", body: "dict[str, Any]") -> "dict[str, Any]":
        self._check(master, "register")
        return {"status": "registered", "config_hash": self.doc["config_hash"],
                "masters": self.doc["masters"], "commands": self.take()}

    def heartbeat(self, master: "dict[str, Any]", body: "dict[str, Any]") -> "dict[str, Any]":
        self._check(master, "heartbeat")
        return {"status": "ok", "config_hash": self.doc["config_hash"],
                "config_changed": body.get("config_hash") != self.doc["config_hash"],
                "commands": self.take()}

    def config(self, master: "dict[str, Any]", sensor_id: str,
               etag: "str | None") -> "dict[str, Any] | None":
        self._check(master, "config")
        return None if etag == self.doc["config_hash"] else self.doc

    def ack(self, master: "dict[str, Any]", cid: str, body: "dict[str, Any]") -> None:
        self._check(master, "ack")
        self.acks.append((cid, body["status"], body["result"]))

    def data(self, master: "dict[str, Any]", body: "dict[str, Any]",
             url: "str | None" = None) -> "dict[str, Any]":
        self._check(master, "data")
        self.data_bodies.append(body)
        return {"status": "ok"}

    def incoming(self) -> "list[dict[str, Any]]":
        return []

    def refresh_due(self, master: "dict[str, Any]") -> bool:
        return False

    def forget_token(self, master: "dict[str, Any]") -> None:
        self.calls.append((master["name"], "forget_token"))

    def take(self) -> "list[dict[str, Any]]":
        out, self.commands = self.commands, []
        return out


def new_probe(hal: MemHal) -> Probe:
    return Probe(hal, "p1", sensor=SimulatedSensor(), hub=None, buffer_slots=8)


def new_client(hal: MemHal, transport: "Any", **kw: "Any") -> "tuple[Probe, MasterClient]":
    probe = new_probe(hal)
    client = MasterClient(probe, transport, masters=[{"name": "p", "api_endpoint": "http://p",
                                                      "priority": 1}], tries=2,
                          failback_after=2, retry_ms=100, **kw)
    probe.master = client
    return probe, client


def check_ring_buffer_order_bounds_and_reboot() -> None:
    hal = MemHal()
    ring = RingBuffer(hal, "buf", 3)
    for i in range(5):
        ring.append({"r": {"i": i}})
    assert (ring.count, ring.dropped) == (3, 2)
    again = RingBuffer(hal, "buf", 3)
    assert [r["r"]["i"] for r in again.peek(10)] == [2, 3, 4]
    again.drop_oldest(2)
    assert [r["n"] for r in RingBuffer(hal, "buf", 3).peek(10)] == [5]
    raises(RecordTooLarge, ring.append, {"r": {"x" * 300: 1}})


def check_command_ring_is_bounded_and_persisted() -> None:
    hal = MemHal()
    ring = CommandRing(Store(hal), size=3)
    for i in range(5):
        ring.remember("c%d" % i, "completed")
    again = CommandRing(Store(hal), size=3)
    assert again.status_of("c4") == "completed" and again.status_of("c1") is None
    assert len(again.recent) == 3


def check_masters_fail_over_and_back_without_flapping() -> None:
    m = Masters([{"name": "b", "api_endpoint": "http://b", "priority": 2},
                 {"name": "a", "api_endpoint": "http://a/", "priority": 1},
                 {"name": "bad", "api_endpoint": "ftp://x"}], tries=2, failback_after=3)
    assert [e["name"] for e in m.entries] == ["a", "b"] and at(m.current(), "api_endpoint") == "http://a"
    assert not m.failed() and m.failed() and at(m.current(), "name") == "b"
    assert at(m.higher(), "name") == "a"
    assert not m.higher_answered(True) and not m.higher_answered(False)  # a flicker resets it
    assert not m.higher_answered(True) and not m.higher_answered(True)
    assert m.higher_answered(True) and at(m.current(), "name") == "a" and m.switches == 2
    m.update([{"name": "c", "api_endpoint": "http://c", "priority": 1},
              {"name": "a", "api_endpoint": "http://a", "priority": 5}])
    assert at(m.current(), "name") == "a"  # stays with the master it has, wherever it moved


def check_register_config_heartbeat_and_apply() -> None:
    hal, t = MemHal(), ScriptedTransport()
    probe, client = new_client(hal, t)
    client.tick()
    assert t.calls == [("p", "register"), ("p", "config")]
    assert client.config_hash == "h1" and probe.interval_ms == 2000 and client.check_in_s == 10
    assert [m["name"] for m in client.masters.entries] == ["p", "s"]
    assert client.status()["config"]["extra"] == "kept"
    hal.now += 10000
    client.tick()
    assert t.calls[-1] == ("p", "heartbeat")  # same hash: no config fetch
    # The config survives a reboot and is used before any master answers.
    probe2, client2 = new_client(hal, ScriptedTransport())
    assert client2.config_hash == "h1" and probe2.interval_ms == 2000


def check_commands_run_once_and_are_acked_with_their_outcome() -> None:
    hal, t = MemHal(), ScriptedTransport()
    probe, client = new_client(hal, t)
    client.tick()
    set_interval = {"command_id": "c1", "command_type": "set_interval",
                    "command_data": {"interval_ms": 1500}}
    t.commands = [set_interval,
                  {"command_id": "c2", "command_type": "warp", "command_data": {}},
                  {"command_id": "c3", "command_type": "set_target_temp",
                   "command_data": {"blob": "x" * 3000}},
                  {"command_id": "c4", "command_type": "identify", "command_data": {"seconds": 2}},
                  {"command_type": "restart"}]
    hal.now += 10000
    client.tick()
    assert probe.interval_ms == 1500 and hal.led
    assert [(a[0], a[1]) for a in t.acks] == [("c1", "completed"), ("c2", "failed"),
                                             ("c3", "failed"), ("c4", "completed")]
    assert "unknown command_type 'warp'" in t.acks[1][2]["error"]
    assert "larger than" in t.acks[2][2]["error"]
    # The same id again (its ack was lost, or after a reboot): acked again, not run again.
    probe.interval_ms = 9999
    _, client2 = new_client(hal, t)
    client2.probe.interval_ms = 9999
    client2.run_command(set_interval)
    assert client2.probe.interval_ms == 9999
    assert t.acks[-1] == ("c1", "completed", {"duplicate": True})
    hal.now += 2000
    client.tick()
    assert not hal.led  # identify ends by itself


def check_restart_acks_before_resetting() -> None:
    hal, t = MemHal(), ScriptedTransport()
    _, client = new_client(hal, t)
    client.tick()
    t.commands = [{"command_id": "r1", "command_type": "restart", "command_data": {}}]
    hal.now += 10000
    raises(Reboot, client.tick)
    assert t.acks == [("r1", "completed", {"restarting": True})] and hal.resets == 1


def check_fail_over_after_tries_and_back_after_answers() -> None:
    hal, t = MemHal(), ScriptedTransport()
    _probe, client = new_client(hal, t)
    client.tick()
    t.down.add("http://p")
    for _ in range(2):
        hal.now += 10000
        client.tick()
    assert at(client.masters.current(), "name") == "s" and not client.registered
    hal.now += 10000
    client.tick()
    assert t.calls[-2:] == [("s", "register"), ("p", "config")]  # and a look at the first
    t.down.clear()
    for _ in range(2):
        hal.now += 10000
        client.tick()
    assert at(client.masters.current(), "name") == "p" and client.masters.switches == 2


def check_readings_go_as_one_idempotent_batch() -> None:
    hal, t = MemHal(), ScriptedTransport()
    probe, client = new_client(hal, t)
    client.tick()
    probe.provisioned = True
    probe.sample()
    t.down.add("http://p")
    probe.sample()
    probe.sample()
    assert probe.buffer.count == 2
    t.down.clear()
    probe.upload()
    batch = t.data_bodies[-1]["batch"]
    assert [b["readings"]["sample"] for b in batch] == [2, 3] and probe.buffer.count == 0
    assert batch[0]["id"] == "abababab-2" and batch[0]["timestamp"] == "2026-01-01T00:00:00.250Z"


def check_ota_verifies_switches_and_rolls_back() -> None:
    hal = MemHal()
    store = Store(hal)
    ota = Ota(hal, store, trial_ms=1000)
    image = b"\xe9" * 3000
    import hashlib
    digest = "".join("%02x" % b for b in hashlib.sha256(image).digest())
    hal.replies = [http_reply(200, b"\x00" * 10)]
    err = raises(Exception, ota.install, "http://img/x.bin", digest, "2.0", "1.0")
    assert "sha256 mismatch" in str(err) and hal.slots["active"] == "a"
    hal.replies = [http_reply(200, image)]
    assert ota.install("http://img/x.bin", digest, "2.0", "1.0")["bytes"] == 3000
    assert hal.slots["active"] == "b" and bytes(hal.image) == image
    assert Ota(hal, store).boot() == "trial"  # the first boot of the new image
    raises(Reboot, Ota(hal, store).boot)  # a second one: the first never checked in
    assert hal.slots["active"] == "a" and Ota(hal, store).state["state"] == "rolled_back"
    # A trial that checks in is kept.
    hal.replies = [http_reply(200, image)]
    ota = Ota(hal, store)
    ota.install("http://img/x.bin", digest, "2.0", "1.0")
    ota = Ota(hal, store)
    ota.boot()
    ota.checked_in()
    assert hal.slots["good"] and Ota(hal, store).boot() == "good"


def check_http_transport_against_canned_answers() -> None:
    hal = MemHal()
    t = HttpTransport(hal)
    assert api_base("http://hub:8088") == "http://hub:8088/api/sensor-master"
    assert api_base("http://hub:5003/master/") == "http://hub:5003/master"
    master = {"name": "m", "api_endpoint": "http://hub:8088"}
    hal.replies = [http_reply(304, b"", "ETag: \"h1\"\r\n")]
    assert t.config(master, "p1", "h1") is None
    hal.replies = [http_reply(404, json.dumps({"error": "unknown_sensor", "message": "register"}))]
    assert raises(Refused, t.heartbeat, master, {}).status == 404
    hal.replies = [http_reply(503, "busy")]
    raises(Unreachable, t.heartbeat, master, {})
    hal.replies = [http_reply(200, "<html>")]
    raises(Unreachable, t.heartbeat, master, {})
    hal.replies = [None]
    raises(Unreachable, t.register, master, {})


def check_http_transport_sends_the_tokens_it_was_given() -> None:
    hal = MemHal()
    t = HttpTransport(hal)
    t.hub_token = "hub-secret"
    master = {"name": "m", "api_endpoint": "http://hub:8088"}
    hal.replies = [http_reply(200, json.dumps({"status": "registered", "token": "id.s1",
                                               "token_expires_in": 100}))]
    t.register(master, {"sensor_id": "p1"})
    assert b"X-Token: hub-secret\r\n" in hal.sockets[-1].sent
    hal.replies = [http_reply(200, json.dumps({"status": "ok"}))]
    t.heartbeat(master, {})
    sent = hal.sockets[-1].sent
    assert b"Authorization: Bearer id.s1\r\n" in sent and b"hub-secret" not in sent
    assert not t.refresh_due(master)
    hal.now += 50000  # half of its 100 s: time to refresh
    assert t.refresh_due(master)
    hal.replies = [http_reply(201, json.dumps({"token": "id.s2", "token_expires_in": 100}))]
    t.refresh(master)
    assert b"POST /api/sensor-master/token/refresh " in hal.sockets[-1].sent
    assert b"Bearer id.s1" in hal.sockets[-1].sent and not t.refresh_due(master)
    hal.replies = [http_reply(200, json.dumps({"status": "ok"}))]
    t.data(master, {"batch": []})
    assert b"Authorization: Bearer id.s2\r\n" in hal.sockets[-1].sent
    other = {"name": "o", "api_endpoint": "http://other:8088"}  # another master: none of ours
    hal.replies = [http_reply(200, json.dumps({"status": "ok"}))]
    t.heartbeat(other, {})
    assert b"Authorization" not in hal.sockets[-1].sent


class TokenTransport(ScriptedTransport):
    """Refuses a heartbeat with 401 once, as a hub does when the sensor token was revoked."""

    def __init__(self) -> None:
        super().__init__()
        self.revoked = False

    def heartbeat(self, master: "dict[str, Any]", body: "dict[str, Any]") -> "dict[str, Any]":
        if self.revoked:
            self.revoked = False
            self._check(master, "heartbeat")
            raise Refused(401, "the sensor token was revoked")
        return super().heartbeat(master, body)


def check_a_refused_sensor_token_means_register_again() -> None:
    hal, t = MemHal(), TokenTransport()
    probe, client = new_client(hal, t)
    probe.token = "hub-secret"
    client.tick()
    assert client.registered and t.calls[0] == ("p", "register")
    t.revoked = True
    hal.now += 10000
    client.tick()
    assert not client.registered and t.calls[-1] == ("p", "forget_token")
    hal.now += 100  # retry_ms, not a whole check-in interval
    client.tick()
    assert client.registered and t.calls[-1][1] in ("register", "config")


def check_web_parsing() -> None:
    assert unquote("a+b%20c%zz") == "a b c%zz"
    assert parse_form("ssid=my+net&password=p%26ss&x") == {"ssid": "my net", "password": "p&ss", "x": ""}
    assert split_url("http://h:81/a/b") == ("h", 81, "/a/b") and split_url("http://h") == ("h", 80, "/")
    raises(ValueError, split_url, "https://h/")
    req = read_request(CannedSocket(b"POST /provision?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"))
    assert (req.method, req.path, req.query, req.json()) == ("POST", "/provision", {"x": "1"}, {})
    assert raises(HttpError, read_request, CannedSocket(b"NONSENSE\r\n\r\n")).status == 400
    big = b"POST / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n"
    assert raises(HttpError, read_request, CannedSocket(big)).status == 413


def check_provision_validation() -> None:
    assert validate_provision({"server_url": "http://h:8088/", "interval_ms": 500}) == (
        "http://h:8088", 500, "")
    cases: list[Any] = [[], {"server_url": "x", "interval_ms": 500},
                        {"server_url": "http://h", "interval_ms": True},
                        {"server_url": "http://h", "interval_ms": 500, "token": 3}]
    for bad in cases:
        assert raises(HttpError, validate_provision, bad).status == 422


def check_iso_timestamps() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1767225600.25) == "2026-01-01T00:00:00.250Z"
    assert iso_utc(951782400) == "2000-02-29T00:00:00.000Z"


def check_mdns_answers_a_browse() -> None:
    r = Responder("_temps-probe._tcp", "p1", 8080, "10.0.0.9", {"id": "p1", "fw": "1.0.0"})
    query = (b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"
             b"\x0c_temps-probe\x04_tcp\x05local\x00\x00\x0c\x00\x01")
    assert questions(query) == [("_temps-probe._tcp.local", 12)]
    assert r.wants(query) and not r.wants(b"\x00" * 5) and not r.wants(query[:20])
    answer = r.answer()
    assert answer[6:8] == b"\x00\x04" and b"id=p1" in answer and b"\x1f\x90" in answer


CHECKS = [v for k, v in sorted(globals().items()) if k.startswith("check_")]


def run_all() -> None:
    """For the MicroPython run: one ``PASS name`` / ``FAIL name: error`` line per check."""
    for check in CHECKS:
        name = check.__name__
        try:
            check()
            print("PASS", name)
        except Exception as exc:
            print("FAIL", name, repr(exc))
