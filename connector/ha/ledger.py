"""The retained-topic ledger: every discovery config topic this instance has published, kept on
disk (``{DATA_DIR}/ha_discovery.json``), so that a restart with a changed instance file, prefix
or mode clears what no longer exists (an empty retained payload) and leaves no ghost entity in
Home Assistant or on the broker.

``plan`` is the pure part: from what should exist now and what the ledger says was published,
the configs to publish and the topics to clear.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from shared.compact import detached

log = logging.getLogger(__name__)

VERSION = 1
FILE_NAME = "ha_discovery.json"
SAVE_EVERY = 500  # entries written at a time


@dataclass(frozen=True, slots=True)
class Entry:
    """One published config topic: the device it belongs to (``""`` for the hub) and the
    ``component:key`` entities it declares (one in entity discovery, several in device)."""

    device: str
    entities: tuple[str, ...]

    def dump(self) -> dict[str, Any]:
        return {"device": self.device, "entities": list(self.entities)}


def entities_of(topic: str, payload: Mapping[str, Any]) -> tuple[str, ...]:
    """The ``component:key`` entities a config declares."""
    components = payload.get("components")
    if isinstance(components, dict):
        return tuple(sorted(f"{c.get('platform')}:{k}" for k, c in components.items()))
    parts = topic.split("/")
    return (f"{parts[-4]}:{parts[-2]}",) if len(parts) >= 4 else ()


class Ledger:
    """The ledger file, loaded at start and rewritten (atomically) after every change. A file
    that cannot be read is logged and set aside: the ledger starts empty rather than stop
    discovery, at the cost of ghosts from before."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.entries: dict[str, Entry] = self._load()

    def _load(self) -> dict[str, Entry]:
        try:
            data = orjson.loads(self.path.read_bytes())
            if data.get("version") != VERSION:
                raise ValueError(f"unknown ledger version {data.get('version')!r}")
            return {t: Entry(str(e["device"]), tuple(str(x) for x in e["entities"]))
                    for t, e in data["topics"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = self.path.with_suffix(".bad")
            log.warning("discovery ledger %s is unreadable (%s); moved to %s, starting empty",
                        self.path, exc, aside.name)
            with contextlib.suppress(OSError):
                self.path.replace(aside)
            return {}

    def update(self, published: Mapping[str, Entry], cleared: Iterable[str]) -> None:
        with self._lock:
            for topic in cleared:
                self.entries.pop(topic, None)
            self.entries.update(published)
            self._save()

    def pack(self, published: dict[str, int]) -> dict[str, int]:
        """The entries again, as one compact copy, and ``published`` (fingerprints by topic,
        emptied here) keyed by the entries' own topic strings.

        A discovery round of 10,000 devices makes the entries among its configs and views (a
        peak of about 60 MB), and they kept most of it (CPython gives an arena back only once
        all of it is free): the copy is made after the originals are let go of. The topic
        strings of the round's two passes, kept once each here and in ``published``; the
        entity names and device ids, once each."""
        def make() -> list[tuple[str, str, tuple[str, ...], int | None]]:
            # plain tuples: pickled at a fifth of the cost of the slotted entries
            names: dict[Any, Any] = {}
            return [(t, names.setdefault(e.device, e.device), names.setdefault(
                e.entities, tuple(names.setdefault(x, x) for x in e.entities)),
                published.get(t)) for t, e in self.entries.items()]

        def release() -> None:
            self.entries = {}
            published.clear()

        with self._lock:
            others = {t: fp for t, fp in published.items() if t not in self.entries}
            rows = detached(make, release)
            self.entries = {t: Entry(device, entities) for t, device, entities, _ in rows}
        kept = {t: fp for t, _, _, fp in rows if fp is not None}
        kept.update(others)
        return kept

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.writelines(self.body())
                f.flush()
                os.fsync(f.fileno())  # the ledger must survive a power cut with the broker's copy
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("cannot write the discovery ledger %s: %s", self.path, exc)

    def body(self) -> Iterator[bytes]:
        """The file: what ``orjson.dumps`` of it all with ``OPT_INDENT_2`` makes, byte for
        byte, ``SAVE_EVERY`` entries at a time (all of a round of 10,000 devices at once, their
        dicts and the JSON, were the round's largest peak: 24 MiB)."""
        topics = sorted(self.entries)
        if not topics:
            yield orjson.dumps({"version": VERSION, "topics": {}}, option=orjson.OPT_INDENT_2)
            return
        yield b'{\n  "version": ' + orjson.dumps(VERSION) + b',\n  "topics": {\n'
        for i in range(0, len(topics), SAVE_EVERY):
            yield (b",\n" if i else b"") + b",\n".join(
                b"    " + orjson.dumps(t) + b": " + orjson.dumps(
                    self.entries[t].dump(), option=orjson.OPT_INDENT_2).replace(b"\n", b"\n    ")
                for t in topics[i:i + SAVE_EVERY])
        yield b"\n  }\n}"


def fingerprint(payload: Mapping[str, Any]) -> int:
    """What ``plan`` compares instead of the payload itself: the bridge remembers this number
    per config topic, not the config's nested dicts (about 3 KB each, several per device)."""
    return hash(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))


@dataclass
class Plan:
    publish: dict[str, dict[str, Any]] = field(default_factory=dict)
    clear: list[str] = field(default_factory=list)
    entries: dict[str, Entry] = field(default_factory=dict)  # what ``publish`` declares


def plan(desired: Mapping[str, tuple[str, dict[str, Any]]], ledger: Mapping[str, Entry], *,
         frozen: frozenset[str] = frozenset(), previous: Mapping[str, int] | None = None,
         clears: bool = True) -> Plan:
    """What to publish and clear so that the broker holds exactly ``desired``
    (``{topic: (device, payload)}``).

    ``frozen`` devices are left as they are (their ledger topics neither cleared nor replaced:
    a device whose properties are not known yet after a restart). ``previous`` payloads (what
    this process already published, by their ``fingerprint``) are not sent again. A device
    config that loses entities declares each lost one with its platform alone, which is how
    Home Assistant's device discovery removes a component. Without ``clears`` (``desired`` is
    only a part of what should exist) nothing is planned for clearing.
    """
    out = Plan()
    previous = previous or {}
    for topic, (device, payload) in desired.items():
        if device in frozen:
            continue
        entities = entities_of(topic, payload)
        old = ledger.get(topic)
        body = payload
        components = payload.get("components")
        if old is not None and isinstance(components, dict):
            gone = [e for e in old.entities if e not in entities]
            if gone:
                stubs = {key: {"platform": comp} for comp, _, key in
                         (e.partition(":") for e in gone)}
                body = {**payload, "components": {**components, **stubs}}
        out.entries[topic] = Entry(device, entities)
        if old is None or old.entities != entities or previous.get(topic) != fingerprint(body):
            out.publish[topic] = body
    if clears:
        out.clear = absent(desired, ledger, frozen)
    return out


def absent(desired: Collection[str], ledger: Mapping[str, Entry], frozen: frozenset[str]
         ) -> list[str]:
    """The ledger's topics that are not ``desired`` (and not of a ``frozen`` device)."""
    return [topic for topic, entry in ledger.items()
            if topic not in desired and entry.device not in frozen]
