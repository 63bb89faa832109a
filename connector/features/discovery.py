"""Home Assistant MQTT discovery (``HA_DISCOVERY_MODE=entity|device|off``).

One thread keeps the broker's retained discovery configs equal to what the mirror holds: it
publishes every config after each connect, the configs of a new device or property as soon as
the mirror has them, everything again (after a random delay, paced over a few seconds) when
Home Assistant announces ``online`` on ``{prefix}/status``, and an empty retained payload for
what disappeared. The ledger on disk remembers what earlier runs published, so a restart with a
changed instance file, prefix or mode clears their leftovers too, and the retained device topics
of a device that was removed while the hub was down.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

from shared import CONNECTOR_TYPE, __version__
from shared.compact import give_back_soon
from shared.errors import TopicError
from shared.instance import Instance, PropertySpec
from shared.models import to_json
from shared.topics import DiscoveryTopics, Route, RouteKind

from ..context import BridgeContext, DeviceRecord
from ..ha.builder import ERROR_KEY, EVENT_KEY, Builder, DeviceView, Origin
from ..ha.ledger import FILE_NAME, Entry, Ledger, absent, fingerprint, plan
from ..ha.props import infer
from .base import Feature, Inbound

log = logging.getLogger(__name__)

CHECK_EVERY_S = 1.0  # how soon a new device or property is discovered
HA_ONLINE_DELAY_S = (0.5, 3.0)  # random delay before answering Home Assistant's "online"
SPREAD_S = 3.0  # a full republish for Home Assistant is paced over this long
CHUNK = 100
DEVICES_PER_CHUNK = 200  # configs are built this many devices at a time
# A round that published or cleared at least this many configs packs what it keeps (Ledger.pack).
PACK_AFTER = 1000
# Events a device of a source emits whatever its properties say (see services/http_poller/lan.py).
SOURCE_EVENTS = {"probe": ("probe_rebooted",)}


def declared_properties(instance: Instance) -> dict[str, dict[str, PropertySpec]]:
    """Each sensor's declared properties; equal declarations are one shared (read-only) dict."""
    shared: dict[bytes, dict[str, PropertySpec]] = {}
    return {s.sensor_id: shared.setdefault(to_json(s.properties), s.properties)
            for s in instance.config.sensors}


