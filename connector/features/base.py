"""The lifecycle every bridge feature follows (as Zigbee2MQTT's extensions do): the constructor
only stores the context; ``start`` acquires, ``stop`` releases; ``on_connect`` runs after every
(re)connection, once the subscriptions are in place and ``online`` is out."""

from __future__ import annotations

from collections.abc import Callable

from shared.topics import Route, RouteKind

from ..context import BridgeContext

Inbound = Callable[[Route, bytes, bool], None]
"""A handler of one kind of inbound topic: ``(route, payload, retained)``. It runs on paho's
network thread, so it only decodes and hands work to a bounded queue; it never blocks."""


class Feature:
    name = "feature"

    def __init__(self, ctx: BridgeContext) -> None:
        self.ctx = ctx

    def handlers(self) -> dict[RouteKind, Inbound]:
        """The kinds of inbound topic this feature serves; the bridge subscribes to exactly the
        kinds that running features serve, and dispatches each parsed topic by its kind."""
        return {}

    def start(self) -> None:
        """Acquire threads and resources."""

    def stop(self) -> None:
        """Release them."""

    def on_connect(self) -> None:
        """Called (on the bridge's session thread) after every (re)connection."""
