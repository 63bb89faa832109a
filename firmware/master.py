"""The master control client: register, fetch the config by hash, apply it, heartbeat with the
config hash and metrics, run commands and acknowledge each once, send readings, fail over between
masters, and keep an OTA trial honest. Transport-neutral: ``transport`` is an ``HttpTransport`` or
an ``MqttTransport``, the probe is the ``Probe`` it manages.

What survives a reboot: the applied config with its hash and the masters list (``config.json``:
the fallback when no master answers), the recent command ids (``commands.json``), the settings
commands changed (``overrides.json``) and the OTA state (``ota.json``).
"""

import json

from . import VERSION
from .masters import Masters
from .ota import Ota, OtaError
from .store import CommandRing
from .timefmt import iso_utc
from .transport import MqttTransport, Refused, Unreachable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CONFIG_FILE = "config.json"
OVERRIDES_FILE = "overrides.json"
MAX_COMMAND_DATA = 2048  # bytes of JSON: a bigger command is refused, not run
RETRY_MS = 5000  # check-in retry while the current master does not answer
CAPABILITIES = ["temperature", "offline_buffer", "ota", "identify"]


class MasterClient:
    def __init__(self, probe: "Any", transport: "Any", *, sensor_type: str = "esp32_probe",
                 masters: "Any" = None, tries: int = 3, failback_after: int = 3,
                 default_check_in_s: int = 60, trial_ms: int = 120000,
                 retry_ms: int = RETRY_MS, hub_token: str = "") -> None:
        self.probe = probe
        self.hal = probe.hal
        self.store = probe.store
        self.transport = transport
        self.http = transport  # what the probe falls back to when a broker does not answer
        self.mqtt_failures = 0
        self.mqtt_off_for: str | None = None  # the config hash whose broker did not answer
        self.sensor_type = sensor_type
        self.retry_ms = retry_ms
        # The hub token for registering when no hub provisioned the probe (device.json "token");
        # a provisioning hub's token wins.
        self.hub_token = hub_token
        self.ring = CommandRing(self.store)
        self.ota = Ota(self.hal, self.store, trial_ms=trial_ms)
        self.ota_boot = self.ota.boot()
        saved = self.store.load(CONFIG_FILE, {})
        self.doc = saved.get("doc") or {}
        self.config_hash = saved.get("config_hash")
        known = self.doc.get("masters") or masters or []
        self.masters = Masters(known, tries=tries, failback_after=failback_after)
        self.fallback = masters or []
        self.check_in_s = int(self.doc.get("check_in_interval") or default_check_in_s)
        self.registered = False
        self.ever_registered = bool(self.config_hash)
        self.next_ms = self.hal.ticks_ms()
        self.last_ok_ms: int | None = None
        self.last_error: str | None = None
        self.identify_until: int | None = None
        self.acked = 0
        self.overrides = self.store.load(OVERRIDES_FILE, {})
        self.apply(self.doc, persist=False)

    # -- what the probe asks of it
    def due_in(self, now: int) -> int:
        return max(0, int(self.hal.ticks_diff(self.next_ms, now)))

    def takes_data(self) -> bool:
        return self.ever_registered and self.masters.current() is not None

    def status(self) -> "dict[str, Any]":
        here = self.masters.current()
        return {"registered": self.registered, "master": here["name"] if here else None,
                "masters": [m["name"] for m in self.masters.entries],
                "config_hash": self.config_hash, "config_version": self.doc.get("config_version"),
                "config_name": self.doc.get("config_name"), "config": self.doc.get("config"),
                "check_in_s": self.check_in_s, "last_error": self.last_error,
                "ota": self.ota.state.get("state"), "switches": self.masters.switches,
                "target_temp": self.overrides.get("target_temp"), "acked": self.acked,
                "transport": self.transport.kind}

    def fw(self) -> str:
        return self.ota.version(VERSION)

    # -- the state machine, one check-in per call when due
    def tick(self) -> None:
        now = self.hal.ticks_ms()
        if self.identify_until is not None and self.hal.ticks_diff(now, self.identify_until) >= 0:
            self.identify_until = None
            self.hal.set_led(False)
        for cmd in self.transport.incoming():
            self.run_command(cmd)
        if self.ota.trial_over(self.probe.uptime_s() * 1000):
            self.hal.reset()  # the new image never checked in: the next boot rolls it back
        if self.hal.ticks_diff(now, self.next_ms) < 0:
            return
        if not self.masters.entries:
            self.masters.update(self.fallback or self.derived_masters())
            if not self.masters.entries:
                self.next_ms = self.hal.ticks_add(now, self.check_in_s * 1000)
                return
        self.check_in()

    def derived_masters(self) -> "list[Any]":
        """No list yet: the hub that provisioned the probe is its master."""
        url = self.probe.server_url
        if url and url.endswith("/api/ingest"):
            url = url[:-len("/api/ingest")]
        return [{"name": "provisioning hub", "api_endpoint": url, "priority": 1}] if url else []

    def check_in(self) -> None:
        master = self.masters.current()
        if master is None:
            return
        now = self.hal.ticks_ms()
        try:
            if not self.registered:
                self.http.hub_token = self.probe.token or self.hub_token
                answer = self.transport.register(master, self.register_body())
                self.registered = True
                self.ever_registered = True
            else:
                if self.transport.refresh_due(master):
                    self.transport.refresh(master)
                answer = self.transport.heartbeat(master, self.heartbeat_body())
            self.after_answer(master, answer)
        except Refused as exc:
            # It answered, so it is not down; a hub without master control answers 404 to
            # everything: ask again at the normal pace, not every few seconds.
            self.last_error = "%s: %s" % (master["name"], exc)
            pace = self.check_in_s * 1000
            if exc.status == 404:
                self.registered = False  # it forgot us (or never knew): register next time
            elif exc.status == 401 and self.registered:
                # Our sensor token expired or was revoked: register again (with the hub
                # token) soon. A refused registration waits the normal pace.
                self.registered = False
                self.transport.forget_token(master)
                pace = self.retry_ms
            self.next_ms = self.hal.ticks_add(now, pace)
            return
        except Unreachable as exc:
            self.last_error = "%s: %s" % (master["name"], exc)
            if self.transport is not self.http:
                self.mqtt_failures += 1
                if self.mqtt_failures >= self.masters.tries:  # the broker is away: HTTP it is
                    self.mqtt_off_for = self.config_hash
                    self.use_transport(self.http)
            elif self.masters.failed():
                self.registered = False
            self.next_ms = self.hal.ticks_add(now, self.retry_ms)
            return
        self.masters.succeeded()
        self.mqtt_failures = 0
        self.last_ok_ms = now
        self.ota.checked_in()
        self.try_failback()
        self.next_ms = self.hal.ticks_add(self.hal.ticks_ms(), self.check_in_s * 1000)

    def after_answer(self, master: "Any", answer: "dict[str, Any]") -> None:
        if answer.get("masters"):
            self.masters.update(answer["masters"])
        interval = answer.get("check_in_interval")
        if isinstance(interval, (int, float)) and 1 <= interval <= 86400:
            self.check_in_s = int(interval)
        if answer.get("config_hash") != self.config_hash or answer.get("config_changed"):
            self.fetch_config(master, etag=self.config_hash)
        for cmd in answer.get("commands") or []:
            self.run_command(cmd)

    def try_failback(self) -> None:
        first = self.masters.higher()
        if first is None:
            return
        try:
            self.transport.config(first, self.probe.id, self.config_hash)
            ok = True
        except Unreachable:
            ok = False
        except Refused as exc:
            ok = exc.status == 401  # it answers (we hold no token of its yet): it is back
        if self.masters.higher_answered(ok):
            self.registered = False  # register with the first again on the next check-in
            self.next_ms = self.hal.ticks_ms()

    def fetch_config(self, master: "Any", etag: str | None) -> None:
        doc = self.transport.config(master, self.probe.id, etag)
        if doc is None:
            return  # 304: what we run is current
        if not isinstance(doc.get("config_hash"), str):
            raise Unreachable("a config answer without config_hash")
        self.apply(doc, persist=True)
        for cmd in doc.get("commands") or []:
            self.run_command(cmd)

    def apply(self, doc: "dict[str, Any]", *, persist: bool) -> None:
        """Take what the probe understands from a config document; keep the rest for /status."""
        if persist:
            if not doc.get("config_available", True):
                doc = dict(doc)  # no template: keep the fallback config, note the master's hash
                doc["config"] = self.doc.get("config")
            self.doc = doc
            self.config_hash = doc.get("config_hash")
            self.store.save(CONFIG_FILE, {"doc": doc, "config_hash": self.config_hash})
        if doc.get("masters"):
            self.masters.update(doc["masters"])
        interval = doc.get("check_in_interval")
        if isinstance(interval, (int, float)) and 1 <= interval <= 86400:
            self.check_in_s = int(interval)
        cfg = doc.get("config")
        if not isinstance(cfg, dict):
            cfg = {}
        ms = cfg.get("interval_ms")
        if ms is None and isinstance(cfg.get("polling_interval"), (int, float)):
            ms = int(cfg["polling_interval"] * 1000)
        if self.overrides.get("interval_ms"):
            ms = self.overrides["interval_ms"]
        if isinstance(ms, int) and 100 <= ms <= 86400000:
            self.probe.interval_ms = ms
        self.probe.extra_status["target_temp"] = self.overrides.get("target_temp")
        self.choose_transport(cfg.get("mqtt"))

    def choose_transport(self, mq: "Any") -> None:
        """MQTT when the config names a broker (``mqtt: {host, port?, base}``), else HTTP."""
        usable = isinstance(mq, dict) and isinstance(mq.get("host"), str) and \
            isinstance(mq.get("base"), str) and self.mqtt_off_for != self.config_hash
        if not usable:
            if self.transport is not self.http:
                self.use_transport(self.http)
            return
        port = mq.get("port", 1883)
        port = port if isinstance(port, int) else 1883
        if self.transport is not self.http and self.transport.same_broker(mq["host"], port, mq["base"]):
            return
        self.use_transport(MqttTransport(self.hal, self.probe.id, host=mq["host"], port=port,
                                         base=mq["base"]))

    def use_transport(self, transport: "Any") -> None:
        if self.transport is not self.http:
            self.transport.close()
        self.transport = transport
        self.registered = False  # register on the new path: the hub answers there
        self.next_ms = self.hal.ticks_ms()

    # -- bodies
    def register_body(self) -> "dict[str, Any]":
        return {"sensor_id": self.probe.id, "sensor_name": self.probe.name,
                "sensor_type": self.sensor_type, "hardware_info": self.hal.hardware(),
                "firmware_version": self.fw(), "ip_address": self.hal.ip(),
                "mac_address": self.hal.mac(), "capabilities": CAPABILITIES}

    def heartbeat_body(self) -> "dict[str, Any]":
        p = self.probe
        return {"sensor_id": p.id, "status": "online", "config_hash": self.config_hash,
                "metrics": {"uptime": p.uptime_s(), "free_memory": self.hal.free_memory(),
                            "wifi_rssi": self.hal.rssi(), "buffered": p.buffer.count,
                            "dropped": p.buffer.dropped, "boot_id": p.boot_id,
                            "firmware_version": self.fw(), "interval_ms": p.interval_ms}}

    # -- readings
    def send_data(self, readings: "list[Any]") -> int:
        """POST readings as one batch; all or nothing (the master's replay is idempotent)."""
        master = self.masters.current()
        if master is None or not readings:
            return 0
        batch = []
        for r in readings:
            item = {"id": r.get("i") or "%s-%s" % (self.probe.boot_id, r.get("n")),
                    "readings": r["r"]}
            if r.get("t"):
                item["timestamp"] = iso_utc(r["t"])
            batch.append(item)
        cfg = self.doc.get("config")
        url = cfg.get("data_endpoint") if isinstance(cfg, dict) else None
        url = url if isinstance(url, str) and url.startswith("http://") else None
        try:
            self.transport.data(master, {"sensor_id": self.probe.id, "batch": batch}, url)
        except Refused as exc:
            if exc.status in (401, 404):  # register again (a new token); the readings wait
                self.registered = False
                return 0
            self.probe.rejected += len(readings)  # the master will never take these
            self.probe.error("the master refused readings: %s" % exc)
            return len(readings)
        except Unreachable as exc:
            self.probe.error("data: %s" % exc)
            return 0
        self.probe.delivered += len(readings)
        return len(readings)

    # -- commands
    def run_command(self, cmd: "Any") -> None:
        if not isinstance(cmd, dict) or not isinstance(cmd.get("command_id"), str):
            self.last_error = "a command without a command_id was ignored"
            return
        cid = cmd["command_id"]
        before = self.ring.status_of(cid)
        if before is not None:  # seen before: acknowledge again, never run again
            self.send_ack(cid, before, {"duplicate": True})
            return
        status, result, after = self.execute(cmd)
        self.ring.remember(cid, status)
        self.send_ack(cid, status, result)
        if after is not None:
            after()

    def send_ack(self, cid: str, status: str, result: "Any") -> None:
        master = self.masters.current()
        if master is None:
            return
        body = {"command_id": cid, "sensor_id": self.probe.id, "status": status, "result": result}
        try:
            self.transport.ack(master, cid, body)
            self.acked += 1
        except (Unreachable, Refused) as exc:
            self.last_error = "ack %s: %s" % (cid, exc)  # the master sends it again; we re-ack

    def execute(self, cmd: "dict[str, Any]") -> "tuple[str, Any, Any]":
        """``(status, result, what to do after the ack)`` for one new command."""
        kind = cmd.get("command_type")
        data = cmd.get("command_data") or {}
        if len(json.dumps(data)) > MAX_COMMAND_DATA:
            return "failed", {"error": "command_data larger than %d bytes" % MAX_COMMAND_DATA}, None
        if not isinstance(data, dict):
            return "failed", {"error": "command_data must be an object"}, None
        handler = HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            return "failed", {"error": "unknown command_type %r" % (kind,)}, None
        try:
            return handler(self, data)
        except (ValueError, TypeError, KeyError) as exc:
            return "failed", {"error": "%s: %s" % (kind, exc)}, None

    def save_override(self, key: str, value: "Any") -> None:
        self.overrides[key] = value
        self.store.save(OVERRIDES_FILE, self.overrides)


