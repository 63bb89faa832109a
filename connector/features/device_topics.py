"""The device topics: applies each change from the aggregator to the mirror and publishes what
it changed (state, per-property values, availability, errors, events, new and removed devices),
and republishes every device after a (re)connection, a new snapshot or a rebirth.

Only the state publisher thread calls this, so the mirror has one writer and the messages of a
device leave in the order its changes happened. Within a batch (a page of changes, a full
republish) the per-property topics wait until every state topic of the batch is out: a consumer
of ``state`` gets 10,000 devices in a third of the time, and the values of one property still
leave in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.compact import detached
from shared.models import (
    AvailabilityChange,
    Change,
    DeviceChange,
    DeviceInfo,
    ErrorChange,
    EventChange,
    Snapshot,
    StateChange,
)
from shared.timeutil import iso

from ..context import BridgeContext, DeviceRecord, LastState

log = logging.getLogger(__name__)

PropertyTopics = Literal["changed", "all", "off"]
# Contract fields of the flat state payload; a property of the same name cannot replace them
# (it still has its own ``state/{property}`` topic).
RESERVED = ("device_id", "timestamp", "seq")


def state_payload(device_id: str, ts: float, seq: int, values: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = {"device_id": device_id, "timestamp": iso(ts), "seq": seq}
    for key, value in values.items():
        if key not in payload:
            payload[key] = value
    return payload


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values: ``1``, ``1.0`` and ``true`` are different readings."""
    return type(a) is type(b) and a == b


@dataclass(frozen=True, slots=True)
class SnapshotRecords:
    """A ``GET /snapshot``, already turned into what the mirror keeps: each device's record
    (with its last state), and the change-log ``seq`` of the state each device holds (``None``:
    none) for the fold and the replay. ``of`` makes it from the body, validated as the
    ``Snapshot`` model, as a copy made once the models of every device are gone (``detached``):
    10,000 devices' models at once are a peak of tens of MB, and the records made among them
    kept most of it (CPython gives an arena back only once all of it is free)."""

    epoch: str
    seq: int
    records: list[DeviceRecord]
    held: dict[str, int | None]
    groups: dict[str, list[str]]
    asked_seq: int | None = None

    @classmethod
    def of(cls, body: bytes) -> SnapshotRecords:
        """The snapshot in ``body`` (raises pydantic's ``ValidationError`` as the model does)."""
        return detached(lambda: cls.of_model(Snapshot.model_validate_json(body)))

    @classmethod
    def of_model(cls, snap: Snapshot) -> SnapshotRecords:
        records = [DeviceRecord.of(e.info, state=None if e.state is None
                                   else LastState.of(e.state)) for e in snap.devices]
        held = {e.info.device_id: None if e.state is None else e.state.seq
                for e in snap.devices}
        return cls(snap.epoch, snap.seq, records, held, snap.groups, snap.asked_seq)


@dataclass(slots=True)
class Replay:
    """A replay in progress: the seq of the state each device of the snapshot holds
    (``None``: none), and each device's values so far (a property topic goes out when its
    value changed). A restarted bridge's backlog is as long as its outage was, so it is
    replayed a page at a time, never held whole. ``announced``: the availability each device
    was last given in the replay, so the load's publishing does not say it again."""

    held: dict[str, int | None]
    values: dict[str, dict[str, Any]]
    announced: dict[str, bool] = field(default_factory=dict)
    generation: int = -1  # the connection ``announced`` went out on


