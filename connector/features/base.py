"""The lifecycle every bridge feature follows (as Zigbee2MQTT's extensions do): the constructor
only stores the context; ``start`` acquires, ``stop`` releases; ``on_connect`` runs after every
(re)connection, once the subscriptions are in place and ``online`` is out."""

from __future__ import annotations

from collections.abc import Callable

from ..context import BridgeContext

Route = tuple[str, Callable[[str, bytes, bool], None]]


class Feature:
    name = "feature"

    def __init__(self, ctx: BridgeContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[Route]:
        """Topic filters this feature handles, and their handlers (run on paho's thread:
        they must hand slow work to ``ctx.executor``)."""
        return []

    def start(self) -> None:
        """Acquire threads and resources."""

    def stop(self) -> None:
        """Release them."""

    def on_connect(self) -> None:
        """Called (on a worker thread) after every (re)connection."""