def _restart(client: MasterClient, data: "dict[str, Any]") -> "tuple[str, Any, Any]":
    return "completed", {"restarting": True}, client.hal.reset


def _update_config(client: MasterClient, data: "dict[str, Any]") -> "tuple[str, Any, Any]":
    master = client.masters.current()
    try:
        client.fetch_config(master, etag=None)
    except (Unreachable, Refused) as exc:
        return "failed", {"error": "config fetch: %s" % exc}, None
    return "completed", {"config_hash": client.config_hash}, None


def _set_interval(client: MasterClient, data: "dict[str, Any]") -> "tuple[str, Any, Any]":
    ms = data.get("interval_ms")
    if ms is None and isinstance(data.get("interval"), (int, float)):
        ms = int(data["interval"] * 1000)
    if isinstance(ms, bool) or not isinstance(ms, int) or not 100 <= ms <= 86400000:
        raise ValueError("give interval_ms (100 to 86400000) or interval in seconds")
    client.save_override("interval_ms", ms)
    client.probe.interval_ms = ms
    return "completed", {"interval_ms": ms}, None


def _set_target_temp(client: MasterClient, data: "dict[str, Any]") -> "tuple[str, Any, Any]":
    target = data.get("target")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not -50 <= target <= 150:
        raise ValueError("target must be a number of °C from -50 to 150")
    client.save_override("target_temp", target)
    client.probe.extra_status["target_temp"] = target
    return "completed", {"target": target}, None


def _identify(client: MasterClient, data: "dict[str, Any]") -> "tuple[str, Any, Any]":
    seconds = data.get("seconds", 10)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 600:
        raise ValueError("seconds must be from 1 to 600")
    client.hal.set_led(True)
    client.identify_until = client.hal.ticks_add(client.hal.ticks_ms(), int(seconds * 1000))
    return "completed", {"seconds": seconds}, None


def _ota(client: MasterClient, data: "dict[str, Any]") -> "tuple[str, Any, Any]":
    try:
        result = client.ota.install(data.get("url"), data.get("sha256"),  # type: ignore[arg-type]
                                    str(data.get("version") or "unknown"), client.fw())
    except OtaError as exc:
        return "failed", {"error": str(exc)}, None
    return "completed", result, client.hal.reset


HANDLERS = {"restart": _restart, "update_config": _update_config, "set_interval": _set_interval,
            "set_target_temp": _set_target_temp, "identify": _identify, "ota": _ota}
