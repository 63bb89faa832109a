"""Master control over MQTT (``B/sensors/{s}/...``): sensors register, heart-beat, acknowledge
commands and upload data; the bridge forwards each to the aggregator's internal ``/master``
routes, which hold the state and answer the same as over HTTP.

Out: ``sensors/{s}/config`` (retained) on registration, whenever the effective config changes
(the aggregator's master feed says so), when a heartbeat shows the sensor out of sync, and all of
them after every (re)connection; ``sensors/{s}/commands`` (not retained) for every open command on
register and heartbeat, and at once when one is queued. What a sensor sends that cannot be served
(bad JSON, an unknown sensor, a full queue) is answered on ``devices/{s}/error``: every sensor is a
device.

Inbound handlers run on paho's network thread: they only hand the work to a bounded pool
(``busy`` beyond it), as the other features do. One sensor's messages always go to the same
worker, so they are served in the order they came: a sensor that registers and sends data at
once is registered first.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

from shared.errors import ServiceError, TopicError
from shared.jsonutil import NotAJsonObject, loads_object
from shared.timeutil import iso
from shared.topics import Route, RouteKind, validate_id

from ..context import BridgeContext
from ..workers import Workers
from .base import Feature, Inbound

log = logging.getLogger(__name__)

MASTER_QUEUE = 512
MASTER_THREADS = 4  # each job is one or two loopback requests; 1,000 sensors every 10 s = 100/s
LONG_POLL_S = 20
CONFIG_BATCH = 200  # ids per /master/sensor-configs request
RETRY_MAX_S = 10.0

Job = Callable[[str, dict[str, Any]], None]


class MasterFeature(Feature):
    name = "master"

    def __init__(self, ctx: BridgeContext) -> None:
        super().__init__(ctx)
        # one thread each, a sensor's messages always on the same one (crc32 of its id)
        self._workers = [Workers(f"master-{i}", size=1, capacity=MASTER_QUEUE // MASTER_THREADS)
                         for i in range(MASTER_THREADS)]
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        self.published_configs = 0
        self.published_commands = 0
        self.received = 0  # sensor messages handed to the workers or refused (paho's thread)

    def handlers(self) -> dict[RouteKind, Inbound]:
        return {"sensor_register": self._inbound(self._register),
                "sensor_heartbeat": self._inbound(self._heartbeat),
                "sensor_ack": self._inbound(self._ack),
                "sensor_data": self._inbound(self._data)}

    def start(self) -> None:
        for workers in self._workers:
            workers.start()
        self._follower = threading.Thread(target=self._follow, name="master-feed", daemon=True)
        self._follower.start()

    def stop(self) -> None:
        self._stop.set()
        for workers in self._workers:
            workers.stop()

    def on_connect(self) -> None:
        """Retained configs may be gone (a broker without persistence): publish them all."""
        try:
            page = self.ctx.aggregator.get("/master/sensor-configs", timeout=30)
        except ServiceError as exc:
            log.warning("master control: cannot republish sensor configs: %s", exc)
            return
        for message in page["configs"]:
            self._publish_config(message)

    # --- inbound ---------------------------------------------------------------------------------
    def _inbound(self, job: Job) -> Inbound:
        def handle(route: Route, payload: bytes, retained: bool) -> None:
            if retained:
                return  # a message left on the broker is not a sensor speaking now
            sensor_id = route.target
            self.received += 1
            workers = self._workers[zlib.crc32(sensor_id.encode()) % len(self._workers)]
            if not workers.offer(lambda: self._run(job, sensor_id, payload)):
                self._error(sensor_id, "BUSY", "master control is busy: too many sensor "
                                               "messages queued; send again later")
        return handle

    def _run(self, job: Job, sensor_id: str, payload: bytes) -> None:
        try:
            body = loads_object(payload, what="payload")
        except NotAJsonObject as exc:
            self._error(sensor_id, "INVALID_REQUEST", str(exc))
            return
        given = body.get("sensor_id")
        if given is not None and given != sensor_id:
            self._error(sensor_id, "INVALID_REQUEST",
                        f"payload sensor_id {given!r} is not the topic's {sensor_id!r}")
            return
        body["sensor_id"] = sensor_id
        try:
            job(sensor_id, body)
        except ServiceError as exc:
            if exc.status and isinstance(exc.body, dict):
                self._error(sensor_id, str(exc.body.get("error", "error")).upper(),
                            str(exc.body.get("message", exc)))
            else:
                log.warning("master control: %s", exc)
                self._error(sensor_id, "HUB_UNAVAILABLE",
                            "master control is not reachable right now; send again later")

    def _register(self, sensor_id: str, body: dict[str, Any]) -> None:
        answer = self.ctx.aggregator.post("/master/register", body)
        self._publish_configs([sensor_id])
        self._publish_commands(sensor_id, answer.get("commands", []))

    def _heartbeat(self, sensor_id: str, body: dict[str, Any]) -> None:
        answer = self.ctx.aggregator.request("POST", "/master/heartbeat", body=body,
                                             params={"include_config": "1"})
        if answer.get("config_message") is not None:  # out of sync: its config again
            self._publish_config(answer["config_message"])
        self._publish_commands(sensor_id, answer.get("commands", []))

    def _ack(self, sensor_id: str, body: dict[str, Any]) -> None:
        command_id = body.get("command_id")
        try:
            validate_id(command_id if isinstance(command_id, str) else "", "command_id")
        except TopicError as exc:
            self._error(sensor_id, "INVALID_REQUEST", str(exc))
            return
        self.ctx.aggregator.post(f"/master/commands/{command_id}/ack", body)

    def _data(self, _sensor_id: str, body: dict[str, Any]) -> None:
        self.ctx.aggregator.post("/master/data", body)

    # --- outbound --------------------------------------------------------------------------------
    def _error(self, sensor_id: str, code: str, message: str) -> None:
        self.ctx.answers.json(self.ctx.topics.error(sensor_id), {
            "timestamp": iso(), "error_code": code, "message": message, "severity": "warning"})

    def _publish_config(self, message: dict[str, Any]) -> None:
        self.ctx.publisher.json(self.ctx.topics.sensor_config(message["sensor_id"]), message,
                                qos=1, retain=True)
        self.published_configs += 1

    def _publish_configs(self, sensor_ids: list[str]) -> None:
        for start in range(0, len(sensor_ids), CONFIG_BATCH):
            chunk = sensor_ids[start:start + CONFIG_BATCH]
            page = self.ctx.aggregator.get("/master/sensor-configs",
                                           params={"sensor_id": ",".join(chunk)}, timeout=30)
            for message in page["configs"]:
                self._publish_config(message)

    def _publish_commands(self, sensor_id: str, commands: list[dict[str, Any]]) -> None:
        for command in commands:
            self.ctx.publisher.json(self.ctx.topics.sensor_commands(sensor_id), command, qos=1)
            self.published_commands += 1

    # --- the aggregator's master feed ------------------------------------------------------------
    def _follow(self) -> None:
        """Long-poll the feed: republish changed configs, publish newly queued commands."""
        epoch: str | None = None
        seq = 0
        delay = 0.5
        while not self._stop.is_set():
            try:
                if epoch is None:
                    # A new feed (start, aggregator restart): its position; on_connect and
                    # register publish what exists, the feed what changes from here on.
                    first = self.ctx.aggregator.get("/master/changes", params={"since": 0},
                                                    timeout=10)
                    epoch, seq = first["epoch"], first["seq"]
                    if self.ctx.client.connected.is_set():
                        self.on_connect()  # what changed while the feed was out of reach
                    continue
                page = self.ctx.aggregator.get(
                    "/master/changes", params={"since": seq, "epoch": epoch, "wait": LONG_POLL_S},
                    timeout=LONG_POLL_S + 10)
                if page["resync"]:
                    epoch = None
                    continue
                seq = page["seq"]
                self._apply(page["changes"])
                delay = 0.5
            except (ServiceError, KeyError, TypeError) as exc:
                log.debug("master feed: %s; retrying in %.1f s", exc, delay)
                epoch = None
                self._stop.wait(delay)  # the aggregator restarting, or master control off
                delay = min(delay * 2, RETRY_MAX_S)

    def _apply(self, changes: list[dict[str, Any]]) -> None:
        if not self.ctx.client.connected.is_set():
            return  # on_connect publishes every config after the reconnection
        started = time.monotonic()
        configs = list(dict.fromkeys(c["sensor_id"] for c in changes if c["kind"] == "config"))
        self._publish_configs(configs)
        for sensor_id in dict.fromkeys(c["sensor_id"] for c in changes if c["kind"] == "command"):
            try:
                answer = self.ctx.aggregator.post(f"/master/sensors/{sensor_id}/deliver")
            except ServiceError as exc:
                if exc.status != 404:
                    raise
                continue  # deleted since the command was queued: nothing to deliver
            self._publish_commands(sensor_id, answer["commands"])
        if len(configs) > 100:
            log.info("master control: %d sensor configs republished in %.2f s", len(configs),
                     time.monotonic() - started)
