"""The probe: its HTTP face (``/whoami``, ``/status``, ``/provision``, the setup page), sampling
on its interval, delivery to the hub with the offline buffer in between, and the hooks the master
control client plugs into. One ``step()`` does a bounded slice of work, so one loop serves a real
device and a thread per virtual probe alike."""

from . import VERSION
from .hal import Hal
from .ringbuf import RecordTooLarge, RingBuffer
from .store import Store
from .timefmt import iso_utc
from .web import REASONS, HttpError, parse_form, read_request, request, send_response

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SERVICE = "_temps-probe._tcp"
PROVISION_FILE = "provision.json"
WIFI_FILE = "wifi.json"
MIN_INTERVAL_MS = 100
MAX_INTERVAL_MS = 86400000
BATCH = 20  # readings per upload slice: the loop serves HTTP between slices
MAX_BACKOFF_MS = 30000
SETUP_PAGE = """<!doctype html><title>Probe setup</title><h1>Probe %s</h1>
<form method=post action=/setup>Wi-Fi name <input name=ssid required><br>
Password <input name=password type=password><br>Hub URL (optional) <input name=hub><br>
<button>Save and restart</button></form>"""


def validate_provision(body: "Any") -> "tuple[Any, ...]":
    """``{server_url, interval_ms, token}`` → the three values; ``HttpError(422)`` naming the
    field otherwise."""
    if not isinstance(body, dict):
        raise HttpError(422, "the body must be a JSON object {server_url, interval_ms, token}")
    url = body.get("server_url")
    if not isinstance(url, str) or not url.startswith("http://") or len(url) > 200:
        raise HttpError(422, "server_url must be an http:// URL of at most 200 characters")
    interval = body.get("interval_ms")
    if isinstance(interval, bool) or not isinstance(interval, int) or not (
            MIN_INTERVAL_MS <= interval <= MAX_INTERVAL_MS):
        raise HttpError(422, "interval_ms must be an integer from %d to %d" % (
            MIN_INTERVAL_MS, MAX_INTERVAL_MS))
    token = body.get("token") or ""
    if not isinstance(token, str) or len(token) > 128:
        raise HttpError(422, "token must be a string of at most 128 characters")
    return url.rstrip("/"), interval, token


def ingest_url(server_url: str) -> str:
    """The hub gives its base URL (``http://hub:8088``); older hubs give the ingest URL itself."""
    return server_url if server_url.endswith("/api/ingest") else server_url + "/api/ingest"