class DeviceTopics:
    def __init__(self, ctx: BridgeContext) -> None:
        self.ctx = ctx
        self.policy: PropertyTopics = ctx.settings.mqtt_property_topics
        self.property_qos = ctx.settings.mqtt_property_qos
        self._later: list[tuple[str, Any]] = []  # (topic, value) of the batch's properties

    # --- whole mirror ---------------------------------------------------------------------------
    def load(self, snap: SnapshotRecords) -> list[DeviceRecord]:
        """Replace the mirror with ``snap`` and clear the topics of devices that are gone.
        Returns the devices that are new or whose availability or state differ from what was
        published (after the aggregator restarts, only those need publishing again)."""
        mirror = self.ctx.mirror
        old = mirror.devices
        devices: dict[str, DeviceRecord] = {}
        changed: list[DeviceRecord] = []
        for rec in snap.records:
            device_id = rec.device_id
            before = old.get(device_id)
            new_state = rec.state is not None and (
                before is None or before.state is None or before.state.ts != rec.state.ts)
            devices[device_id] = rec
            if before is None or new_state or before.online != rec.online:
                changed.append(rec)
        for device_id in old.keys() - devices.keys():
            self._clear(old[device_id])
        mirror.devices = devices
        mirror.groups = snap.groups
        mirror.synced = True
        mirror.shape += 1
        log.info("snapshot: %d devices, %d with state, %d new or changed", len(devices),
                 sum(1 for r in devices.values() if r.state is not None), len(changed))
        return changed

    def publish_all(self, announced: dict[str, bool] | None = None) -> int:
        """Availability, state and every property of every device (availability not for a
        device whose ``announced`` availability, just published by a replay, is the same)."""
        records = list(self.ctx.mirror.devices.values())
        for rec in records:
            self.publish_device(rec, availability=announced is None
                                or announced.get(rec.device_id) is not rec.online)
        self.flush()
        return len(records)

    def apply_batch(self, changes: list[Change], done: Callable[[int], None]) -> None:
        """Apply and publish ``changes`` in order (``done(i)`` after each), their per-property
        topics at the end."""
        for i, change in enumerate(changes):
            try:
                self.apply(change)
            except Exception:
                log.exception("publishing change %s of %s failed", change.kind, change.device_id)
            done(i)
        self.flush()

    def flush(self) -> None:
        """Publish the per-property topics held back so far."""
        later, self._later = self._later, []
        pub, qos = self.ctx.publisher, self.property_qos
        for topic, value in later:
            pub.json(topic, value, qos=qos, retain=True)

    def start_replay(self, snap: SnapshotRecords) -> Replay:
        """A replay of what ``snap`` took in (see ``replay``), before it is loaded."""
        values = {d: r.state.values for d, r in self.ctx.mirror.devices.items()
                  if r.state is not None}
        return Replay(snap.held, values)

    def replay(self, replay: Replay, changes: list[Change]) -> None:
        """Publish one page of what a snapshot took in and cannot carry, before it is loaded:
        the events and errors among ``changes``, and the states and availability of its
        devices that came before the ones it holds (``load`` and the publishing after it send
        those). The mirror is left alone; a device the snapshot does not hold is skipped (gone
        again, it would leave retained topics behind)."""
        held, values = replay.held, replay.values
        for change in changes:
            if isinstance(change, ErrorChange | EventChange):
                self.apply(change)
            elif change.device_id not in held:
                continue
            elif isinstance(change, AvailabilityChange):
                self._availability(change.device_id, change.online)
                replay.announced[change.device_id] = change.online
            elif isinstance(change, StateChange) and change.seq != held[change.device_id]:
                before = values.get(change.device_id, {})
                values[change.device_id] = change.values
                self._state(change.device_id, LastState.of(change),
                            self._properties(change, before))
        self.flush()

    def publish_device(self, rec: DeviceRecord, *, availability: bool = True) -> None:
        if availability:
            self._availability(rec.device_id, rec.online)
        if rec.state is not None:
            self._state(rec.device_id, rec.state,
                        list(rec.state.values) if self.policy != "off" else [])

    # --- one change -----------------------------------------------------------------------------
    def apply(self, change: Change) -> None:
        if isinstance(change, StateChange):
            self._on_state(change)
        elif isinstance(change, AvailabilityChange):
            rec = self.ctx.mirror.devices.get(change.device_id)
            if rec is not None:
                rec.online = change.online
            self._availability(change.device_id, change.online)
        elif isinstance(change, ErrorChange):
            self.ctx.publisher.json(self.ctx.topics.error(change.device_id), {
                "timestamp": iso(change.ts), "error_code": change.error_code,
                "message": change.message, "severity": change.severity}, qos=1)
        elif isinstance(change, EventChange):
            payload: dict[str, Any] = {"timestamp": iso(change.ts), "event": change.event}
            if change.data is not None:
                payload["data"] = change.data
            self.ctx.publisher.json(self.ctx.topics.events(change.device_id), payload, qos=1)
        elif isinstance(change, DeviceChange):
            self._on_device(change)

    def _on_state(self, change: StateChange) -> None:
        rec = self.ctx.mirror.devices.get(change.device_id)
        if rec is None:
            log.debug("state of %s, which the mirror does not hold yet", change.device_id)
            return
        before = rec.state.values if rec.state is not None else {}
        rec.state = LastState.of(change)
        if len(change.values) != len(before):  # a state only ever gains properties
            self.ctx.mirror.shape += 1
        self._state(change.device_id, rec.state, self._properties(change, before))

    def _properties(self, change: StateChange, before: dict[str, Any]) -> list[str]:
        """The properties of ``change`` that get their own topic, after the values ``before``."""
        if self.policy == "all":
            return [p for p in change.sampled if p in change.values]
        if self.policy == "changed":
            return [p for p in change.sampled if p in change.values
                    and (p not in before or not same(before[p], change.values[p]))]
        return []

    def _on_device(self, change: DeviceChange) -> None:
        mirror = self.ctx.mirror
        if change.action == "removed":
            self.flush()  # none of its held-back values may land after the clearing
            rec = mirror.devices.pop(change.device_id, None)
            mirror.shape += 1
            if rec is not None:
                self._clear(rec)
            log.info("device %s removed: its retained topics are cleared", change.device_id)
            return
        info = change.info or self._fetch_info(change.device_id)
        if info is None:
            return
        before = mirror.devices.get(change.device_id)
        if change.action == "updated" and before is not None:
            # New units, name or interval: discovery sees the new info (its round compares the
            # records); the device's topics already hold what is current.
            before.set_info(info)
            mirror.shape += 1
            return
        rec = DeviceRecord.of(info, state=before.state if before else None)
        mirror.devices[change.device_id] = rec
        mirror.shape += 1
        self.publish_device(rec)  # only the new device, never every device again

    def _fetch_info(self, device_id: str) -> DeviceInfo | None:
        """An aggregator that does not send the device with its ``added`` change: ask for it."""
        body = self.ctx.aggregator.get("/devices")
        for raw in body.get("devices", []):
            if raw.get("device_id") == device_id:
                return DeviceInfo.model_validate(raw)
        log.warning("device %s was added but the aggregator no longer lists it", device_id)
        return None

    # --- publishing -----------------------------------------------------------------------------
    def _state(self, device_id: str, state: LastState, props: list[str]) -> None:
        topics, pub = self.ctx.topics, self.ctx.publisher
        pub.json(topics.state(device_id), state_payload(device_id, state.ts, state.device_seq,
                                                        state.values),
                 retain=pub.state_retain)
        self._later.extend((topics.state_property(device_id, prop), state.values[prop])
                           for prop in props)

    def _availability(self, device_id: str, online: bool) -> None:
        self.ctx.publisher.text(self.ctx.topics.availability(device_id),
                                "online" if online else "offline", qos=1, retain=True)

    def _clear(self, rec: DeviceRecord) -> None:
        """Empty retained payloads, so a removed device leaves no ghost topics behind."""
        topics, pub = self.ctx.topics, self.ctx.publisher
        device_id = rec.device_id
        pub.raw(topics.availability(device_id), b"", qos=1, retain=True)
        if rec.state is not None:
            pub.raw(topics.state(device_id), b"", qos=1, retain=True)
            for prop in rec.state.values:
                pub.raw(topics.state_property(device_id, prop), b"", qos=1, retain=True)
