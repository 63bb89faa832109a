"""The programs of one instance, their local ports, and the chain of command timeouts: defined
once here, read by supervisord's config tests, the health check, the bridge's meta answers, the
settings defaults and every hop that waits on the next one.

A command travels bridge -> aggregator -> handler -> device. Each hop waits for the next one a
little longer than the next one waits itself, so the innermost timeout always fires first and
every command gets exactly one final answer (``timeout`` from the handler, never a socket
timeout in the middle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ProcessName = Literal["state-aggregator", "serial-handler", "http-poller", "mqtt-bridge", "web"]


@dataclass(frozen=True, slots=True)
class Process:
    name: ProcessName  # the supervisord program name, also the log and meta name
    module: str  # what ``python -m`` runs
    port: int | None  # default local REST port on SERVICE_HOST (None: no internal REST)


STATE_AGGREGATOR = Process("state-aggregator", "services.state_aggregator", 5003)
SERIAL_HANDLER = Process("serial-handler", "services.serial_handler", 5001)
HTTP_POLLER = Process("http-poller", "services.http_poller", 5002)
MQTT_BRIDGE = Process("mqtt-bridge", "connector", None)
WEB = Process("web", "services.web", None)  # serves the LAN port (HOST:PORT), nothing internal

PROCESSES: tuple[Process, ...] = (STATE_AGGREGATOR, SERIAL_HANDLER, HTTP_POLLER, MQTT_BRIDGE, WEB)
PROCESS_NAMES: tuple[ProcessName, ...] = tuple(p.name for p in PROCESSES)
HANDLERS: tuple[Process, ...] = (SERIAL_HANDLER, HTTP_POLLER)

LAN_PORT = 8088  # the web program's default PORT

# --- the command timeout chain ------------------------------------------------------------------
COMMAND_TIMEOUT_DEFAULT_S = 5.0  # a command without ``timeout``
COMMAND_TIMEOUT_MAX_S = 60.0  # default of COMMAND_TIMEOUT_MAX; longer ones are ``rejected``
HOP_MARGIN_S = 2.0  # each outer hop waits this much longer than the hop inside it
FRESH_READ_TIMEOUT_S = 10.0  # a ``get``: the handler's read of the device


def handler_wait_s(device_timeout_s: float) -> float:
    """How long the aggregator waits for a handler that gives the device ``device_timeout_s``."""
    return device_timeout_s + HOP_MARGIN_S


def aggregator_wait_s(device_timeout_s: float) -> float:
    """How long the bridge waits for the aggregator on a command with that device timeout."""
    return handler_wait_s(device_timeout_s) + HOP_MARGIN_S