class Probe:
    def __init__(self, hal: Hal, probe_id: str, *, sensor: "Any", name: str | None = None,
                 http_port: int = 80, hub: str | None = None, buffer_slots: int = 200,
                 interval_ms: int = 10000) -> None:
        self.hal = hal
        self.id = probe_id
        self.name = name or probe_id
        self.sensor = sensor
        self.store = Store(hal)
        self.boot_id = hal.random_hex(8)
        self.started = hal.ticks_ms()
        prov = self.store.load(PROVISION_FILE, {})
        self.server_url = prov.get("server_url") or hub
        self.interval_ms = int(prov.get("interval_ms") or interval_ms)
        self.token = prov.get("token") or ""
        self.provisioned = bool(prov.get("server_url"))
        self.buffer = RingBuffer(hal, "buffer", buffer_slots)
        self.last_error: str | None = None
        self.delivered = 0
        self.taken = 0
        self.rejected = 0
        self.setup_mode = False
        self.master: Any = None  # the master control client, when one is attached
        self.extra_status: dict[str, Any] = {}  # what the master config adds to /status
        self.http_port = http_port
        self.sock: Any = None
        now = hal.ticks_ms()
        self.next_sample = now
        self.next_upload = now
        self.backoff_ms = 1000
        self.batch_form = True  # the hub takes {batch: [...]} (a hub from before it does not)
        self.stopping = False

    # lifecycle
    def start(self) -> None:
        self.sock = self.hal.listen(self.http_port)
        self.http_port = self.hal.bound_port(self.sock)
        self.hal.advertise(SERVICE, self.http_port, {"id": self.id, "name": self.name,
                                                     "fw": self.fw(), "mac": self.hal.mac()})

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def run(self) -> None:
        self.start()
        try:
            while not self.stopping:
                self.step()
        finally:
            self.close()

    def fw(self) -> str:
        """The running image's version (an OTA update changes it)."""
        return str(self.master.fw()) if self.master is not None else VERSION

    def uptime_s(self) -> int:
        return self.hal.ticks_diff(self.hal.ticks_ms(), self.started) // 1000

    def error(self, message: str) -> None:
        self.last_error = message

    # one slice of work
    def step(self) -> None:
        hal = self.hal
        hal.feed_watchdog()
        now = hal.ticks_ms()
        wait = hal.ticks_diff(self.next_sample, now)
        if self.buffer.count:
            wait = min(wait, hal.ticks_diff(self.next_upload, now))
        if self.master is not None:
            wait = min(wait, self.master.due_in(now))
        if hal.wait_readable(self.sock, max(0, min(wait, 500))):
            self.serve()
        hal.poll_background()
        if self.setup_mode:
            return
        now = hal.ticks_ms()
        if hal.ticks_diff(now, self.next_sample) >= 0:
            self.next_sample = hal.ticks_add(now, self.interval_ms)
            self.sample()
        if self.buffer.count and hal.ticks_diff(hal.ticks_ms(), self.next_upload) >= 0:
            self.upload()
        if self.master is not None:
            self.master.tick()

    # readings
    def destination(self) -> bool:
        return bool(self.server_url) or (self.master is not None and self.master.takes_data())

    def sample(self) -> None:
        if not self.destination():
            return  # never told where to send: nothing to keep readings for
        try:
            values = self.sensor.read()
        except Exception as exc:  # a sensor fault must not stop the probe
            self.error("sensor: %s" % exc)
            return
        self.taken += 1
        # The id makes a replayed upload idempotent at the master: unique across boots.
        reading = {"t": self.hal.time_s(), "r": values, "i": "%s-%d" % (self.boot_id, self.taken)}
        if not self.buffer.count and self.deliver([reading]) == 1:
            return
        try:
            self.buffer.append(reading)
        except RecordTooLarge as exc:
            self.error(str(exc))
        if self.buffer.count == 1:
            self.next_upload = self.hal.ticks_add(self.hal.ticks_ms(), self.backoff_ms)

    def upload(self) -> None:
        """Send the oldest buffered readings, in order; on failure back off and keep them."""
        self.hal.collect()
        batch = self.buffer.peek(BATCH)
        good = [r for r in batch if r is not None]
        if len(good) < len(batch):
            self.error("dropped %d torn buffer records" % (len(batch) - len(good)))
        done = self.deliver(good) if good else 0
        if done == len(good):
            self.buffer.drop_oldest(len(batch))
            self.backoff_ms = 1000
            self.next_upload = self.hal.ticks_ms()
            return
        self.buffer.drop_oldest(batch.index(good[done]) if done else 0)
        self.next_upload = self.hal.ticks_add(self.hal.ticks_ms(), self.backoff_ms)
        self.backoff_ms = min(self.backoff_ms * 2, MAX_BACKOFF_MS)

    def deliver(self, readings: "list[Any]") -> int:
        """How many of ``readings`` (oldest first) the hub took before the first failure."""
        if self.master is not None and self.master.takes_data():
            return int(self.master.send_data(readings))
        if not self.server_url:
            return 0
        headers = {"X-Token": self.token} if self.token else None
        url = ingest_url(self.server_url)
        if len(readings) > 1 and self.batch_form:
            sent = self.deliver_batch(readings, url, headers)
            if sent is not None:
                return sent
            self.batch_form = False  # until the next provisioning or boot: one by one
        return self.deliver_each(readings, url, headers)

    def deliver_batch(self, readings: "list[Any]", url: str, headers: "Any") -> "int | None":
        """Buffered readings in one request, each with the time it was sampled (when the clock
        was set): all or none. ``None`` when the hub refuses the batch (a hub without the batch
        form, or a clock it does not trust): then they go one by one, stamped on arrival."""
        batch = []
        for reading in readings:
            item = dict(reading["r"])
            if reading.get("t"):
                item["timestamp"] = iso_utc(reading["t"])
            batch.append(item)
        try:
            resp = request(self.hal, "POST", url, {"probe_id": self.id, "batch": batch}, headers,
                           timeout_s=5.0, max_body=1024)
        except (OSError, HttpError, ValueError) as exc:
            self.error("upload to %s: %s" % (url, exc))
            return 0
        if resp.status == 200:
            self.delivered += len(readings)
            return len(readings)
        if resp.status in (400, 413, 422):
            why = resp.body[:120].decode("utf-8", "replace")
            self.error("the hub refused a batch (%d): %s" % (resp.status, why))
            return None
        self.error("upload to %s: HTTP %d" % (url, resp.status))
        return 0

    def deliver_each(self, readings: "list[Any]", url: str, headers: "Any") -> int:
        done = 0
        for reading in readings:
            body = {"probe_id": self.id}
            body.update(reading["r"])
            try:
                resp = request(self.hal, "POST", url, body, headers, timeout_s=3.0, max_body=1024)
            except (OSError, HttpError, ValueError) as exc:
                self.error("upload to %s: %s" % (url, exc))
                return done
            if resp.status in (400, 413, 422):
                self.rejected += 1  # the hub will never take it: sending it again is pointless
                why = resp.body[:120].decode("utf-8", "replace")
                self.error("the hub refused a reading (%d): %s" % (resp.status, why))
            elif resp.status != 200:
                self.error("upload to %s: HTTP %d" % (url, resp.status))
                return done
            else:
                self.delivered += 1
            done += 1
        return done

    # HTTP
    def serve(self) -> None:
        try:
            conn, _addr = self.sock.accept()
        except OSError:
            return
        try:
            conn.settimeout(2.0)
            try:
                req = read_request(conn)
                status, body, ctype = self.route(req)
            except HttpError as exc:
                reason = REASONS.get(exc.status, "error").lower().replace(" ", "_")
                status, ctype = exc.status, "application/json"
                body = {"ok": False, "error": reason, "message": exc.message}
            send_response(conn, status, body, ctype)
        except OSError:
            pass  # the client went away; nothing to answer
        finally:
            conn.close()

    def route(self, req: "Any") -> "tuple[Any, ...]":
        key = (req.method, req.path)
        if key == ("GET", "/whoami"):
            who = {"id": self.id, "name": self.name, "mac": self.hal.mac(), "fw": self.fw()}
            return 200, who, "application/json"
        if key == ("GET", "/status"):
            return 200, self.status(), "application/json"
        if key == ("POST", "/provision"):
            return 200, self.provision(req.json()), "application/json"
        if key == ("GET", "/"):
            return 200, (SETUP_PAGE % self.id).encode(), "text/html"
        if key == ("POST", "/setup"):
            return 200, self.setup(req.body), "application/json"
        if req.path in ("/whoami", "/status", "/provision", "/", "/setup"):
            raise HttpError(405, "%s is not allowed on %s" % (req.method, req.path))
        raise HttpError(404, "no such path: %s" % req.path[:60])

    def provision(self, body: "Any") -> "dict[str, Any]":
        url, interval, token = validate_provision(body)
        self.server_url, self.interval_ms, self.token = url, interval, token
        self.provisioned = True
        self.batch_form = True
        self.store.save(PROVISION_FILE, {"server_url": url, "interval_ms": interval, "token": token})
        self.next_sample = self.hal.ticks_ms()
        return {"ok": True}

    def setup(self, raw: bytes) -> "dict[str, Any]":
        try:
            fields = parse_form(raw.decode())
        except UnicodeError:
            raise HttpError(400, "the form is not UTF-8") from None
        ssid = fields.get("ssid", "")
        if not ssid or len(ssid) > 32:
            raise HttpError(422, "ssid is required (at most 32 characters)")
        creds = {"ssid": ssid, "password": fields.get("password", "")[:64]}
        hub = fields.get("hub", "")
        if hub:
            if not hub.startswith("http://"):
                raise HttpError(422, "the hub URL must start with http://")
            creds["hub"] = hub
        self.store.save(WIFI_FILE, creds)
        self.stopping = True  # the boot code resets into station mode with the credentials
        return {"ok": True, "message": "saved; restarting to join %s" % ssid}

    def status(self) -> "dict[str, Any]":
        out = {"id": self.id, "name": self.name, "fw": self.fw(), "server_url": self.server_url,
               "interval_ms": self.interval_ms, "uptime_s": self.uptime_s(),
               "boot_id": self.boot_id, "provisioned": self.provisioned,
               "last_error": self.last_error, "buffered": self.buffer.count,
               "dropped": self.buffer.dropped, "delivered": self.delivered,
               "rejected": self.rejected, "free_memory": self.hal.free_memory(),
               "rssi": self.hal.rssi(), "sensor": getattr(self.sensor, "kind", "unknown")}
        out.update(self.extra_status)
        if self.master is not None:
            out["master"] = self.master.status()
        return out