class DiscoveryFeature(Feature):
    name = "discovery"

    def __init__(self, ctx: BridgeContext) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.mode = settings.ha_discovery_mode
        self.discovery = DiscoveryTopics(settings.ha_discovery_prefix)
        self.builder = Builder(ctx.topics, self.discovery, ctx.instance.friendly_name,
                               Origin(CONNECTOR_TYPE, __version__, settings.ha_support_url))
        self.ledger: Ledger | None = None
        # What the instance file declares of each sensor's properties: all discovery needs of
        # it (the bridge does not keep the sensors' other settings). Sensors of one kind
        # declare the same: one copy each (10,000 sensors' specs were 6 MB).
        self._declared = declared_properties(ctx.instance)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._connected = False
        self._full_at: float | None = None  # monotonic time of a pending full republish
        self._spread = 0.0
        # What this process published, as fingerprints, and the last round's signatures as
        # hashes: none of it holds a copy of the configs or of the devices (10,000 devices
        # made the configs alone over 100 MB).
        self._published: dict[str, int] = {}
        self._signature: int | None = None
        self._quick: int | None = None
        self.rounds = 0
        self.packs = 0  # rounds after which the ledger and fingerprints were packed

    def handlers(self) -> dict[RouteKind, Inbound]:
        return {} if self.mode == "off" else {"ha_status": self._on_ha_status}

    def start(self) -> None:
        self.ledger = Ledger(self.ctx.settings.data_dir / FILE_NAME)
        threading.Thread(target=self._loop, name="discovery", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def on_connect(self) -> None:
        self._request_full(delay=0.0, spread=0.0)

    def republish(self) -> None:
        """Every config again (``meta/request/rebirth``)."""
        if self.mode != "off":
            self._request_full(delay=0.0, spread=0.0)

    def _on_ha_status(self, _route: Route, payload: bytes, retained: bool) -> None:
        # paho's thread: only schedule. A retained "online" is an old birth, not a restart.
        if retained or payload.strip().lower() != b"online":
            return
        delay = random.uniform(*HA_ONLINE_DELAY_S)
        log.info("Home Assistant is online: republishing discovery in %.1f s", delay)
        self._request_full(delay=delay, spread=SPREAD_S)

    def _request_full(self, *, delay: float, spread: float) -> None:
        with self._lock:
            self._connected = True
            self._full_at = time.monotonic() + delay
            self._spread = spread
        self._wake.set()

    # --- the loop ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._wake.wait(self.next_wait()):
                self._wake.clear()
            if self._stop.is_set() or not self._connected or not self.ctx.mirror.synced:
                continue
            try:
                self._round()
                give_back_soon()  # the round's views and configs are gone
            except Exception:
                log.exception("discovery round failed; retrying")
                self._stop.wait(CHECK_EVERY_S)

    def next_wait(self) -> float:
        """Seconds until the next round: the time a full republish is due, but only once the
        mirror can be published. Until the state feature has synced it (a restarted bridge
        replays its backlog first, for as long as that takes) a due republish cannot start,
        and waiting for it (0 s, again and again) was a busy loop that held the GIL from the
        state publisher and paho's thread: a restarted bridge replayed at a tenth of its
        speed."""
        with self._lock:
            due = self._full_at
        if due is None or not self.ctx.mirror.synced:
            return CHECK_EVERY_S
        return min(CHECK_EVERY_S, max(0.0, due - time.monotonic()))

    def _round(self) -> None:
        with self._lock:
            full = self._full_at is not None and self._full_at <= time.monotonic()
            spread = self._spread if full else 0.0
            if full:
                self._full_at = None
        # Cheap first: the registry entries and property names as the mirror holds them; the
        # views (property inference per device) are only built when that moved.
        quick = self._quick_signature()
        if not full and quick == self._quick:
            return
        sent, cleared, signature = self.reconcile(self.inputs(), full=full, spread=spread)
        if sent + cleared >= PACK_AFTER and self.ledger is not None:
            # The round's views and configs are gone before what it keeps is packed.
            self._published = self.ledger.pack(self._published)
            self.packs += 1
        self._signature, self._quick = signature, quick

    def _quick_signature(self) -> int:
        return hash(tuple((d, rec.info_json, tuple(rec.state.values) if rec.state else ())
                          for d, rec in list(self.ctx.mirror.devices.items())))

    def inputs(self) -> list[DeviceRecord]:
        """What the round's views are made of, as the mirror holds it now: the round's own copy
        of each record, so the views it builds again (each pass makes those of a few devices at
        a time) are equal whatever the state publisher changes meanwhile (it sets a record's
        info and state anew, never changes them in place)."""
        return [DeviceRecord(d, rec.info_json, rec.online, rec.state)
                for d, rec in list(self.ctx.mirror.devices.items())]

    def view(self, item: DeviceRecord) -> DeviceView:
        """One device as discovery sees it: its registry entry (without its availability, which
        is part of no config), the properties inferred from its last values and its events."""
        info = item.info_with(online=False, last_seen=None)
        values: dict[str, Any] = item.state.values if item.state else {}
        props = infer(values, self._declared.get(item.device_id, {}), info.units)
        events = {e for p in props for e in p.events} | set(SOURCE_EVENTS.get(info.source, ()))
        return DeviceView(info, props, tuple(sorted(events)))

    def reconcile(self, items: list[DeviceRecord], *, full: bool, spread: float = 0.0
                  ) -> tuple[int, int, int]:
        """Publish what changed (everything when ``full``), clear what is gone; returns the
        number of configs published and cleared and the round's signature (a hash that changes
        when the views or the devices left alone do). Unless ``full``, a round whose signature
        is the last one's publishes and clears nothing.

        The views and configs are built ``DEVICES_PER_CHUNK`` devices at a time, twice: first
        to learn the signature, which topics should exist (what is gone is cleared before
        anything new is published, so a mode change never shows Home Assistant two configs of
        one entity) and which differ from what was published, then again only for the devices
        that have something to send. Nothing of them is kept: the views of 10,000 devices at
        once and their configs (about 40 MB) were a peak that a Python process keeps."""
        assert self.ledger is not None
        ledger = self.ledger.entries
        ledgered = {e.device for e in ledger.values()}
        previous = None if full else self._published
        # The devices to leave alone (no state yet, but an earlier run published them: their
        # properties are not known again yet); off clears everything all the same (it wants
        # no config at all).
        frozen: set[str] = set()
        hashes: list[int] = []
        wanted: set[str] = set()
        entries: dict[str, Entry] = {}
        send: set[str] = set()
        to_send: set[str] = set()  # the devices (``""``: the hub) with configs in ``send``
        for i, chunk in enumerate(self._chunks(items)):
            views = [self.view(item) for item in chunk]
            hashes.append(hash(to_json([(v.info, v.props, v.events) for v in views])))
            held = {r.device_id for r in chunk
                    if r.device_id in ledgered and not (r.state and r.state.values)}
            frozen |= held
            desired = self._desired(views, hub=i == 0)
            del views
            todo = plan(desired, ledger, frozen=frozenset(held), previous=previous, clears=False)
            wanted.update(desired)
            entries.update(todo.entries)
            send.update(todo.publish)
            to_send.update(desired[topic][0] for topic in todo.publish)
            del desired, todo
        signature = hash((tuple(hashes), tuple(sorted(frozen))))
        if not full and signature == self._signature:
            return 0, 0, signature
        keep = frozenset(frozen) if self.mode != "off" else frozenset()
        clear = absent(wanted, ledger, keep)
        pub = self.ctx.publisher
        for topic in clear:
            pub.raw(topic, b"", qos=1, retain=True)
            self._published.pop(topic, None)
        present = {r.device_id for r in items}
        for topic in self._leftovers(clear, present):
            pub.raw(topic, b"", qos=1, retain=True)
        pause = spread / max(1, len(send) // CHUNK) if spread else 0.0
        sent = 0
        chosen = [r for r in items if r.device_id in to_send]
        for i, chunk in enumerate(self._chunks(chosen)):
            views = [self.view(item) for item in chunk]
            desired = self._desired(views, hub=i == 0 and "" in to_send)
            del views
            todo = plan({t: d for t, d in desired.items() if t in send}, ledger, frozen=keep,
                        clears=False)
            for topic, payload in todo.publish.items():
                if pause and sent and sent % CHUNK == 0 and self._stop.wait(pause):
                    break
                pub.json(topic, payload, qos=1, retain=True)
                self._published[topic] = fingerprint(payload)
                sent += 1
            if self._stop.is_set():
                break
        self.ledger.update(entries, clear)
        self.rounds += 1
        if send or clear:
            log.info("discovery (%s): %d configs published, %d cleared", self.mode,
                     len(send), len(clear))
        return len(send), len(clear), signature

    @staticmethod
    def _chunks(items: list[DeviceRecord]) -> Iterator[list[DeviceRecord]]:
        """``items`` ``DEVICES_PER_CHUNK`` at a time; one empty chunk when there are none (the
        hub's configs go with the first)."""
        for i in range(0, max(1, len(items)), DEVICES_PER_CHUNK):
            yield items[i:i + DEVICES_PER_CHUNK]

    def _desired(self, views: list[DeviceView], *, hub: bool
                 ) -> dict[str, tuple[str, dict[str, Any]]]:
        """What should be on the broker of these devices (``{topic: (device, config)}``), with
        ``hub`` the hub's first (as device ``""``)."""
        if self.mode == "off":
            return {}
        out = {topic: ("", payload) for topic, payload in
               (self.builder.hub_messages(self.mode).items() if hub else ())}
        for view in views:
            out.update((topic, (view.info.device_id, payload))
                       for topic, payload in self._device_messages(view).items())
        return out

    def _device_messages(self, view: DeviceView) -> dict[str, dict[str, Any]]:
        """One device's configs; none (logged) for a device that cannot be described, so one
        bad name never stops the others' discovery."""
        try:
            return self.builder.device_messages(self.mode, view)
        except TopicError as exc:
            log.warning("no discovery for device %s: %s", view.info.device_id, exc)
            return {}

    def _leftovers(self, cleared: list[str], present: set[str]) -> list[str]:
        """The retained device topics of devices that are gone from the instance since an
        earlier run published them (the state feature clears a device removed while it runs;
        this covers one removed while the hub was down): its state, availability and the
        per-property topics of the properties the ledger knew."""
        assert self.ledger is not None
        topics = self.ctx.topics
        props: dict[str, set[str]] = {}
        for topic in cleared:
            entry = self.ledger.entries.get(topic)
            if entry is None or not entry.device or entry.device in present:
                continue
            keys = props.setdefault(entry.device, set())
            keys.update(e.partition(":")[2] for e in entry.entities)
        out: list[str] = []
        for device_id, keys in sorted(props.items()):
            out += [topics.state(device_id), topics.availability(device_id)]
            out += [topics.state_property(device_id, k) for k in sorted(keys)
                    if k not in (ERROR_KEY, EVENT_KEY)]
        if out:
            log.info("clearing the retained topics of %d devices gone since the last run",
                     len(props))
        return out
