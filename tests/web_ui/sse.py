"""Reading the dashboard's Server-Sent Events with ``requests``, as a browser's EventSource
does: ``id``, ``event`` and ``data`` lines, a blank line ends an event, ``:`` lines are comments."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import requests


@dataclass
class Event:
    id: str | None
    event: str
    data: str


def events(response: requests.Response, *, deadline_s: float) -> Iterator[Event]:
    """The events of an open stream, until ``deadline_s`` has passed (checked at each line; the
    server's keep-alive comments come every 10 s at the latest)."""
    end = time.monotonic() + deadline_s
    fields: dict[str, str] = {}
    for raw in response.iter_lines(decode_unicode=True):
        if time.monotonic() > end:
            return
        if raw == "":
            if "data" in fields:
                yield Event(fields.get("id"), fields.get("event", "message"), fields["data"])
            fields = {}
        elif not raw.startswith(":"):
            name, _, value = raw.partition(":")
            fields[name] = value.removeprefix(" ")


def first(response: requests.Response, kind: str, *, deadline_s: float = 30.0) -> Event:
    for event in events(response, deadline_s=deadline_s):
        if event.event == kind:
            return event
    raise AssertionError(f"no {kind!r} event within {deadline_s} s")
